//! Token counting with the `o200k_base` encoding (GPT-4o family), used to size quota
//! reservations before a call and to count usage when a provider reports none.

use std::sync::LazyLock;

use tiktoken_rs::CoreBPE;

/// Tokens a chat message costs beyond its content (role and separators), per OpenAI's
/// published accounting for chat models.
pub const PER_MESSAGE_OVERHEAD: usize = 3;
/// Tokens that prime every reply.
pub const REPLY_PRIMING: usize = 3;

static ENCODING: LazyLock<Option<CoreBPE>> = LazyLock::new(|| match tiktoken_rs::o200k_base() {
    Ok(encoding) => Some(encoding),
    Err(error) => {
        tracing::error!(%error, "cannot load the o200k_base encoding; estimating tokens from length");
        None
    }
});

/// Loads the encoding now rather than on the first request.
pub fn warm_up() {
    LazyLock::force(&ENCODING);
}

/// Tokens in `text`.
pub fn count(text: &str) -> usize {
    match ENCODING.as_ref() {
        Some(encoding) => encoding.encode_ordinary(text).len(),
        // A safe over-estimate for every script: no tokenizer packs more than a
        // character per token on average outside English.
        None => text.chars().count(),
    }
}

/// Tokens a chat prompt made of these message contents costs, overhead included.
pub fn count_prompt<'a>(contents: impl IntoIterator<Item = &'a str>) -> usize {
    contents
        .into_iter()
        .map(|content| count(content) + PER_MESSAGE_OVERHEAD)
        .sum::<usize>()
        + REPLY_PRIMING
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_real_tokens_not_characters() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello"), 1);
        let english = count("Hello world from Rust, the quick brown fox jumps over the lazy dog.");
        assert!((10..20).contains(&english), "{english}");
        assert!(count("你好，世界") >= 2);
        assert_eq!(
            count_prompt(["hello"]),
            1 + PER_MESSAGE_OVERHEAD + REPLY_PRIMING
        );
    }
}

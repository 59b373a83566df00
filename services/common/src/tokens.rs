//! Token counting with the `o200k_base` encoding (GPT-4o family), used to size quota
//! reservations before a call and to count usage when a provider reports none.
//!
//! Counts are remembered by the text's hash: a chat's context is mostly the messages the
//! previous chat counted (the window moves by one turn), and encoding them again was a
//! tenth of the gateway's CPU in a profile under load.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{LazyLock, Mutex};

mod bpe;

use bpe::Bpe;

/// Tokens a chat message costs beyond its content (role and separators), per OpenAI's
/// published accounting for chat models.
pub const PER_MESSAGE_OVERHEAD: usize = 3;
/// Tokens that prime every reply.
pub const REPLY_PRIMING: usize = 3;

static ENCODING: LazyLock<Option<Bpe>> = LazyLock::new(|| match Bpe::o200k_base() {
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

/// Counts remembered at most; past that the memory starts again (about 1 MiB full).
const REMEMBERED: usize = 1 << 16;
/// Texts shorter than this are encoded each time: hashing them saves nothing. (Encoding
/// even a short text, a question of twenty bytes, takes some thousands of instructions:
/// the pattern's pieces, then a map lookup each.)
const REMEMBER_FROM_BYTES: usize = 8;

/// Counts by the text's hash, keyed by a per-process random seed so that nobody can
/// choose texts that collide.
struct Memory {
    hasher: RandomState,
    counts: Mutex<HashMap<u64, u32>>,
}

static MEMORY: LazyLock<Memory> = LazyLock::new(|| Memory {
    hasher: RandomState::new(),
    counts: Mutex::new(HashMap::new()),
});

/// Tokens in `text`.
pub fn count(text: &str) -> usize {
    if text.len() < REMEMBER_FROM_BYTES {
        return encode_count(text);
    }
    let memory = &*MEMORY;
    let key = memory.hasher.hash_one(text);
    let remembered = memory
        .counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
        .copied();
    if let Some(count) = remembered {
        return count as usize;
    }
    let count = encode_count(text);
    let mut counts = memory
        .counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if counts.len() >= REMEMBERED {
        counts.clear();
    }
    counts.insert(key, u32::try_from(count).unwrap_or(u32::MAX));
    count
}

fn encode_count(text: &str) -> usize {
    ENCODING
        .as_ref()
        .and_then(|encoding| encoding.count(text))
        // A safe over-estimate for every script: no tokenizer packs more than a
        // character per token on average outside English.
        .unwrap_or_else(|| text.chars().count())
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
    fn a_remembered_count_is_the_count() {
        let text = "A sentence long enough to be remembered, counted twice over here.";
        let first = count(text);
        assert_eq!(first, encode_count(text));
        assert_eq!(count(text), first);
        let other = "A sentence long enough to be remembered, counted twice over there!";
        assert_eq!(count(other), encode_count(other));
    }

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

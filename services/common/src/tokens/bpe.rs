//! An exact `o200k_base` token counter: the number tiktoken's
//! `encode_ordinary(text).len()` gives, from one map of token bytes to rank whose keys
//! point into the vocabulary embedded in the binary (build.rs writes it). tiktoken's
//! `CoreBPE` keeps every token three times over (encoder, decoder, sorted bytes) in
//! maps of owned vectors: some 45 MiB, in every process that counts. This is about 7.

use std::collections::HashMap;

use fancy_regex::Regex;
use foldhash::fast::RandomState;

/// Every ordinary token: rank (u32, little-endian), length (u8), bytes.
static VOCABULARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.bin"));
/// What splits a text into the pieces that are encoded one by one.
const PATTERN: &str = include_str!(concat!(env!("OUT_DIR"), "/o200k_base.pattern"));

/// No merge: a pair that is not a token.
const NONE: u32 = u32::MAX;

pub struct Bpe {
    /// foldhash, not SipHash: its lookups were half the counting's instructions, and
    /// flooding is no concern for a map that is never written after it is built (texts
    /// only look keys up; the probe sequences are those of the fixed vocabulary).
    ranks: HashMap<&'static [u8], u32, RandomState>,
    pieces: Regex,
}

impl Bpe {
    pub fn o200k_base() -> Result<Self, fancy_regex::Error> {
        let mut ranks = HashMap::with_capacity_and_hasher(200_000, RandomState::default());
        let mut rest = VOCABULARY;
        while let [a, b, c, d, length, tail @ ..] = rest {
            let Some((bytes, tail)) = tail.split_at_checked(usize::from(*length)) else {
                break;
            };
            ranks.insert(bytes, u32::from_le_bytes([*a, *b, *c, *d]));
            rest = tail;
        }
        Ok(Self {
            ranks,
            pieces: Regex::new(PATTERN)?,
        })
    }

    /// Tokens in `text`; `None` when the pattern gave up on it (its backtracking limit).
    pub fn count(&self, text: &str) -> Option<usize> {
        let mut tokens = 0;
        for piece in self.pieces.find_iter(text) {
            let piece = piece.ok()?.as_str().as_bytes();
            tokens += if self.ranks.contains_key(piece) {
                1
            } else {
                self.merged(piece)
            };
        }
        Some(tokens)
    }

    /// Tokens in a piece that is not one token: its bytes merged pair by pair, always the
    /// pair of lowest rank first (the leftmost of equals), until no pair is a token.
    fn merged(&self, piece: &[u8]) -> usize {
        if piece.len() < 2 {
            return piece.len();
        }
        // parts[i]: where part i starts, and the rank of part i merged with part i + 1.
        let mut parts: Vec<(usize, u32)> = (0..=piece.len()).map(|start| (start, NONE)).collect();
        for i in 0..parts.len() - 2 {
            parts[i].1 = self.rank(piece, &parts, i, 0);
        }
        loop {
            let lowest = parts[..parts.len() - 1]
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, rank))| *rank)
                .filter(|(_, (_, rank))| *rank != NONE)
                .map(|(i, _)| i);
            let Some(i) = lowest else { break };
            // Part i absorbs part i + 1: its merge with the one after, and the merge of
            // the part before with it, change.
            parts[i].1 = self.rank(piece, &parts, i, 1);
            if i > 0 {
                parts[i - 1].1 = self.rank(piece, &parts, i - 1, 1);
            }
            parts.remove(i + 1);
        }
        parts.len() - 1
    }

    /// The rank of parts `i ..= i + 1 + skip` as one token, or [`NONE`].
    fn rank(&self, piece: &[u8], parts: &[(usize, u32)], i: usize, skip: usize) -> u32 {
        parts
            .get(i + skip + 2)
            .and_then(|&(end, _)| self.ranks.get(&piece[parts[i].0..end]))
            .copied()
            .unwrap_or(NONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts of every kind a chat holds: prose, code, numbers, CJK, emoji, combining
    /// marks, runs of spaces and newlines, apostrophes, and the special token's text.
    const TEXTS: &[&str] = &[
        "",
        " ",
        "hello",
        "Hello world from Rust, the quick brown fox jumps over the lazy dog.",
        "I'm sure they'll say it's what we'd've done, DON'T YOU THINK?",
        "我的猫叫豆豆。我的猫叫什么名字？",
        "混合 text 和中文, with 数字 12345678 and punctuation!!!",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n\n\n",
        "    indented\tand\ttabbed   \n  \r\n trailing   ",
        "3.14159265358979 1,000,000 0x1F 2026-11-27T10:48:43Z",
        "emoji 👋🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 ✨",
        "Ünïcödé cafe\u{301} naïve Ελληνικά русский العربية हिन्दी",
        "<|endoftext|> is text here, not a special token",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "https://example.com/path?query=1&other=two#fragment",
        "////////////////\n\n\n\n\n!!!!!!!!????....",
    ];

    /// Characters to make texts from: each class the pattern treats differently.
    const ALPHABET: &[char] = &[
        'a', 'b', 'z', 'A', 'Q', 'e', 's', 't', '\'', ' ', ' ', '\n', '\r', '\t', '0', '7', '9',
        '.', ',', '!', '/', '-', '_', '(', '"', '我', '猫', '的', '。', 'ß', 'é', '\u{301}', 'Ω',
        'ж', 'ا', '🙂', '🏽', '\u{200d}', '€', '\u{a0}',
    ];

    type Outcome = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn counts_as_tiktoken_does() -> Outcome {
        let (ours, theirs) = (Bpe::o200k_base()?, tiktoken_rs::o200k_base()?);
        for text in TEXTS {
            assert_eq!(
                ours.count(text),
                Some(theirs.encode_ordinary(text).len()),
                "{text:?}"
            );
        }
        // Texts no one would write, where the merges are least like the usual ones.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..3000 {
            let length = (fastrand_next(&mut seed) % 40) as usize;
            let text: String = (0..length)
                .map(|_| ALPHABET[(fastrand_next(&mut seed) as usize) % ALPHABET.len()])
                .collect();
            assert_eq!(
                ours.count(&text),
                Some(theirs.encode_ordinary(&text).len()),
                "{text:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn holds_every_ordinary_token() -> Outcome {
        let (ours, theirs) = (Bpe::o200k_base()?, tiktoken_rs::o200k_base()?);
        assert_eq!(ours.ranks.len(), 199_998);
        for rank in [0, 1, 255, 256, 1000, 100_000, 199_997] {
            let bytes = theirs.decode_bytes(&[rank])?;
            assert_eq!(ours.ranks.get(bytes.as_slice()), Some(&rank));
        }
        Ok(())
    }

    /// xorshift64: a fixed sequence, so a failure names a text that fails again.
    fn fastrand_next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }
}

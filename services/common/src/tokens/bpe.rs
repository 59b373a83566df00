//! An exact `o200k_base` token counter: the number tiktoken's
//! `encode_ordinary(text).len()` gives, from one map of token bytes to rank whose keys
//! point into the vocabulary embedded in the binary (build.rs writes it). tiktoken's
//! `CoreBPE` keeps every token three times over (encoder, decoder, sorted bytes) in
//! maps of owned vectors: some 45 MiB, in every process that counts. This is about 2.5:
//! a table of ranks (4 bytes a slot) hashed by the token's bytes, and each rank's place in
//! the vocabulary (4 bytes a token). A map of `&[u8]` to rank took 24 bytes a slot, 6.6 MiB.

use std::hash::BuildHasher;

use fancy_regex::Regex;
use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// Every ordinary token: rank (u32, little-endian), length (u8), bytes.
static VOCABULARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.bin"));
/// What splits a text into the pieces that are encoded one by one.
const PATTERN: &str = include_str!(concat!(env!("OUT_DIR"), "/o200k_base.pattern"));

/// No merge: a pair that is not a token.
const NONE: u32 = u32::MAX;

pub struct Bpe {
    /// Every token's rank, hashed by the token's bytes (which [`Bpe::bytes`] finds).
    ranks: HashTable<u32>,
    /// Where each rank's bytes start in [`VOCABULARY`] (their length is the byte before),
    /// by rank; 0 for a rank that is no ordinary token.
    starts: Vec<u32>,
    /// foldhash, not SipHash: its lookups were half the counting's instructions, and
    /// flooding is no concern for a table that is never written after it is built (texts
    /// only look keys up; the probe sequences are those of the fixed vocabulary).
    hasher: RandomState,
    pieces: Regex,
}

impl Bpe {
    pub fn o200k_base() -> Result<Self, fancy_regex::Error> {
        let mut tokens = Vec::with_capacity(200_000);
        let mut at = 0;
        while let Some(&[a, b, c, d, length]) = VOCABULARY.get(at..at + 5) {
            let start = at + 5;
            let end = start + usize::from(length);
            if end > VOCABULARY.len() {
                break;
            }
            tokens.push((u32::from_le_bytes([a, b, c, d]), start));
            at = end;
        }
        let last = tokens.iter().map(|&(rank, _)| rank).max().unwrap_or(0);
        let mut starts = vec![0; last as usize + 1];
        for &(rank, start) in &tokens {
            // The vocabulary is 2 MB: every start fits.
            starts[rank as usize] = u32::try_from(start).unwrap_or(0);
        }
        let mut bpe = Self {
            ranks: HashTable::with_capacity(tokens.len()),
            starts,
            hasher: RandomState::default(),
            pieces: Regex::new(PATTERN)?,
        };
        for (rank, _) in tokens {
            let hash = bpe.hasher.hash_one(bpe.bytes(rank));
            let (starts, hasher) = (&bpe.starts, &bpe.hasher);
            bpe.ranks.insert_unique(hash, rank, |&rank| {
                hasher.hash_one(token_bytes(starts, rank))
            });
        }
        Ok(bpe)
    }

    /// The bytes of the token of `rank`.
    fn bytes(&self, rank: u32) -> &'static [u8] {
        token_bytes(&self.starts, rank)
    }

    /// The rank of the token `bytes` are, if they are one.
    fn rank_of(&self, bytes: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(bytes);
        self.ranks
            .find(hash, |&rank| self.bytes(rank) == bytes)
            .copied()
    }

    /// Tokens in `text`; `None` when the pattern gave up on it (its backtracking limit).
    pub fn count(&self, text: &str) -> Option<usize> {
        let mut tokens = 0;
        for piece in self.pieces.find_iter(text) {
            let piece = piece.ok()?.as_str().as_bytes();
            tokens += if self.rank_of(piece).is_some() {
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
            .and_then(|&(end, _)| self.rank_of(&piece[parts[i].0..end]))
            .unwrap_or(NONE)
    }
}

/// The bytes of the token of `rank`, given where each rank's bytes start.
fn token_bytes(starts: &[u32], rank: u32) -> &'static [u8] {
    let start = starts.get(rank as usize).map_or(0, |&start| start as usize);
    let length = start
        .checked_sub(1)
        .and_then(|at| VOCABULARY.get(at))
        .map_or(0, |&length| usize::from(length));
    VOCABULARY.get(start..start + length).unwrap_or_default()
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
            assert_eq!(ours.rank_of(bytes.as_slice()), Some(rank));
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

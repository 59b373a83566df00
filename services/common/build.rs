//! Writes the `o200k_base` vocabulary for `tokens::bpe` into `OUT_DIR`: every ordinary
//! token as its rank (u32, little-endian), its length (u8) and its bytes, in rank order,
//! and the pattern that splits text into pieces. Read from tiktoken-rs here, at build
//! time, so that the services embed 2 MB of bytes instead of building tiktoken's tables
//! (some 45 MiB of maps) at start.

use std::collections::HashSet;
use std::error::Error;
use std::path::PathBuf;

/// Above every rank of `o200k_base` (its ordinary tokens end at 199,997; the special
/// ones, skipped, are 199,999 and 200,018).
const RANKS_BELOW: u32 = 210_000;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    let encoding = tiktoken_rs::o200k_base()?;
    let special: HashSet<&str> = encoding.special_tokens();
    let mut vocabulary = Vec::with_capacity(3 << 20);
    let mut tokens = 0;
    for rank in 0..RANKS_BELOW {
        let Ok(bytes) = encoding.decode_bytes(&[rank]) else {
            continue;
        };
        if std::str::from_utf8(&bytes).is_ok_and(|text| special.contains(text)) {
            continue;
        }
        let length = u8::try_from(bytes.len())
            .map_err(|_| format!("token {rank} is {} bytes long", bytes.len()))?;
        vocabulary.extend(rank.to_le_bytes());
        vocabulary.push(length);
        vocabulary.extend(&bytes);
        tokens += 1;
    }
    if tokens < 199_000 {
        return Err(format!("o200k_base gave only {tokens} tokens").into());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("o200k_base.bin"), vocabulary)?;
    std::fs::write(
        out.join("o200k_base.pattern"),
        tiktoken_rs::O200K_BASE_PAT_STR,
    )?;
    Ok(())
}

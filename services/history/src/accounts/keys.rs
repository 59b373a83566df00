//! The shape of API keys and session ids, and the randomness and hashing behind them.
//! Nothing here touches a store.
//!
//! A key reads `sk-chat-<key_id>-<secret>`: the key id (12 lowercase letters and digits)
//! is public, shown in listings and used to find the key's row; the secret (32 letters
//! and digits, about 190 bits) is never stored. The row keeps the SHA-256 of the whole
//! key, compared in constant time.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const KEY_PREFIX: &str = "sk-chat-";
const KEY_ID_CHARS: usize = 12;
const SECRET_CHARS: usize = 32;
const LOWERCASE_ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Random bytes in a session id.
const SESSION_BYTES: usize = 32;

/// The operating system's random number generator failed: nothing safe can be made.
#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(getrandom::Error);

/// A key just made: the whole key, shown once, and what is stored of it.
pub struct NewKey {
    pub key: SecretString,
    pub key_id: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

impl NewKey {
    pub fn generate() -> Result<Self, NoRandomness> {
        let key_id = random_string(LOWERCASE_ALPHANUMERIC, KEY_ID_CHARS)?;
        let secret = SecretString::from(random_string(ALPHANUMERIC, SECRET_CHARS)?);
        let prefix = format!("{KEY_PREFIX}{key_id}");
        let key = SecretString::from(format!("{prefix}-{}", secret.expose_secret()));
        let hash = sha256(key.expose_secret());
        Ok(Self {
            key,
            key_id,
            prefix,
            hash,
        })
    }
}

/// The key id of a well-formed key, `None` for anything else.
pub fn key_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (key_id, secret) = rest.split_once('-')?;
    let well_formed = is_key_id(key_id)
        && secret.len() == SECRET_CHARS
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    well_formed.then_some(key_id)
}

/// Whether `key_id` could be one of ours (and is therefore safe in a query or a log).
pub fn is_key_id(key_id: &str) -> bool {
    key_id.len() == KEY_ID_CHARS && key_id.bytes().all(|b| LOWERCASE_ALPHANUMERIC.contains(&b))
}

/// Whether `key` hashes to `stored`, in time independent of where they differ.
pub fn matches(key: &str, stored: &[u8]) -> bool {
    sha256(key).ct_eq(stored).into()
}

/// A new session id: 32 random bytes, hex-encoded.
pub fn new_session_id() -> Result<SecretString, NoRandomness> {
    let mut bytes = [0u8; SESSION_BYTES];
    getrandom::fill(&mut bytes).map_err(NoRandomness)?;
    Ok(SecretString::from(hex(&bytes)))
}

/// Whether `session_id` has the shape [`new_session_id`] gives.
pub fn is_session_id(session_id: &str) -> bool {
    session_id.len() == SESSION_BYTES * 2 && session_id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The SHA-256 of `text`, hex-encoded: how session ids are named in Redis.
pub fn sha256_hex(text: &str) -> String {
    hex(&sha256(text))
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// `len` characters drawn uniformly from `alphabet`, from the operating system's CSPRNG.
/// Bytes past the largest multiple of the alphabet's size are redrawn, so no character
/// is likelier than another.
fn random_string(alphabet: &[u8], len: usize) -> Result<String, NoRandomness> {
    let size = alphabet.len();
    let unbiased_below = 256 - 256 % size;
    let mut out = String::with_capacity(len);
    let mut buffer = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buffer).map_err(NoRandomness)?;
        for &byte in buffer.iter().filter(|&&b| usize::from(b) < unbiased_below) {
            if out.len() == len {
                break;
            }
            out.push(char::from(alphabet[usize::from(byte) % size]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_parses_back_to_its_id_and_matches_its_hash() -> Result<(), NoRandomness> {
        let new = NewKey::generate()?;
        let key = new.key.expose_secret();
        assert_eq!(
            key.len(),
            KEY_PREFIX.len() + KEY_ID_CHARS + 1 + SECRET_CHARS
        );
        assert!(key.starts_with(&new.prefix));
        assert_eq!(key_id_of(key), Some(new.key_id.as_str()));
        assert!(matches(key, &new.hash));
        let other = NewKey::generate()?;
        assert_ne!(other.key_id, new.key_id);
        assert!(!matches(other.key.expose_secret(), &new.hash));
        Ok(())
    }

    #[test]
    fn malformed_keys_have_no_id() {
        let secret = "A".repeat(SECRET_CHARS);
        assert_eq!(
            key_id_of(&format!("sk-chat-abcdef123456-{secret}")),
            Some("abcdef123456")
        );
        for bad in [
            String::new(),
            format!("sk-other-abcdef123456-{secret}"),
            format!("sk-chat-ABCDEF123456-{secret}"),
            format!("sk-chat-abcdef12345-{secret}"),
            format!("sk-chat-abcdef123456-{secret}x"),
            format!("sk-chat-abcdef123456-{}", "-".repeat(SECRET_CHARS)),
            "sk-chat-abcdef123456".to_owned(),
        ] {
            assert_eq!(key_id_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn session_ids_are_long_hex_and_hash_stably() -> Result<(), NoRandomness> {
        let id = new_session_id()?;
        assert!(is_session_id(id.expose_secret()));
        assert!(!is_session_id("abc"));
        assert_ne!(id.expose_secret(), new_session_id()?.expose_secret());
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        Ok(())
    }

    #[test]
    fn random_strings_use_the_whole_alphabet_and_nothing_else() -> Result<(), NoRandomness> {
        let drawn = random_string(LOWERCASE_ALPHANUMERIC, 4000)?;
        assert!(drawn.bytes().all(|b| LOWERCASE_ALPHANUMERIC.contains(&b)));
        assert!(
            LOWERCASE_ALPHANUMERIC
                .iter()
                .all(|c| drawn.as_bytes().contains(c))
        );
        Ok(())
    }
}

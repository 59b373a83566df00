//! Typed settings: built-in defaults → an optional TOML file → environment variables.
//!
//! Every service has its own flat settings struct whose field names are the
//! lower-cased environment variable names (`DAILY_LIMIT` → `daily_limit`), so the
//! names users of the original already have (`OPENAI_API_KEY`, `REDIS_ADDR`,
//! `MYSQL_DSN`, ...) keep working, and the TOML file uses the same keys. A value of
//! the wrong type stops the service at start with a message naming the key.

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Environment variable naming the optional TOML file.
pub const CONFIG_FILE_ENV: &str = "CHAT_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {0} (from {CONFIG_FILE_ENV}) does not exist")]
    MissingFile(String),
    #[error("invalid configuration")]
    Invalid(#[source] Box<figment::Error>),
}

/// Loads `T` from its `Default`, then the file named by `CHAT_CONFIG` if set, then the
/// environment. `T` must be `#[serde(default)]`.
pub fn load<T: DeserializeOwned>() -> Result<T, SettingsError> {
    let mut figment = Figment::new();
    if let Ok(path) = std::env::var(CONFIG_FILE_ENV) {
        if !std::path::Path::new(&path).is_file() {
            return Err(SettingsError::MissingFile(path));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment
        .merge(Env::raw())
        .extract()
        .map_err(|error| SettingsError::Invalid(Box::new(error)))
}

/// Loads `T` from a TOML string alone, without the environment (tests, examples).
pub fn from_toml<T: DeserializeOwned>(toml: &str) -> Result<T, SettingsError> {
    Figment::new()
        .merge(Toml::string(toml))
        .extract()
        .map_err(|error| SettingsError::Invalid(Box::new(error)))
}

/// Deserializes a list given either as a TOML array or as one comma-separated string
/// (the natural form in an environment variable). Blank entries are dropped.
pub fn comma_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        One(String),
    }
    let items = match Raw::deserialize(deserializer)? {
        Raw::List(items) => items,
        Raw::One(joined) => joined.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(default)]
    struct Example {
        daily_limit: i64,
        #[serde(deserialize_with = "comma_list")]
        words: Vec<String>,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                daily_limit: 5000,
                words: vec!["foo".into()],
            }
        }
    }

    #[test]
    fn defaults_fill_what_the_source_leaves_out() -> anyhow::Result<()> {
        let example: Example = from_toml("")?;
        assert_eq!(example.daily_limit, 5000);
        assert_eq!(example.words, vec!["foo"]);
        let example: Example = from_toml("words = \"a, b ,,c\"")?;
        assert_eq!(example.words, vec!["a", "b", "c"]);
        let example: Example = from_toml("words = [\"x y\"]")?;
        assert_eq!(example.words, vec!["x y"]);
        Ok(())
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let error = from_toml::<Example>("daily_limit = \"lots\"")
            .err()
            .map(|error| format!("{:#}", anyhow::Error::new(error)))
            .unwrap_or_default();
        assert!(error.contains("daily_limit"), "{error}");
    }
}

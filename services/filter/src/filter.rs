//! The verdict on one text: cleaned first, then checked against the blocklist.

use chat_proto::FilterResponse;

use crate::error::FilterError;
use crate::{Blocklist, Settings, clean};

pub struct Filter {
    blocklist: Blocklist,
    max_text_chars: usize,
}

impl Filter {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            blocklist: Blocklist::new(&settings.blocked_words)?,
            max_text_chars: settings.max_text_chars,
        })
    }

    /// The verdict on one text; `Err` for texts that are not acceptable input at all.
    pub fn check(&self, text: &str) -> Result<FilterResponse, FilterError> {
        let cleaned = clean(text);
        if cleaned.is_empty() {
            return Err(FilterError::Empty);
        }
        let chars = cleaned.chars().count();
        if chars > self.max_text_chars {
            return Err(FilterError::TooLong {
                chars,
                limit: self.max_text_chars,
            });
        }
        Ok(match self.blocklist.find(&cleaned) {
            Some(matched) => FilterResponse {
                reason: format!("contains the blocked phrase \"{matched}\""),
                matched: matched.to_owned(),
                blocked: true,
                cleaned,
            },
            None => FilterResponse {
                cleaned,
                ..FilterResponse::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(words: &[&str]) -> anyhow::Result<Filter> {
        Filter::new(&Settings {
            blocked_words: words.iter().map(|word| (*word).to_owned()).collect(),
            max_text_chars: 20,
            ..Settings::default()
        })
    }

    #[test]
    fn the_original_example_is_cleaned() -> anyhow::Result<()> {
        let verdict = filter(&[])?.check("  Hello   world   from   Go!  ")?;
        assert_eq!(verdict.cleaned, "Hello world from Go!");
        assert!(!verdict.blocked);
        Ok(())
    }

    #[test]
    fn blocked_texts_say_why() -> anyhow::Result<()> {
        let verdict = filter(&["foo"])?.check("foo bar")?;
        assert!(verdict.blocked);
        assert_eq!(verdict.matched, "foo");
        assert!(verdict.reason.contains("\"foo\""), "{}", verdict.reason);
        assert!(!filter(&["foo"])?.check("food")?.blocked);
        Ok(())
    }

    #[test]
    fn empty_and_overlong_texts_are_invalid() -> anyhow::Result<()> {
        let filter = filter(&[])?;
        let empty = filter
            .check(" \t\n\u{0} ")
            .err()
            .map(|error| tonic::Status::from(error).code());
        assert_eq!(empty, Some(tonic::Code::InvalidArgument));
        let long = filter
            .check(&"x".repeat(21))
            .err()
            .map(|error| tonic::Status::from(error).code());
        assert_eq!(long, Some(tonic::Code::InvalidArgument));
        assert!(filter.check(&"字".repeat(20)).is_ok());
        Ok(())
    }
}

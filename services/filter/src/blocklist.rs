use aho_corasick::{AhoCorasick, MatchKind};

/// Words and phrases matched as whole words, case-insensitively.
pub struct Blocklist {
    /// Normalised entries (cleaned, lower-cased, single spaces), indexed like the patterns.
    entries: Vec<String>,
    /// `None` when the list is empty.
    matcher: Option<AhoCorasick>,
}

impl Blocklist {
    pub fn new(words: &[String]) -> anyhow::Result<Self> {
        let mut entries: Vec<String> = words
            .iter()
            .map(|word| normalise(&crate::clean(word)))
            .filter(|word| !word.is_empty())
            .collect();
        entries.sort();
        entries.dedup();
        let matcher = if entries.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&entries)?,
            )
        };
        Ok(Self { entries, matcher })
    }

    /// The first listed entry that occurs in `cleaned` as a whole word or phrase.
    pub fn find(&self, cleaned: &str) -> Option<&str> {
        let matcher = self.matcher.as_ref()?;
        let haystack = normalise(cleaned);
        matcher
            .find_overlapping_iter(&haystack)
            .find(|found| {
                let before = haystack[..found.start()].chars().next_back();
                let after = haystack[found.end()..].chars().next();
                let entry = &self.entries[found.pattern().as_usize()];
                let starts_word = entry.chars().next().is_some_and(is_word_char);
                let ends_word = entry.chars().next_back().is_some_and(is_word_char);
                let glued_before = starts_word && before.is_some_and(is_word_char);
                let glued_after = ends_word && after.is_some_and(is_word_char);
                !glued_before && !glued_after
            })
            .map(|found| self.entries[found.pattern().as_usize()].as_str())
    }
}

/// Lower-case with every whitespace run as one space, so "Foo\nBar" matches "foo bar".
fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// A character that continues a word in scripts that separate words with spaces.
/// Han, kana and other scripts written without spaces never form word boundaries,
/// so their entries match inside running text.
fn is_word_char(ch: char) -> bool {
    ch.is_alphanumeric() && !is_unspaced_script(ch)
}

fn is_unspaced_script(ch: char) -> bool {
    matches!(
        ch,
        '\u{3040}'..='\u{30FF}'   // hiragana, katakana
            | '\u{3400}'..='\u{4DBF}' // CJK extension A
            | '\u{4E00}'..='\u{9FFF}' // CJK unified ideographs
            | '\u{F900}'..='\u{FAFF}' // CJK compatibility ideographs
            | '\u{0E00}'..='\u{0E7F}' // Thai
            | '\u{20000}'..='\u{3FFFF}' // CJK extensions B and later
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(words: &[&str]) -> anyhow::Result<Blocklist> {
        Blocklist::new(
            &words
                .iter()
                .map(|word| (*word).to_owned())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn matches_whole_words_not_substrings() -> anyhow::Result<()> {
        let list = list(&["foo"])?;
        assert_eq!(list.find("foo bar"), Some("foo"));
        assert_eq!(list.find("FOO!"), Some("foo"));
        assert_eq!(list.find("say foo."), Some("foo"));
        assert_eq!(list.find("food"), None);
        assert_eq!(list.find("tofoo"), None);
        assert_eq!(list.find("foo_bar"), Some("foo"));
        Ok(())
    }

    #[test]
    fn matches_phrases_across_whitespace_and_case() -> anyhow::Result<()> {
        let list = list(&["Bad  Phrase"])?;
        assert_eq!(list.find("this is a bad phrase here"), Some("bad phrase"));
        assert_eq!(list.find("a BAD\nPHRASE"), Some("bad phrase"));
        assert_eq!(list.find("bad phrases"), None);
        assert_eq!(list.find("bad"), None);
        Ok(())
    }

    #[test]
    fn chinese_phrases_match_inside_running_text() -> anyhow::Result<()> {
        let list = list(&["敏感词", "foo"])?;
        assert_eq!(list.find("这里有敏感词啊"), Some("敏感词"));
        assert_eq!(list.find("敏感"), None);
        assert_eq!(list.find("中文foo中文"), Some("foo"));
        Ok(())
    }

    #[test]
    fn a_later_occurrence_counts_when_the_first_is_inside_a_word() -> anyhow::Result<()> {
        assert_eq!(list(&["foo"])?.find("food and foo"), Some("foo"));
        assert_eq!(list(&[])?.find("anything"), None);
        Ok(())
    }
}

use unicode_normalization::UnicodeNormalization;

/// Normalises a text for the model and for matching: NFKC (full-width letters,
/// ligatures and compatibility forms folded), control and invisible formatting
/// characters dropped, runs of spaces collapsed to one, runs of line breaks to one or
/// two (paragraphs survive, so code and lists keep their shape), ends trimmed.
pub fn clean(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    let mut pending_space = false;
    let mut pending_newlines = 0usize;
    for ch in text.nfkc() {
        if ch == '\n' {
            pending_newlines += 1;
        } else if ch.is_whitespace() {
            pending_space = true;
        } else if ch.is_control() || is_invisible(ch) {
            // Dropped without separating what surrounds it: "f\u{200B}oo" is "foo".
        } else {
            if !cleaned.is_empty() {
                match pending_newlines {
                    0 if pending_space => cleaned.push(' '),
                    0 => {}
                    1 => cleaned.push('\n'),
                    _ => cleaned.push_str("\n\n"),
                }
            }
            pending_space = false;
            pending_newlines = 0;
            cleaned.push(ch);
        }
    }
    cleaned
}

/// Formatting characters used to hide words from filters or to reorder text on
/// screen. The zero-width joiners stay: emoji sequences need them.
fn is_invisible(ch: char) -> bool {
    matches!(
        ch,
        '\u{00AD}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_spaces_and_keeps_paragraphs() {
        assert_eq!(
            clean("  Hello   world \t from   Go!  "),
            "Hello world from Go!"
        );
        assert_eq!(clean("line one  \n  line two"), "line one\nline two");
        assert_eq!(
            clean("para one\n\n\n\npara two\r\n"),
            "para one\n\npara two"
        );
        assert_eq!(clean(" \n\t "), "");
    }

    #[test]
    fn folds_compatibility_forms_and_drops_invisible_characters() {
        assert_eq!(clean("ＨＥＬＬＯ"), "HELLO");
        assert_eq!(clean("ﬁne"), "fine");
        assert_eq!(clean("f\u{200B}o\u{0}o\u{7}"), "foo");
        assert_eq!(clean("\u{202E}abc"), "abc");
    }

    #[test]
    fn keeps_chinese_and_emoji_intact() {
        assert_eq!(
            clean("你好，  世界 👩\u{200D}💻"),
            "你好, 世界 👩\u{200D}💻"
        );
    }
}

//! The fields of a conversation a caller sends or is given: ids, titles, cursors, page
//! sizes. Pure: no I/O.

use chat_proto::Conversation;

use crate::error::HistoryError;

/// Longest title a user may give.
pub const MAX_TITLE_CHARS: usize = 120;
/// Longest client key (the /v1 API's `X-Conversation-Id`); the column's width.
pub const MAX_KEY_CHARS: usize = 128;
/// A title taken from a first message is cut to this, on a word boundary.
pub(super) const DERIVED_TITLE_CHARS: usize = 60;

/// A conversation id as this service makes them (a lowercase UUID); anything else names
/// no conversation.
pub fn parse_id(id: &str) -> Result<&str, HistoryError> {
    let shaped = id.len() == 36
        && id.bytes().enumerate().all(|(at, byte)| match at {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte),
        });
    if shaped {
        Ok(id)
    } else {
        Err(HistoryError::ConversationNotFound)
    }
}

/// Whitespace runs (newlines included) become one space; control characters go.
pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace()
        .map(|word| word.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A title a user gave: on one line, 1 to [`MAX_TITLE_CHARS`] characters.
pub fn user_title(title: &str) -> Result<String, HistoryError> {
    let title = one_line(title);
    let chars = title.chars().count();
    if chars == 0 || chars > MAX_TITLE_CHARS {
        return Err(HistoryError::BadTitle);
    }
    Ok(title)
}

/// The title a conversation takes from its first user message: on one line, cut on a
/// word boundary to at most [`DERIVED_TITLE_CHARS`] characters with an ellipsis (mid
/// word only when the first word alone is too long, as in Chinese without spaces).
pub fn title_from_message(text: &str) -> String {
    let line = one_line(text);
    if line.chars().count() <= DERIVED_TITLE_CHARS {
        return line;
    }
    let room = DERIVED_TITLE_CHARS - 1;
    let mut cut = String::new();
    for word in line.split(' ') {
        let needed = cut.chars().count() + usize::from(!cut.is_empty()) + word.chars().count();
        if needed > room {
            break;
        }
        if !cut.is_empty() {
            cut.push(' ');
        }
        cut.push_str(word);
    }
    if cut.is_empty() {
        cut = line.chars().take(room).collect();
    }
    cut.truncate(
        cut.trim_end_matches(|c: char| c.is_ascii_punctuation())
            .len(),
    );
    cut.push('…');
    cut
}

/// The position after the last conversation of a page: its last activity and id.
pub(super) fn conversation_cursor(conversation: &Conversation) -> String {
    format!("{}_{}", conversation.updated_at_unix_ms, conversation.id)
}

pub(super) fn parse_conversation_cursor(cursor: &str) -> Result<(i64, &str), HistoryError> {
    let (updated, id) = cursor.split_once('_').ok_or(HistoryError::BadCursor)?;
    let updated = updated.parse().map_err(|_| HistoryError::BadCursor)?;
    let id = parse_id(id).map_err(|_| HistoryError::BadCursor)?;
    Ok((updated, id))
}

pub(super) fn parse_message_cursor(cursor: &str) -> Result<i64, HistoryError> {
    match cursor.parse::<i64>() {
        Ok(id) if id >= 0 => Ok(id),
        _ => Err(HistoryError::BadCursor),
    }
}

pub(super) fn page_size(asked: u32, default: u32, max: u32) -> u32 {
    match asked {
        0 => default,
        asked => asked.min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_message_makes_a_short_title_on_a_word_boundary() {
        assert_eq!(title_from_message("  Hello \n  world  "), "Hello world");
        let long =
            "Please explain how the borrow checker decides when two references may coexist in Rust";
        let title = title_from_message(long);
        assert_eq!(
            title,
            "Please explain how the borrow checker decides when two…"
        );
        assert!(title.chars().count() <= DERIVED_TITLE_CHARS);
        let chinese = "请".repeat(80);
        assert_eq!(
            title_from_message(&chinese).chars().count(),
            DERIVED_TITLE_CHARS
        );
    }

    #[test]
    fn titles_given_are_trimmed_and_bounded() {
        assert_eq!(
            user_title("  Trip\tplans \n").ok().as_deref(),
            Some("Trip plans")
        );
        assert!(user_title("   ").is_err());
        assert!(user_title(&"x".repeat(MAX_TITLE_CHARS + 1)).is_err());
        assert!(user_title(&"x".repeat(MAX_TITLE_CHARS)).is_ok());
    }

    #[test]
    fn only_lowercase_uuids_name_conversations() {
        assert!(parse_id("0b9c7f4e-2d1a-4c3b-9e8f-1a2b3c4d5e6f").is_ok());
        for bad in [
            "",
            "0B9C7F4E-2D1A-4C3B-9E8F-1A2B3C4D5E6F",
            "0b9c7f4e2d1a4c3b9e8f1a2b3c4d5e6f",
            "0b9c7f4e-2d1a-4c3b-9e8f-1a2b3c4d5e6'",
            "../../etc/passwd",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_nonsense_is_refused() {
        let conversation = Conversation {
            id: "0b9c7f4e-2d1a-4c3b-9e8f-1a2b3c4d5e6f".to_owned(),
            updated_at_unix_ms: 1_700_000_000_123,
            ..Conversation::default()
        };
        let cursor = conversation_cursor(&conversation);
        assert_eq!(
            parse_conversation_cursor(&cursor).ok(),
            Some((1_700_000_000_123, conversation.id.as_str()))
        );
        assert!(parse_conversation_cursor("nonsense").is_err());
        assert!(parse_conversation_cursor("12_notanid").is_err());
        assert!(parse_message_cursor("-1").is_err());
        assert_eq!(parse_message_cursor("42").ok(), Some(42));
    }
}

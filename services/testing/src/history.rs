//! The requests the history service's tests and the keyword index's tests (which feed
//! the index through real saves) both make.

use chat_proto::{NewMessage, Role, SaveRequest};

/// A request saving `turns` (role and text, oldest first, none incomplete) for `user_id`
/// in the conversation the service picks.
pub fn save_request(user_id: &str, turns: &[(Role, &str)]) -> SaveRequest {
    let messages = turns
        .iter()
        .map(|(role, text)| NewMessage {
            role: (*role).into(),
            text: (*text).into(),
            incomplete: false,
        })
        .collect();
    SaveRequest {
        user_id: user_id.into(),
        messages,
        ..SaveRequest::default()
    }
}

//! The UI's session cookie: `HttpOnly` (no script reads it), `SameSite=Strict` (no other
//! site's page sends it), `Secure` over HTTPS.

use axum::http::{HeaderMap, HeaderValue, header};

pub const SESSION_COOKIE: &str = "chat_session";

/// The session id of the request's `Cookie` header.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// `Set-Cookie` for a session of `max_age` seconds; an empty id and 0 clear it.
pub fn session_cookie(session_id: &str, max_age: i64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={session_id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_read_among_other_cookies_and_set_safely() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; chat_session=s1 ; b=2"),
        );
        assert_eq!(session_id(&headers), Some("s1"));
        headers.insert(header::COOKIE, HeaderValue::from_static("chat_session="));
        assert_eq!(session_id(&headers), None);
        let set = session_cookie("s2", 60, true).map(|v| v.to_str().map(str::to_owned));
        let Some(Ok(set)) = set else {
            panic!("a valid cookie");
        };
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(
            set.contains("Max-Age=60") && set.ends_with("; Secure"),
            "{set}"
        );
    }
}

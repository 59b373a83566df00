//! The one definition of a valid user id, checked at the gateway and again by every
//! service that uses it as part of a Redis key or a MySQL row.

/// Longest user id accepted; the `chat_history.user_id` column is `VARCHAR(64)`.
pub const MAX_USER_ID_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("user_id is empty")]
    Empty,
    #[error("user_id is longer than {MAX_USER_ID_CHARS} characters")]
    TooLong,
    #[error("user_id may only contain letters, digits and . _ - @ :")]
    BadCharacter,
}

/// Accepts ASCII letters, digits and `._-@:`: safe inside Redis keys, log lines and URLs.
pub fn validate_user_id(user_id: &str) -> Result<(), UserIdError> {
    if user_id.is_empty() {
        return Err(UserIdError::Empty);
    }
    if user_id.len() > MAX_USER_ID_CHARS {
        return Err(UserIdError::TooLong);
    }
    if !user_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':'))
    {
        return Err(UserIdError::BadCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_and_rejects_unsafe_ones() {
        assert_eq!(validate_user_id("u1"), Ok(()));
        assert_eq!(validate_user_id("alice@example.com"), Ok(()));
        assert_eq!(validate_user_id(""), Err(UserIdError::Empty));
        assert_eq!(validate_user_id(&"a".repeat(65)), Err(UserIdError::TooLong));
        assert_eq!(validate_user_id(&"a".repeat(64)), Ok(()));
        assert_eq!(validate_user_id("a b"), Err(UserIdError::BadCharacter));
        assert_eq!(validate_user_id("a*"), Err(UserIdError::BadCharacter));
        assert_eq!(validate_user_id("用户"), Err(UserIdError::BadCharacter));
    }
}

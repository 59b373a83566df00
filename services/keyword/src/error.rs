//! What a search or a reindex can fail with, each mapped once to the shared `ErrorCode`
//! at the gRPC edge (`service.rs`).

use chat_common::ErrorCode;
use chat_common::user::UserIdError;

#[derive(Debug, thiserror::Error)]
pub enum KeywordError {
    #[error(transparent)]
    BadUserId(#[from] UserIdError),
    #[error("the query has no word to search for")]
    EmptyQuery,
    #[error("the text is longer than {0} characters")]
    TooLong(usize),
    #[error("keyword index: {0}")]
    Mysql(#[from] mysql_async::Error),
    #[error("keyword index: MySQL did not answer in time")]
    TimedOut,
    /// The analysis task panicked: a bug.
    #[error("keyword analysis failed: {0}")]
    Analysis(String),
}

impl KeywordError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadUserId(_) | Self::EmptyQuery | Self::TooLong(_) => ErrorCode::BadRequest,
            Self::Mysql(_) | Self::TimedOut => ErrorCode::Unavailable,
            Self::Analysis(_) => ErrorCode::Internal,
        }
    }
}

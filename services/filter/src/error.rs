//! Texts the filter refuses to judge at all. A blocked text is not an error: it is a
//! verdict, answered normally, so the gateway can tell the user why.

use chat_common::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Nothing is left after cleaning (only spaces or invisible characters).
    #[error("text is empty")]
    Empty,
    /// Counted after cleaning, so padding cannot push a text over or under the limit.
    #[error("text is {chars} characters long; the limit is {limit}")]
    TooLong { chars: usize, limit: usize },
}

impl FilterError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Empty | Self::TooLong { .. } => ErrorCode::BadRequest,
        }
    }
}

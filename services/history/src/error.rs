//! What can go wrong with a save or a list. Each failure carries the `ErrorCode` the
//! gateway turns into an HTTP status, so the gRPC edge maps it in one place. Cache
//! failures are not here: they never reach a caller (see `cache::CacheError`).

use chat_common::ErrorCode;
use chat_common::user::UserIdError;

use crate::store::MAX_SAVE;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    BadUserId(#[from] UserIdError),
    #[error("a save carries 1 to {MAX_SAVE} messages")]
    BadMessageCount,
    #[error("only user and assistant messages are kept")]
    BadRole,
    /// Unknown, malformed, or another user's: the caller cannot tell which.
    #[error("no such conversation")]
    ConversationNotFound,
    #[error("a title is 1 to {} characters", crate::conversations::MAX_TITLE_CHARS)]
    BadTitle,
    #[error(
        "a conversation key is 1 to {} characters",
        crate::conversations::MAX_KEY_CHARS
    )]
    BadConversationKey,
    #[error("the cursor is not one this service gave")]
    BadCursor,
    #[error("a request id is 1 to 64 characters of letters, digits and . _ : -")]
    BadRequestId,
    /// MySQL failed moments ago; it is left alone for a second (see `breaker::Breaker`).
    #[error("history store: MySQL is unavailable")]
    MysqlAway,
    /// MySQL could not take a save, and neither could the outbox in Redis.
    #[error("history store: neither MySQL nor the outbox could take the save")]
    OutboxUnavailable,
    /// MySQL has forgotten what was deleted, but the cache could not be cleared: the
    /// caller retries.
    #[error("deleted, but the cache could not be cleared; retry")]
    CacheNotCleared,
    #[error("history store failed: {0}")]
    Mysql(#[from] mysql_async::Error),
    #[error("history store: no MySQL connection in time")]
    NoConnectionInTime,
    #[error("history store: MySQL read timed out")]
    ReadTimedOut,
    #[error("history store: MySQL write timed out")]
    WriteTimedOut,
    /// MySQL accepted an INSERT without an AUTO_INCREMENT id: the schema is not ours.
    #[error("history store: no insert id")]
    NoInsertId,
    /// The writer tasks are gone, which only happens while the service shuts down.
    #[error("history writer stopped")]
    WriterStopped,
    #[error("history writer dropped the save")]
    WriterDroppedSave,
}

impl HistoryError {
    /// MySQL is down, hung or too slow: what the outbox and the breaker are for.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Self::Mysql(_)
                | Self::NoConnectionInTime
                | Self::ReadTimedOut
                | Self::WriteTimedOut
                | Self::MysqlAway
        )
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadUserId(_)
            | Self::BadMessageCount
            | Self::BadRole
            | Self::BadTitle
            | Self::BadConversationKey
            | Self::BadCursor
            | Self::BadRequestId => ErrorCode::BadRequest,
            Self::ConversationNotFound => ErrorCode::NotFound,
            // Timeouts too: the caller cannot tell a slow MySQL from a missing one.
            Self::Mysql(_)
            | Self::NoConnectionInTime
            | Self::ReadTimedOut
            | Self::WriteTimedOut
            | Self::WriterStopped
            | Self::MysqlAway
            | Self::OutboxUnavailable
            | Self::CacheNotCleared => ErrorCode::Unavailable,
            Self::NoInsertId | Self::WriterDroppedSave => ErrorCode::Internal,
        }
    }
}

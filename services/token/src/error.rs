//! What can go wrong with a quota operation. Each failure carries the `ErrorCode` the
//! gateway turns into an HTTP status, so the gRPC edge maps it in one place.

use chat_common::ErrorCode;
use chat_common::user::UserIdError;

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(transparent)]
    BadUserId(#[from] UserIdError),
    #[error("reservation_id must be 1 to 64 letters, digits or dashes")]
    BadReservationId,
    #[error("tokens must be positive")]
    TokensNotPositive,
    #[error("actual_tokens must not be negative")]
    ActualTokensNegative,
    #[error("daily_limit must not be negative")]
    LimitNegative,
    #[error("prompt_tokens and output_tokens must not be negative")]
    PartsNegative,
    #[error("model must be at most 200 characters")]
    ModelTooLong,
    /// No pooled Redis connection: Redis is down or the pool is exhausted.
    #[error("quota store unavailable: {0}")]
    StoreUnavailable(chat_common::redis::PoolError),
    #[error("quota store failed: {0}")]
    StoreFailed(redis::RedisError),
    /// Redis did not answer within `REDIS_TIMEOUT_MS`; reported like an outage, since
    /// the caller cannot tell the two apart and retries the same way.
    #[error("quota store timed out")]
    StoreTimedOut,
    /// The settlement journal's disk failed.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The time zone has no next midnight: a bug or a broken tz database.
    #[error("calendar: {0}")]
    Calendar(jiff::Error),
}

impl QuotaError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadUserId(_)
            | Self::BadReservationId
            | Self::TokensNotPositive
            | Self::ActualTokensNegative
            | Self::LimitNegative
            | Self::PartsNegative
            | Self::ModelTooLong => ErrorCode::BadRequest,
            Self::StoreUnavailable(_) | Self::StoreFailed(_) | Self::StoreTimedOut => {
                ErrorCode::Unavailable
            }
            Self::Journal(_) | Self::Calendar(_) => ErrorCode::Internal,
        }
    }

    /// Redis could not be reached or did not answer in time: the same operation may
    /// succeed later (and a settlement is journalled meanwhile). A script Redis refused
    /// is not: it would fail again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::StoreUnavailable(_) | Self::StoreTimedOut => true,
            Self::StoreFailed(error) => {
                !matches!(error.retry_method(), redis::RetryMethod::NoRetry)
            }
            _ => false,
        }
    }
}

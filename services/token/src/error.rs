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
    /// No pooled Redis connection: Redis is down or the pool is exhausted.
    #[error("quota store unavailable: {0}")]
    StoreUnavailable(deadpool_redis::PoolError),
    #[error("quota store failed: {0}")]
    StoreFailed(redis::RedisError),
    /// Redis did not answer within `REDIS_TIMEOUT_MS`; reported like an outage, since
    /// the caller cannot tell the two apart and retries the same way.
    #[error("quota store timed out")]
    StoreTimedOut,
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
            | Self::LimitNegative => ErrorCode::BadRequest,
            Self::StoreUnavailable(_) | Self::StoreFailed(_) | Self::StoreTimedOut => {
                ErrorCode::Unavailable
            }
            Self::Calendar(_) => ErrorCode::Internal,
        }
    }
}

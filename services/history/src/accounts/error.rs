//! What can go wrong with an account operation, and the `ErrorCode` each failure is
//! answered with. Messages never carry a secret: keys, passwords, hashes and session
//! ids stay out of every variant, and every refused credential gets one generic message.

use chat_common::ErrorCode;
use chat_common::user::UserIdError;

use super::keys::NoRandomness;
use super::passwords::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};
use super::store::MAX_KEY_NAME_CHARS;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    BadUserId(#[from] UserIdError),
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    PasswordTooShort,
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
    #[error("key name must be 1 to {MAX_KEY_NAME_CHARS} characters")]
    BadKeyName,
    #[error("rate_limit_per_minute must be at most {}", u32::MAX)]
    RateLimitTooLarge,
    #[error("client_addr must be at most 64 printable characters without spaces")]
    BadClientAddr,
    #[error("user not found")]
    UserNotFound,
    #[error("key not found")]
    KeyNotFound,
    #[error("user already exists")]
    UserExists,
    /// A key or session that is malformed, unknown, revoked, expired, or whose user is
    /// disabled or gone: one message, so a caller learns nothing about which.
    #[error("invalid credential")]
    InvalidCredential,
    /// Unknown user, no password set, wrong password or disabled user: one message.
    #[error("wrong user id or password")]
    WrongPassword,
    /// Too many failed logins for the account or the address; seconds until retrying.
    #[error("too many failed logins; try again later (in {0} s)")]
    TooManyFailures(u64),
    #[error("account store failed: {0}")]
    Mysql(mysql_async::Error),
    #[error("account store: no MySQL connection in time")]
    NoConnectionInTime,
    #[error("account store: MySQL timed out")]
    MysqlTimedOut,
    #[error("account store: another replica holds the bootstrap lock")]
    BootstrapLockBusy,
    #[error("session store unavailable: {0}")]
    RedisUnavailable(chat_common::redis::PoolError),
    #[error("session store failed: {0}")]
    Redis(redis::RedisError),
    #[error("session store timed out")]
    RedisTimedOut,
    /// Hashing or checking a password failed for a reason other than a wrong password:
    /// a stored hash that is not a PHC string, a hash that panicked, or a hashing thread
    /// that could not start.
    #[error("password hashing failed")]
    Hashing,
    #[error(transparent)]
    NoRandomness(#[from] NoRandomness),
}

impl AccountError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadUserId(_)
            | Self::PasswordTooShort
            | Self::PasswordTooLong
            | Self::BadKeyName
            | Self::RateLimitTooLarge
            | Self::BadClientAddr => ErrorCode::BadRequest,
            Self::UserNotFound | Self::KeyNotFound => ErrorCode::NotFound,
            Self::UserExists => ErrorCode::AlreadyExists,
            Self::InvalidCredential | Self::WrongPassword => ErrorCode::Unauthenticated,
            Self::TooManyFailures(_) => ErrorCode::RateLimited,
            // Timeouts too: the caller cannot tell a slow store from a missing one.
            Self::Mysql(_)
            | Self::NoConnectionInTime
            | Self::MysqlTimedOut
            | Self::BootstrapLockBusy
            | Self::RedisUnavailable(_)
            | Self::Redis(_)
            | Self::RedisTimedOut => ErrorCode::Unavailable,
            Self::Hashing | Self::NoRandomness(_) => ErrorCode::Internal,
        }
    }

    /// Seconds the caller should wait before trying again, when that is the point.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            Self::TooManyFailures(seconds) => Some(*seconds),
            _ => None,
        }
    }
}

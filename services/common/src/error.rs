//! The few error codes that cross service boundaries, each mapped once to a gRPC
//! status code and once to an HTTP status.

use tonic::Code;

/// What went wrong, in the words the HTTP API uses (`{"error": "<as_str>"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The caller sent something we cannot use (bad JSON, bad user id, empty text).
    BadRequest,
    /// The filter refused the text.
    Blocked,
    /// No credential, or one that is wrong, revoked or expired.
    Unauthenticated,
    /// A credential that may not do this (another user's data).
    PermissionDenied,
    /// What the request names does not exist (or is not the caller's).
    NotFound,
    /// What the request would create exists already.
    AlreadyExists,
    /// The caller's daily token quota is spent.
    QuotaExceeded,
    /// Too many requests: our limiter, or the provider's after retries.
    RateLimited,
    /// The provider account has no credit left.
    InsufficientQuota,
    /// A dependency did not answer within its deadline.
    Timeout,
    /// A dependency could not be reached.
    Unavailable,
    /// Anything else: a bug or an unexpected answer from a dependency.
    Internal,
}

impl ErrorCode {
    pub fn grpc_code(self) -> Code {
        match self {
            Self::BadRequest | Self::Blocked => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::QuotaExceeded | Self::RateLimited => Code::ResourceExhausted,
            Self::InsufficientQuota => Code::FailedPrecondition,
            Self::Timeout => Code::DeadlineExceeded,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::Blocked => 400,
            Self::Unauthenticated => 401,
            Self::InsufficientQuota => 402,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::QuotaExceeded | Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
            Self::Timeout => 504,
        }
    }

    /// The inverse of [`ErrorCode::grpc_code`], for statuses coming back from a service.
    pub fn from_grpc(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Self::BadRequest,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            Code::ResourceExhausted => Self::RateLimited,
            Code::FailedPrecondition => Self::InsufficientQuota,
            Code::DeadlineExceeded | Code::Cancelled => Self::Timeout,
            Code::Unavailable => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_round_trip_keeps_the_http_status() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied,
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::RateLimited,
            ErrorCode::InsufficientQuota,
            ErrorCode::Timeout,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(ErrorCode::from_grpc(code.grpc_code()), code);
        }
        assert_eq!(ErrorCode::InsufficientQuota.http_status(), 402);
        assert_eq!(ErrorCode::QuotaExceeded.http_status(), 429);
    }
}

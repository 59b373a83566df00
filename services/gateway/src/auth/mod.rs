//! Who is calling. Every request of the API shows an API key (`Authorization: Bearer
//! sk-...`) or the UI's session cookie; the accounts service (in the history service)
//! says whose it is, and the answer is cached for `AUTH_CACHE_TTL_MS` so that a steady
//! caller costs a hash and a cache hit, not a round trip. That TTL is also the longest a
//! revoked key or an ended session keeps working on a replica that has it cached.
//!
//! `AUTH_MODE=none` is the original's trust-the-id mode: the user is whoever the
//! request says.

mod admin_key;
mod cookie;

use std::time::Duration;

use axum::http::{HeaderMap, header};
use chat_common::user::validate_user_id;
use chat_proto::{AuthenticateRequest, Principal, SessionRequest};
use sha2::{Digest, Sha256};

pub use admin_key::AdminKey;
pub use cookie::{session_cookie, session_id as cookie_session_id};

use crate::settings::AuthMode;
use crate::{ApiError, Backends};

/// The caller of a request, and the limits that apply to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    /// The user's own daily token limit, when an operator set one.
    pub daily_limit: Option<i64>,
    /// The user's own request rate, when an operator set one.
    pub rate_limit_per_minute: Option<u32>,
}

impl From<Principal> for Caller {
    fn from(principal: Principal) -> Self {
        Self {
            user_id: principal.user_id,
            daily_limit: principal.daily_limit,
            rate_limit_per_minute: principal.rate_limit_per_minute,
        }
    }
}

/// A credential as the request carried it.
enum Credential<'a> {
    Key(&'a str),
    Session(&'a str),
}

impl Credential<'_> {
    /// The cache key: a hash, so the cache holds no secret.
    fn digest(&self) -> [u8; 32] {
        let (kind, secret) = match self {
            Self::Key(key) => (b'k', *key),
            Self::Session(id) => (b's', *id),
        };
        Sha256::new()
            .chain_update([kind])
            .chain_update(secret.as_bytes())
            .finalize()
            .into()
    }
}

/// Checks credentials, through a short cache.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    backends: Backends,
    /// Each credential's answer: the caller, or `None` for a refused one (so a client
    /// retrying a bad key does not reach the database each time either).
    cache: moka::sync::Cache<[u8; 32], Option<Caller>>,
    /// The callers let in lately, kept longer: who is let in while the accounts service
    /// cannot answer, so an outage of MySQL does not lock every user out.
    last_known: moka::sync::Cache<[u8; 32], Caller>,
}

/// Callers remembered at most; beyond, the least recently used are dropped.
const CACHE_CAPACITY: u64 = 100_000;

impl Authenticator {
    /// Trusts an answer for `ttl`, and a caller let in, while the accounts service
    /// fails, for `stale_ttl`.
    pub fn new(mode: AuthMode, backends: Backends, ttl: Duration, stale_ttl: Duration) -> Self {
        Self {
            mode,
            backends,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(ttl)
                .build(),
            last_known: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(stale_ttl)
                .build(),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The caller behind the request's credential; `None` in trust mode.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        if self.mode == AuthMode::None {
            return Ok(None);
        }
        let credential = credential(headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "send an API key as Authorization: Bearer <key>, or log in".to_owned(),
            )
        })?;
        let digest = credential.digest();
        let known = match self.cache.get(&digest) {
            Some(known) => known,
            None => match self.resolve(&credential).await {
                Ok(known) => {
                    self.cache.insert(digest, known.clone());
                    match &known {
                        Some(caller) => self.last_known.insert(digest, caller.clone()),
                        None => self.last_known.invalidate(&digest),
                    }
                    known
                }
                Err(error) => match self.last_known.get(&digest) {
                    Some(caller) => {
                        tracing::warn!(user_id = %caller.user_id, %error, "accounts unavailable; letting in a caller known before");
                        crate::metrics::stale_authentication();
                        Some(caller)
                    }
                    None => return Err(error),
                },
            },
        };
        known.map(Some).ok_or_else(|| {
            ApiError::Unauthorized("the credential is invalid, revoked or expired".to_owned())
        })
    }

    /// Asks the accounts service; a refusal is an answer (`None`), a failure is not.
    async fn resolve(&self, credential: &Credential<'_>) -> Result<Option<Caller>, ApiError> {
        let principal = match *credential {
            Credential::Key(key) => {
                let request = AuthenticateRequest {
                    key: key.to_owned(),
                };
                self.backends
                    .accounts(request, |mut client, request| async move {
                        client.authenticate(request).await
                    })
                    .await
            }
            Credential::Session(id) => {
                let request = SessionRequest {
                    session_id: id.to_owned(),
                };
                self.backends
                    .accounts(request, |mut client, request| async move {
                        client.session(request).await
                    })
                    .await
            }
        };
        match principal {
            Ok(principal) => Ok(Some(principal.into())),
            Err(ApiError::Unauthorized(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Forgets a session on this replica at once (logout).
    pub fn forget_session(&self, session_id: &str) {
        let digest = Credential::Session(session_id).digest();
        self.cache.invalidate(&digest);
        self.last_known.invalidate(&digest);
    }
}

/// The bearer key, else the session cookie.
fn credential(headers: &HeaderMap) -> Option<Credential<'_>> {
    if let Some(key) = bearer(headers) {
        return Some(Credential::Key(key));
    }
    cookie::session_id(headers).map(Credential::Session)
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The user a request acts for: the caller, who may name themself (the original's
/// request shape) but nobody else; in trust mode, whoever the request names.
pub fn acting_user(caller: Option<Caller>, claimed: Option<String>) -> Result<Caller, ApiError> {
    match (caller, claimed) {
        (Some(caller), None) => Ok(caller),
        (Some(caller), Some(claimed)) if claimed == caller.user_id => Ok(caller),
        (Some(_), Some(_)) => Err(ApiError::Forbidden(
            "user_id names another user than the caller".to_owned(),
        )),
        (None, None) => Err(ApiError::BadJson("user_id is required".to_owned())),
        (None, Some(claimed)) => {
            validate_user_id(&claimed)
                .map_err(|error| ApiError::InvalidUserId(error.to_string()))?;
            Ok(Caller {
                user_id: claimed,
                daily_limit: None,
                rate_limit_per_minute: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn caller(user_id: &str) -> Caller {
        Caller {
            user_id: user_id.to_owned(),
            daily_limit: Some(10),
            rate_limit_per_minute: None,
        }
    }

    #[test]
    fn a_caller_acts_for_themself_only() {
        assert_eq!(acting_user(Some(caller("a")), None).ok(), Some(caller("a")));
        assert_eq!(
            acting_user(Some(caller("a")), Some("a".to_owned())).ok(),
            Some(caller("a"))
        );
        assert!(matches!(
            acting_user(Some(caller("a")), Some("b".to_owned())),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            acting_user(None, Some("bad id".to_owned())),
            Err(ApiError::InvalidUserId(_))
        ));
        assert!(matches!(acting_user(None, None), Err(ApiError::BadJson(_))));
        assert_eq!(
            acting_user(None, Some("u1".to_owned()))
                .ok()
                .map(|c| c.user_id),
            Some("u1".to_owned())
        );
    }

    #[test]
    fn the_key_comes_before_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; chat_session=abc"),
        );
        assert!(matches!(
            credential(&headers),
            Some(Credential::Session("abc"))
        ));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-1"),
        );
        assert!(matches!(
            credential(&headers),
            Some(Credential::Key("sk-1"))
        ));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert!(matches!(
            credential(&headers),
            Some(Credential::Session("abc"))
        ));
    }
}

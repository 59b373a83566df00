//! Which allowance a request spends, from its method and matched route: the model's, the
//! reads', the login's, or none.

use axum::http::Method;

/// Routes that call the model, as `METHOD /matched/path`: the user's
/// `RATE_LIMIT_PER_MINUTE` (or their own) applies. Every other route not exempt spends
/// the read allowance.
pub const MODEL_ROUTES: &[&str] = &[
    "POST /chat",
    "POST /chat/stream",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /conversations/{conversation_id}/messages",
];

/// Routes nobody is limited on: the page, the health check, and the admin API (its
/// caller holds the admin key, not a user's).
fn exempt(route: &str) -> bool {
    matches!(route, "/" | "/health") || route == "/admin" || route.starts_with("/admin/")
}

/// Which allowance a route spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A model call: `RATE_LIMIT_PER_MINUTE`, or the account's own rate.
    Model,
    /// Any other API request: `READ_RATE_LIMIT_PER_MINUTE`.
    Read,
    /// The login, whose caller has no credential yet: `ADDRESS_RATE_LIMIT_PER_MINUTE`
    /// per client address.
    Login,
}

impl Class {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Read => "read",
            Self::Login => "anonymous",
        }
    }
}

/// The class of a request to a matched route; `None` for the exempt ones.
pub fn class_of(method: &Method, route: &str) -> Option<Class> {
    let model = MODEL_ROUTES.iter().any(|entry| {
        entry
            .split_once(' ')
            .is_some_and(|(m, path)| m == method.as_str() && path == route)
    });
    if exempt(route) {
        None
    } else if model {
        Some(Class::Model)
    } else if route == "/auth/login" {
        Some(Class::Login)
    } else {
        Some(Class::Read)
    }
}

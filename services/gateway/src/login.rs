//! The UI's login: `POST /auth/login` checks a password and sets the session cookie,
//! `POST /auth/logout` ends the session, `GET /auth/me` says who is logged in (and
//! whether authentication is on at all).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_proto::{LoginRequest, SessionRequest};
use serde::Deserialize;
use serde_json::json;

use crate::ApiError;
use crate::auth::{self, session_cookie};
use crate::rate_limit::ClientAddr;
use crate::routes::AppState;
use crate::settings::AuthMode;

#[derive(Deserialize)]
pub struct Credentials {
    user_id: String,
    password: String,
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(credentials) = body.map_err(|rejection| ApiError::BadJson(rejection.body_text()))?;
    let request = LoginRequest {
        user_id: credentials.user_id,
        password: credentials.password,
        client_addr: client.to_string(),
    };
    let answer = state
        .backends
        .accounts(request, |mut client, request| async move {
            client.login(request).await
        })
        .await
        .map_err(|error| match error {
            // One message whatever was wrong: the id, the password, or the account.
            ApiError::Unauthorized(_) | ApiError::NotFound(_) | ApiError::InvalidField(_) => {
                ApiError::Unauthorized("wrong user id or password".to_owned())
            }
            other => other,
        })?;
    let user_id = answer.principal.map(|p| p.user_id).unwrap_or_default();
    let cookie = session_cookie(
        &answer.session_id,
        answer.expires_in_seconds,
        state.cookie_secure.applies(&headers),
    );
    tracing::info!(user_id, "logged in");
    let body = json!({"user_id": user_id, "expires_in_seconds": answer.expires_in_seconds});
    let mut response = Json(body).into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(session_id) = auth::cookie_session_id(&headers) {
        state.auth.forget_session(session_id);
        let request = SessionRequest {
            session_id: session_id.to_owned(),
        };
        state
            .backends
            .accounts(request, |mut client, request| async move {
                client.logout(request).await
            })
            .await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = session_cookie("", 0, state.cookie_secure.applies(&headers)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

pub async fn me(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.auth.mode() == AuthMode::None {
        return Ok(Json(json!({"auth_mode": "none"})).into_response());
    }
    let caller = state.auth.caller(&headers).await?;
    let user_id = caller.map(|caller| caller.user_id);
    Ok(Json(json!({"user_id": user_id, "auth_mode": "required"})).into_response())
}

/// When the session cookie gets the `Secure` attribute (`COOKIE_SECURE`).
#[derive(Debug, Clone, Copy)]
pub enum CookieSecure {
    /// When the request came over HTTPS, as the proxy in front says.
    Auto,
    Always,
    Never,
}

impl CookieSecure {
    pub fn from_setting(setting: &str) -> anyhow::Result<Self> {
        match setting.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "always" | "true" => Ok(Self::Always),
            "never" | "false" => Ok(Self::Never),
            other => anyhow::bail!("COOKIE_SECURE is auto, always or never, not {other:?}"),
        }
    }

    fn applies(self, headers: &HeaderMap) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => headers
                .get("x-forwarded-proto")
                .and_then(|value| value.to_str().ok())
                .is_some_and(|proto| proto.eq_ignore_ascii_case("https")),
        }
    }
}

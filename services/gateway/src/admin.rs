//! The operators' API, `/admin/...` with `Authorization: Bearer <ADMIN_API_KEY>`: users,
//! their limits and their API keys. The same operations run from the command line as
//! `chat-gateway admin ...` ([`crate::cli`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_proto::{
    ApiKey, CreateKeyRequest, CreateUserRequest, CreatedKey, GetUserRequest, RevokeKeyRequest,
    UpdateUserRequest, User,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::routes::AppState;
use crate::{ApiError, Backends};

/// `POST /admin/users`; the optional fields of `PATCH /admin/users/{id}` too.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFields {
    pub user_id: Option<String>,
    pub password: Option<String>,
    pub daily_limit: Option<i64>,
    pub rate_limit_per_minute: Option<i64>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFields {
    #[serde(default)]
    pub name: String,
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body)
        .map_err(|rejection| ApiError::InvalidField(rejection.body_text()))
}

pub fn user_json(user: &User) -> Value {
    json!({
        "user_id": user.user_id,
        "has_password": user.has_password,
        "daily_limit": user.daily_limit,
        "rate_limit_per_minute": user.rate_limit_per_minute,
        "disabled": user.disabled,
        "created_at_ms": user.created_at_unix_ms,
    })
}

pub fn key_json(key: &ApiKey) -> Value {
    json!({
        "key_id": key.key_id,
        "user_id": key.user_id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at_ms": key.created_at_unix_ms,
        "last_used_at_ms": key.last_used_at_unix_ms,
        "revoked_at_ms": key.revoked_at_unix_ms,
        "revoked": key.revoked_at_unix_ms.is_some(),
    })
}

/// The created key: the only time its secret is shown.
pub fn created_key_json(created: &CreatedKey) -> Value {
    let mut body = created.info.as_ref().map(key_json).unwrap_or_default();
    body["key"] = created.key.clone().into();
    body
}

/// The operations, shared by the HTTP routes and the command line.
pub async fn create_user(backends: &Backends, fields: UserFields) -> Result<User, ApiError> {
    if fields.disabled.is_some() {
        return Err(ApiError::InvalidField(
            "a new user is enabled; PATCH it to disable it".to_owned(),
        ));
    }
    let request = CreateUserRequest {
        user_id: fields.user_id.unwrap_or_default(),
        password: fields.password,
        daily_limit: fields.daily_limit,
        rate_limit_per_minute: fields
            .rate_limit_per_minute
            .map(|rate| u32::try_from(rate).unwrap_or(0)),
    };
    backends
        .accounts(request, |mut client, request| async move {
            client.create_user(request).await
        })
        .await
}

pub async fn get_user(backends: &Backends, user_id: String) -> Result<User, ApiError> {
    let request = GetUserRequest { user_id };
    backends
        .accounts(request, |mut client, request| async move {
            client.get_user(request).await
        })
        .await
}

pub async fn update_user(
    backends: &Backends,
    user_id: String,
    fields: UserFields,
) -> Result<User, ApiError> {
    if fields.user_id.as_ref().is_some_and(|id| *id != user_id) {
        return Err(ApiError::InvalidField("a user id cannot change".to_owned()));
    }
    let request = UpdateUserRequest {
        user_id,
        password: fields.password,
        daily_limit: fields.daily_limit,
        rate_limit_per_minute: fields.rate_limit_per_minute,
        disabled: fields.disabled,
    };
    backends
        .accounts(request, |mut client, request| async move {
            client.update_user(request).await
        })
        .await
}

pub async fn create_key(
    backends: &Backends,
    user_id: String,
    name: String,
) -> Result<CreatedKey, ApiError> {
    let request = CreateKeyRequest { user_id, name };
    backends
        .accounts(request, |mut client, request| async move {
            client.create_key(request).await
        })
        .await
}

pub async fn list_keys(backends: &Backends, user_id: String) -> Result<Vec<ApiKey>, ApiError> {
    let request = GetUserRequest { user_id };
    let listed = backends
        .accounts(request, |mut client, request| async move {
            client.list_keys(request).await
        })
        .await?;
    Ok(listed.keys)
}

pub async fn revoke_key(backends: &Backends, key_id: String) -> Result<(), ApiError> {
    let request = RevokeKeyRequest { key_id };
    backends
        .accounts(request, |mut client, request| async move {
            client.revoke_key(request).await
        })
        .await?;
    Ok(())
}

/// The user, their limits and what they used today.
async fn user_with_usage(backends: &Backends, user: &User) -> Result<Value, ApiError> {
    let quota = backends
        .remaining(&user.user_id, user.daily_limit)
        .await
        .map_err(|status| ApiError::dependency("token", status))?;
    let mut body = user_json(user);
    body["usage_today"] = json!({
        "used": quota.limit - quota.remaining,
        "limit": quota.limit,
        "remaining": quota.remaining,
        "reset_after_seconds": quota.reset_after_seconds,
    });
    Ok(body)
}

// ----- the routes -----

pub async fn post_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<UserFields>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.admin.check(&headers)?;
    let user = create_user(&state.backends, json_body(body)?).await?;
    tracing::info!(user_id = %user.user_id, "user created");
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

pub async fn read_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    state.admin.check(&headers)?;
    let user = get_user(&state.backends, user_id).await?;
    Ok(Json(user_with_usage(&state.backends, &user).await?).into_response())
}

pub async fn patch_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    body: Result<Json<UserFields>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.admin.check(&headers)?;
    let user = update_user(&state.backends, user_id, json_body(body)?).await?;
    tracing::info!(user_id = %user.user_id, disabled = user.disabled, "user updated");
    Ok(Json(user_with_usage(&state.backends, &user).await?).into_response())
}

pub async fn post_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    body: Result<Json<KeyFields>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.admin.check(&headers)?;
    let created = create_key(&state.backends, user_id, json_body(body)?.name).await?;
    Ok((StatusCode::CREATED, Json(created_key_json(&created))).into_response())
}

pub async fn get_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    state.admin.check(&headers)?;
    let keys = list_keys(&state.backends, user_id).await?;
    let keys: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(Json(json!({ "keys": keys })).into_response())
}

pub async fn delete_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    state.admin.check(&headers)?;
    revoke_key(&state.backends, key_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

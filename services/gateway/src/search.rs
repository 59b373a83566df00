//! `GET /search?q=...`: the caller's own saved messages (all conversations, or one with
//! `conversation_id`) that match the words of `q`, best first, with where they match.
//! Authenticated like `/history`; the keyword service searches one user's index only.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chat_proto::{Role, SearchRequest};
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::ApiError;
use crate::routes::AppState;

#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    user_id: Option<String>,
    conversation_id: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Hit {
    message_id: i64,
    conversation_id: String,
    role: &'static str,
    text: String,
    created_at_ms: i64,
    score: f64,
    /// `[start, end)` offsets in characters (Unicode code points) of `text` where the
    /// query's words occur.
    highlights: Vec<[u32; 2]>,
}

#[derive(Debug, Serialize)]
struct Results {
    results: Vec<Hit>,
}

pub async fn search(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadJson(rejection.body_text()))?;
    let caller = crate::api::admit(&state, &headers, query.user_id).await?;
    let text = query.q.unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::InvalidField(
            "q: give the words to search for".to_owned(),
        ));
    }
    let hits = state
        .backends
        .search(
            SearchRequest {
                user_id: caller.user_id,
                query: text,
                conversation_id: query.conversation_id.unwrap_or_default(),
                limit: query.limit.unwrap_or(20),
                exclude_ids: Vec::new(),
                skip_common_terms: false,
                without_highlights: false,
            },
            true,
        )
        .await
        .map_err(|status| match status.code() {
            Code::InvalidArgument => ApiError::InvalidField(format!("q: {}", status.message())),
            _ => ApiError::dependency("keyword", status),
        })?;
    let results = hits
        .into_iter()
        .map(|hit| Hit {
            message_id: hit.message_id,
            role: match hit.role() {
                Role::Assistant => "assistant",
                _ => "user",
            },
            conversation_id: hit.conversation_id,
            highlights: hit
                .highlights
                .iter()
                .map(|range| [range.start, range.end])
                .collect(),
            text: hit.text,
            created_at_ms: hit.created_at_unix_ms,
            score: hit.score,
        })
        .collect();
    Ok(Json(Results { results }).into_response())
}

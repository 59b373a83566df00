//! `GET /v1/models` and `GET /v1/models/{id}`: the models `/v1` offers, the configured one
//! first, then `ALLOWED_MODELS`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::credentialed;
use super::error::V1Error;
use crate::Settings;
use crate::routes::AppState;

/// Who `/v1/models` says owns the models.
const OWNER: &str = "chat-gateway";

/// The models `/v1` offers: the configured one first, then `ALLOWED_MODELS`.
#[derive(Debug, Clone)]
pub struct Catalog {
    models: Vec<String>,
}

impl Catalog {
    pub fn from_settings(settings: &Settings) -> Self {
        let mut models: Vec<String> = Vec::new();
        let named = std::iter::once(settings.openai_model.as_str())
            .chain(settings.allowed_models.split(','))
            .map(str::trim)
            .filter(|model| !model.is_empty());
        for model in named {
            if !models.iter().any(|known| known == model) {
                models.push(model.to_owned());
            }
        }
        Self { models }
    }

    pub(super) fn offers(&self, model: &str) -> bool {
        self.models.iter().any(|known| known == model)
    }
}

fn model_json(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": OWNER})
}

/// `GET /v1/models`.
pub(super) async fn list_models(
    State(state): State<Arc<AppState>>,
    Extension(catalog): Extension<Arc<Catalog>>,
    headers: HeaderMap,
) -> Result<Response, V1Error> {
    credentialed(&state, &headers).await?;
    let data: Vec<Value> = catalog.models.iter().map(|id| model_json(id)).collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{id}`; ids may hold slashes (`org/model`).
pub(super) async fn get_model(
    State(state): State<Arc<AppState>>,
    Extension(catalog): Extension<Arc<Catalog>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, V1Error> {
    credentialed(&state, &headers).await?;
    if !catalog.offers(&id) {
        return Err(V1Error::model_not_found(&id));
    }
    Ok(Json(model_json(&id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_the_configured_model_then_the_allowed_ones() {
        let catalog = Catalog::from_settings(&Settings {
            openai_model: "gpt-a".into(),
            allowed_models: " gpt-b, ,gpt-a,org/model-c ".into(),
            ..Settings::default()
        });
        assert_eq!(catalog.models, ["gpt-a", "gpt-b", "org/model-c"]);
        assert!(catalog.offers("org/model-c"));
        assert!(!catalog.offers("gpt-c"));
    }
}

//! `GET /v1/models`, `GET /v1/models/{id}`, and `POST /v1/models/{id}/load|unload`.

use axum::extract::{Path, State};
use axum::Json;
use hearth_api::models::{ModelCard, ModelList};
use hearth_api::ApiError;
use serde_json::{json, Value};

use crate::error::HttpError;
use crate::models::{ModelState, ModelView};
use crate::state::AppState;

fn card(view: ModelView) -> ModelCard {
    let error = match &view.state {
        ModelState::Failed(cause) => Some(cause.clone()),
        _ => None,
    };
    ModelCard {
        id: view.id,
        object: "model".into(),
        created: 0,
        owned_by: "hearth".into(),
        state: view.state.as_str().into(),
        error,
        capabilities: std::iter::once("text")
            .chain(view.vision.then_some("vision"))
            .map(str::to_owned)
            .collect(),
        placement: view.placement,
    }
}

pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: state.models.list().into_iter().map(card).collect(),
    })
}

/// A lookup: names the model however the id spells it, and never adds a model.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, HttpError> {
    Ok(Json(card(state.models.view(&id)?)))
}

/// `{id}/load` or `{id}/unload` (ids may hold a slash: `org/name`).
pub async fn action(
    State(state): State<AppState>,
    Path(path): Path<String>,
) -> Result<Json<Value>, HttpError> {
    let (id, verb) = path
        .rsplit_once('/')
        .filter(|(_, verb)| matches!(*verb, "load" | "unload"))
        .ok_or_else(|| {
            ApiError::not_found("use POST /v1/models/{id}/load or /v1/models/{id}/unload")
        })?;
    let (id, changed) = if verb == "load" {
        let id = state.models.resolve(id)?;
        let was_loaded = state.models.loaded_worker(&id).is_some();
        state.models.load(&id).await?;
        (id, !was_loaded)
    } else {
        (id.to_owned(), state.models.unload(id).await?)
    };
    let view = state.models.view(&id)?;
    Ok(Json(json!({
        "id": view.id,
        "object": "model",
        "state": view.state.as_str(),
        "changed": changed,
    })))
}

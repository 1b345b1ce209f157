//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::{Path, State};
use axum::Json;
use hearth_api::models::{ModelCard, ModelList};
use hearth_api::ApiError;

use crate::error::HttpError;
use crate::models::ModelState;
use crate::state::AppState;

fn card(id: String, state: &ModelState) -> ModelCard {
    ModelCard {
        id,
        object: "model".into(),
        created: 0,
        owned_by: "hearth".into(),
        state: state.as_str().into(),
    }
}

pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: state
            .models
            .list()
            .into_iter()
            .map(|(id, s)| card(id, &s))
            .collect(),
    })
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, HttpError> {
    let resolved = state.models.resolve(&id)?;
    let (id, model_state) = state
        .models
        .list()
        .into_iter()
        .find(|(m, _)| *m == resolved)
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    Ok(Json(card(id, &model_state)))
}

//! `/v1/models`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// hearth extension: loaded, loading, unloaded or failed.
    pub state: String,
    /// hearth extension: why the last load failed, while `state` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// hearth extension: what the model takes in: `text`, and `vision` when it was served
    /// with a vision projector (chat messages may then hold images).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// hearth extension: where a loaded model's layers went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<ModelPlacement>,
}

/// Layers on GPUs, of all of them, and the GPU memory the model's worker took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelPlacement {
    pub gpu_layers: u32,
    pub layers: u32,
    pub vram_bytes: u64,
}

//! A chat request's images on their way to the model's worker: loaded and checked
//! (`media`), then packed into shared memory (or inline, where there is none).

use hearth_api::chat::ImagePart;
use hearth_api::ApiError;
use hearth_ipc::MediaBytes;

use crate::media::{self, MediaError, MediaPolicy};
use crate::state::AppState;

/// How images are loaded and handed over.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub policy: MediaPolicy,
    /// Pass images in sealed memfds (false: inline in the frame, as where memfds fail).
    pub shared_memory: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            policy: MediaPolicy::default(),
            shared_memory: true,
        }
    }
}

/// Load a request's images for `model`, in order, all at once: the first failure (in
/// request order) is the request's error, naming the part.
pub async fn load(
    state: &AppState,
    model: &str,
    parts: &[ImagePart],
) -> Result<Vec<MediaBytes>, ApiError> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    if !state.models.has_vision(model)? {
        // Named by the first image part's type, as other unsupported parts are.
        let part = parts[0].param.trim_end_matches(".image_url");
        return Err(ApiError::model_not_multimodal().with_param(Some(&format!("{part}.type"))));
    }
    let config = &state.media;
    config
        .policy
        .check_count(parts.len())
        .map_err(|e| ApiError::invalid_value("messages", e.to_string()))?;
    let loads = parts
        .iter()
        .map(|part| media::load_image(&part.url, &config.policy));
    let loaded = futures_util::future::join_all(loads).await;
    let mut images = Vec::with_capacity(parts.len());
    for (part, result) in parts.iter().zip(loaded) {
        let image = result.map_err(|e| match e {
            MediaError::Internal(_) => ApiError::internal(format!("loading {}: {e}", part.param)),
            e => ApiError::invalid_value(&part.param, e.to_string()),
        })?;
        images.push(pack(&image.bytes, config.shared_memory));
    }
    Ok(images)
}

fn pack(bytes: &[u8], shared_memory: bool) -> MediaBytes {
    if shared_memory {
        match MediaBytes::shared(bytes) {
            Ok(shared) => return shared,
            Err(e) => tracing::warn!(%e, "no shared memory for an image; sending it inline"),
        }
    }
    MediaBytes::inline(bytes)
}

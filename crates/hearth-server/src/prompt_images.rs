//! A chat request's images on their way to the model's worker: loaded and checked
//! (`media`), then packed into shared memory (or inline, where there is none).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hearth_api::chat::ImagePart;
use hearth_api::ApiError;
use hearth_ipc::media::Keep;
use hearth_ipc::MediaBytes;

use crate::media::{self, MediaError, MediaPolicy};
use crate::state::AppState;

/// How images are loaded and handed over.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub policy: MediaPolicy,
    /// Pass images in sealed memfds (false: inline in the frame, as where memfds fail).
    pub shared_memory: bool,
    /// Image bytes all requests together may hold while they wait and run: images are
    /// loaded before a request queues, so without a bound a queue full of image requests
    /// holds gigabytes.
    pub max_bytes_in_flight: usize,
}

/// Image bytes held by requests now, server-wide.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A request's share of `IN_FLIGHT`, given back when the last holder of its prompt (the
/// request, or its retry) is done.
struct Held(usize);

impl Drop for Held {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(self.0, Ordering::Relaxed);
    }
}

fn memory_busy() -> ApiError {
    ApiError::unavailable("the server holds as many images as it may right now; try again shortly")
        .with_retry_after(1)
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            policy: MediaPolicy::default(),
            shared_memory: true,
            max_bytes_in_flight: 1 << 30,
        }
    }
}

/// Load a request's images for `model`, in order, all at once: the first failure (in
/// request order) is the request's error, naming the part. The `Keep` holds the request's
/// share of the image memory budget: it goes with the prompt.
pub async fn load(
    state: &AppState,
    model: &str,
    parts: &[ImagePart],
) -> Result<(Vec<MediaBytes>, Keep), ApiError> {
    if parts.is_empty() {
        return Ok((Vec::new(), Keep::default()));
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
    if IN_FLIGHT.load(Ordering::Relaxed) >= config.max_bytes_in_flight {
        return Err(memory_busy());
    }
    let loads = parts
        .iter()
        .map(|part| media::load_image(&part.url, &config.policy));
    let loaded = futures_util::future::join_all(loads).await;
    let mut images = Vec::with_capacity(parts.len());
    for (part, result) in parts.iter().zip(loaded) {
        let image = result.map_err(|e| match e {
            MediaError::Internal(_) => ApiError::internal(format!("loading {}: {e}", part.param)),
            MediaError::Busy => ApiError::unavailable(e.to_string()).with_retry_after(1),
            e => ApiError::invalid_value(&part.param, e.to_string()),
        })?;
        images.push(image.bytes);
    }
    let bytes: usize = images.iter().map(Vec::len).sum();
    if bytes > config.max_bytes_in_flight {
        // Waiting would not help: it is over the whole budget on its own.
        return Err(ApiError::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!(
                "this request's images are {bytes} bytes, more than the {} the server holds \
                 for all requests together (--max-image-memory)",
                config.max_bytes_in_flight
            ),
        )
        .with_param(Some("messages")));
    }
    let held = Held(bytes);
    if IN_FLIGHT.fetch_add(bytes, Ordering::Relaxed) + bytes > config.max_bytes_in_flight {
        return Err(memory_busy());
    }
    let packed = images
        .iter()
        .map(|bytes| pack(bytes, config.shared_memory))
        .collect();
    Ok((packed, Keep(Some(Arc::new(held)))))
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

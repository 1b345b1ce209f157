//! State shared by every route.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::models::ModelManager;

#[derive(Clone)]
pub struct AppState {
    pub models: Arc<ModelManager>,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// How long a handler waits for the whole request body.
    pub body_timeout: Duration,
    /// The Responses API's stored responses (`previous_response_id`).
    pub responses: Arc<crate::response_store::ResponseStore>,
    /// How chat requests' images are loaded and handed to workers.
    pub media: Arc<crate::prompt_images::MediaConfig>,
}

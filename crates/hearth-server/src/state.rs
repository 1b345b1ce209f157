//! State shared by every route.

use std::sync::Arc;
use std::time::Duration;

use crate::models::ModelManager;

#[derive(Clone)]
pub struct AppState {
    pub models: Arc<ModelManager>,
    pub request_timeout: Duration,
}

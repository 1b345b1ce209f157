//! hearth's orchestrator: HTTP, validation, model management, worker supervision.

mod access;
pub mod admission;
pub mod config;
mod error;
mod extract;
mod fit;
mod footprint;
mod gate;
mod generate;
mod guard;
mod http;
pub mod hub;
mod ids;
pub mod media;
mod memory;
mod metrics;
mod models;
mod observe;
mod openapi;
mod prompt_images;
pub mod registry;
mod response_store;
mod routes;
mod server;
mod state;
mod supervisor;
mod worker;

pub use admission::{Priority, QueueLimits};
pub use config::{
    AccessConfig, HttpConfig, LifecycleConfig, ModelSpec, RateLimit, ServerConfig, WorkerSettings,
};
pub use memory::{tier_defaults, total_ram_bytes};
pub use prompt_images::MediaConfig;
pub use server::serve;

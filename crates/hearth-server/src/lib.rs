//! hearth's orchestrator: HTTP, validation, model management, worker supervision.

mod access;
pub mod admission;
pub mod config;
mod error;
mod extract;
mod gate;
mod generate;
mod ids;
mod metrics;
mod models;
mod observe;
mod routes;
mod server;
mod state;
mod worker;

pub use admission::{Priority, QueueLimits};
pub use config::{AccessConfig, ModelSpec, RateLimit, ServerConfig, WorkerSettings};
pub use server::serve;

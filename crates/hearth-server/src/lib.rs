//! hearth's orchestrator: HTTP, validation, model management, worker supervision.

pub mod config;
mod error;
mod generate;
mod ids;
mod models;
mod routes;
mod server;
mod state;
mod worker;

pub use config::{ModelSpec, ServerConfig, WorkerSettings};
pub use server::serve;

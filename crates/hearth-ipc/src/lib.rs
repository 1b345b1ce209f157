//! The orchestrator⇄worker protocol: typed messages in length-prefixed JSON frames over a
//! Unix socket. Many requests share one connection, told apart by id.

mod codec;
mod messages;

pub use codec::{
    read_frame, read_frame_async, write_frame, write_frame_async, FrameIds, Framed, Incoming,
    MAX_FRAME_BYTES,
};
pub use messages::{FromWorker, PromptSpec, ToWorker, WorkerReady, WorkerStatus};

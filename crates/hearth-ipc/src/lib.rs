//! The orchestrator⇄worker protocol: typed messages in length-prefixed JSON frames over a
//! Unix socket. Many requests share one connection, told apart by id.

mod codec;
pub mod media;
mod messages;

pub use codec::{
    encode_frame, read_frame, read_frame_async, write_frame, write_frame_async, FrameIds, Framed,
    Incoming, MAX_FRAME_BYTES,
};
pub use media::MediaBytes;
pub use messages::{
    image_marker_text, FromWorker, GpuMemory, PromptSpec, ToWorker, WorkerReady, WorkerStatus,
};

//! Response ids and the system fingerprint.

pub fn chat_completion_id() -> String {
    format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32)
}

pub fn completion_id() -> String {
    format!("cmpl-{:024x}", rand::random::<u128>() >> 32)
}

/// Identifies the server build that produced a response.
pub fn system_fingerprint() -> String {
    format!("fp_hearth_{}", env!("CARGO_PKG_VERSION").replace('.', "_"))
}

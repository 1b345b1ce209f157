//! Response ids and the system fingerprint.

pub fn chat_completion_id() -> String {
    format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32)
}

/// Anthropic's message ids.
pub fn message_id() -> String {
    format!("msg_{:024x}", rand::random::<u128>() >> 32)
}

/// The Responses API's response ids.
pub fn response_id() -> String {
    format!("resp_{:032x}", rand::random::<u128>())
}

/// A Responses output item's id: `msg_…`, `fc_…` (function call) or `rs_…` (reasoning).
pub fn output_item_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

pub fn completion_id() -> String {
    format!("cmpl-{:024x}", rand::random::<u128>() >> 32)
}

/// Identifies the server build that produced a response.
pub fn system_fingerprint() -> String {
    format!("fp_hearth_{}", env!("CARGO_PKG_VERSION").replace('.', "_"))
}

/// A fresh `x-request-id`.
pub fn request_id() -> String {
    format!("req-{:032x}", rand::random::<u128>())
}

/// A client's `x-request-id` is kept only when it is 1–128 characters of
/// `[A-Za-z0-9._:-]`: it goes into logs and back into a header, so nothing else gets in.
pub fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_ids_are_plain() {
        for ok in [
            "a",
            "trace-42",
            "0af7651916cd43dd8448eb211c80319c",
            "x.y_z:1-2",
        ] {
            assert!(valid_request_id(ok), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            "a b",
            "x\u{e9}",
            "a/b",
            "a\"b",
            "<script>",
            long.as_str(),
        ] {
            assert!(!valid_request_id(bad), "{bad}");
        }
        assert!(valid_request_id(&"a".repeat(128)));
        assert!(valid_request_id(&request_id()));
    }
}

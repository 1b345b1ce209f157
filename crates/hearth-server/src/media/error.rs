//! Why an image could not be loaded, worded for the client that sent the URL.
//!
//! Messages may repeat the client's own URL (shortened), the limits and what the checks found
//! (a status code, an address class, dimensions), but never anything a fetched server sent
//! beyond a well-formed content type: a response body or an odd header could carry anything.

use std::time::Duration;

/// Longest URL (or other client text) repeated in a message.
const MAX_ECHO_CHARS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("invalid image URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("image URL scheme '{scheme}' is not supported; use https, http or a data URL")]
    UnsupportedScheme { scheme: String },
    #[error("image URLs with a user name or password are not supported")]
    CredentialsInUrl,
    #[error("invalid image data URL: {0}")]
    BadDataUrl(&'static str),
    #[error(
        "local image files are disabled on this server (start it with --allowed-media-dir to \
         allow files under one directory)"
    )]
    LocalFilesDisabled,
    #[error("image file '{url}' is outside the allowed media directory")]
    OutsideMediaDir { url: String },
    #[error("image file '{url}' was not found")]
    FileNotFound { url: String },
    #[error("image file '{url}' is not a regular file")]
    NotARegularFile { url: String },
    #[error("image file '{url}' could not be read")]
    FileUnreadable { url: String },
    #[error(
        "image URL host '{host}' {class}, which is not allowed (a server operator can allow \
         the host with --allowed-media-hosts)"
    )]
    AddressNotAllowed { host: String, class: String },
    #[error("image URL host '{host}' could not be resolved")]
    Dns { host: String },
    #[error("connecting to image URL host '{host}' timed out after {}", secs(*.limit))]
    ConnectTimeout { host: String, limit: Duration },
    #[error("could not connect to image URL host '{host}'")]
    ConnectFailed { host: String },
    #[error("fetching the image failed ({0})")]
    Transport(&'static str),
    #[error("loading the image took longer than {}", secs(*.limit))]
    Timeout { limit: Duration },
    #[error("fetching image URL '{url}' returned HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("image URL redirected more than {limit} times")]
    TooManyRedirects { limit: u32 },
    #[error("image URL gave an unusable redirect: {0}")]
    BadRedirect(String),
    /// A hop after a redirect failed: said without the target, which the image server chose
    /// (it may name internal hosts, paths or signed queries).
    #[error("image URL '{url}' redirected {reason}")]
    RedirectFailed { url: String, reason: String },
    #[error("image URL returned content type {content_type}, not an image")]
    NotImageContentType { content_type: String },
    #[error("image is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("content is not a PNG, JPEG, WebP or GIF image")]
    NotAnImage,
    #[error("{kind} image header is truncated or invalid")]
    BadHeader { kind: &'static str },
    #[error(
        "image is {width}x{height} pixels; each side may be at most {limit} pixels (and at \
         least 1)"
    )]
    BadDimensions { width: u32, height: u32, limit: u32 },
    #[error("request has {count} images; at most {limit} are allowed")]
    TooManyImages { count: usize, limit: usize },
    #[error("internal error while loading the image")]
    Internal(String),
    /// Every fetch slot stayed busy for the whole deadline (many slow image servers at once).
    #[error("the server is busy fetching other images; try again shortly")]
    Busy,
}

impl MediaError {
    /// This error, met after `original` redirected, in words that do not repeat the target.
    pub(crate) fn after_redirect(self, original: &url::Url) -> MediaError {
        let reason = match self {
            MediaError::AddressNotAllowed { class, .. } => format!("to a host that {class}"),
            MediaError::Dns { .. } => "to a host that could not be resolved".into(),
            MediaError::ConnectTimeout { .. } | MediaError::ConnectFailed { .. } => {
                "to a host that could not be reached".into()
            }
            MediaError::HttpStatus { status, .. } => {
                format!("to a URL that returned HTTP status {status}")
            }
            MediaError::InvalidUrl { .. } => "to an unusable URL".into(),
            MediaError::UnsupportedScheme { .. } => "to an unsupported scheme".into(),
            MediaError::CredentialsInUrl => "to a URL with a user name or password".into(),
            // The rest name limits and findings, never the target.
            other => return other,
        };
        MediaError::RedirectFailed {
            url: echo_url(original),
            reason,
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Client text cut to at most [`MAX_ECHO_CHARS`] characters, control characters replaced, so
/// a message stays one readable line.
pub(crate) fn shorten(text: &str) -> String {
    let clean = |c: char| if c.is_control() { '?' } else { c };
    if text.chars().count() <= MAX_ECHO_CHARS {
        return text.chars().map(clean).collect();
    }
    let mut out: String = text.chars().take(MAX_ECHO_CHARS - 1).map(clean).collect();
    out.push('…');
    out
}

/// A URL for a message: shortened, without any user name or password it carried.
pub(crate) fn echo_url(url: &url::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return shorten(url.as_str());
    }
    let mut bare = url.clone();
    // Neither can fail for an http(s) URL, the only kind that reaches here with credentials.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    shorten(bare.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_caps_length_and_strips_control_characters() {
        assert_eq!(shorten("a\nb"), "a?b");
        let long = "x".repeat(500);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_ECHO_CHARS);
        assert!(short.ends_with('…'));
    }

    #[test]
    fn echoed_urls_drop_credentials() {
        let url = url::Url::parse("http://user:secret@example.com/a.png").unwrap();
        assert_eq!(echo_url(&url), "http://example.com/a.png");
    }
}

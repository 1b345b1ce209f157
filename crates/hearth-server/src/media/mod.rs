//! Images named by chat `image_url` parts, loaded safely and within bounds.
//!
//! One URL becomes validated image bytes ([`load_image`]): a `data:` URL is decoded, a
//! `file://` URL (or absolute path) is read only from under the configured directory, and an
//! `http(s)` URL is fetched with SSRF checks (every address classified, connections pinned to
//! the checked addresses, redirects followed by hand and re-checked). Whatever the source, the
//! bytes are capped, their format is sniffed from magic bytes (never trusted from a declared
//! type) and the dimensions are read from the header alone, before anything decodes pixels.

mod addr;
mod data_url;
mod error;
mod fetch;
mod local;
mod sniff;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use error::MediaError;
pub use sniff::ImageKind;

/// What image loading may do: sizes, sources, time.
#[derive(Debug, Clone)]
pub struct MediaPolicy {
    /// Largest image accepted, in bytes, after any base64 decoding.
    pub max_image_bytes: usize,
    /// Most images in one request (the caller counts them: [`MediaPolicy::check_count`]).
    pub max_images: usize,
    /// Largest width and largest height accepted, each on its own.
    pub max_pixels_side: u32,
    /// `file://` URLs and absolute paths are read only from under this directory (both sides
    /// canonicalized); `None` refuses local files.
    pub allowed_media_dir: Option<PathBuf>,
    /// Host names (case-insensitive, exact) or IP addresses that may resolve to non-public
    /// addresses (loopback, private, ...). Every other host must resolve to public addresses only.
    pub allowed_media_hosts: Vec<String>,
    /// Time to open one TCP connection.
    pub connect_timeout: Duration,
    /// Time for one whole load: DNS, every redirect and the body.
    pub total_timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: u32,
}

impl Default for MediaPolicy {
    fn default() -> Self {
        MediaPolicy {
            max_image_bytes: 10 * 1024 * 1024,
            max_images: 5,
            max_pixels_side: 4096,
            allowed_media_dir: None,
            allowed_media_hosts: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(20),
            max_redirects: 3,
        }
    }
}

impl MediaPolicy {
    /// Refuses a request carrying more than `max_images` images.
    pub fn check_count(&self, count: usize) -> Result<(), MediaError> {
        if count > self.max_images {
            return Err(MediaError::TooManyImages {
                count,
                limit: self.max_images,
            });
        }
        Ok(())
    }
}

/// Image bytes whose format and dimensions have been checked (the pixels are not decoded yet).
#[derive(Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub bytes: Vec<u8>,
    pub format: ImageKind,
    pub width: u32,
    pub height: u32,
}

// The bytes would flood a log line; their length is what matters there.
impl std::fmt::Debug for LoadedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedImage")
            .field("bytes", &self.bytes.len())
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// Loads the image named by one `image_url` URL: `data:`, `http(s)://`, or (only with
/// `allowed_media_dir`) `file://` and absolute paths.
///
/// All of it runs on the blocking pool (DNS, sockets and file reads are blocking calls), and
/// the whole load is bounded by `total_timeout` here too: a DNS lookup, which nothing inside
/// can interrupt, then finishes in the background while the caller already has its answer.
pub async fn load_image(url: &str, policy: &MediaPolicy) -> Result<LoadedImage, MediaError> {
    let started = tokio::time::Instant::now();
    // Network fetches hold a blocking thread for as long as the far server takes: cap how
    // many run at once, so slow servers cannot take the whole blocking pool and starve
    // everything else on it (data: URLs, files, other clients' fetches). Waiting for a turn
    // counts against the image's own deadline, and says so.
    // Anything that is not plainly local takes a turn (the URL parser forgives stray control
    // characters and whitespace, so this decides conservatively).
    let start = url.trim_start_matches(|c: char| c.is_ascii_control() || c == ' ');
    let head = start.get(..5).unwrap_or(start).to_ascii_lowercase();
    let local = head.starts_with("data:") || head.starts_with("file:") || start.starts_with('/');
    let _turn = if local {
        None
    } else {
        match tokio::time::timeout(policy.total_timeout, FETCHES.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            Ok(Err(_)) => return Err(MediaError::Internal("fetch limiter closed".into())),
            Err(_) => return Err(MediaError::Busy),
        }
    };
    let remaining = policy.total_timeout.saturating_sub(started.elapsed());
    let owned_url = url.to_owned();
    let owned_policy = MediaPolicy {
        total_timeout: remaining,
        ..policy.clone()
    };
    let task = tokio::task::spawn_blocking(move || load_blocking(&owned_url, &owned_policy));
    match tokio::time::timeout(remaining, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(MediaError::Internal(join.to_string())),
        Err(_) => Err(MediaError::Timeout {
            limit: policy.total_timeout,
        }),
    }
}

/// Image URLs fetched at once, server-wide (tokio's blocking pool holds 512 threads).
const MAX_CONCURRENT_FETCHES: usize = 64;
static FETCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_FETCHES);

fn load_blocking(url: &str, policy: &MediaPolicy) -> Result<LoadedImage, MediaError> {
    let bytes = read_source(url.trim(), policy)?;
    let (format, width, height) = sniff::inspect(&bytes, policy.max_pixels_side)?;
    Ok(LoadedImage {
        bytes,
        format,
        width,
        height,
    })
}

/// The raw bytes of whichever source the URL names, capped at `max_image_bytes`.
fn read_source(url: &str, policy: &MediaPolicy) -> Result<Vec<u8>, MediaError> {
    // An absolute path, but not "//host/..." (a scheme-relative URL, which has no meaning here).
    if url.starts_with('/') && !url.starts_with("//") {
        return local::read_path(std::path::Path::new(url), url, policy);
    }
    // The scheme is matched before full parsing: a data URL can be megabytes long and needs
    // none of the URL parser's normalisation.
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
    if scheme.eq_ignore_ascii_case("data") {
        return data_url::decode(url, policy.max_image_bytes);
    }
    let parsed = url::Url::parse(url).map_err(|e| MediaError::InvalidUrl {
        url: error::shorten(url),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "http" | "https" => fetch::fetch(parsed, policy),
        "file" => local::read_file_url(&parsed, policy),
        other => Err(MediaError::UnsupportedScheme {
            scheme: error::shorten(other),
        }),
    }
}

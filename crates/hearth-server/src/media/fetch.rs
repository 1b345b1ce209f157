//! `http(s)` images, fetched without letting a client reach what it should not (SSRF).
//!
//! Each hop's host is resolved here and every address classified (`addr`); ureq is then given
//! a resolver that answers with exactly those checked addresses, so a DNS answer cannot change
//! between the check and the connect (rebinding). A name with any non-public address is
//! refused whole rather than filtered: mixed answers are how rebinding attacks start.
//! Hosts in `allowed_media_hosts` skip the classification.
//!
//! Redirects are followed here, not by ureq, so each `Location` goes through the same checks.
//! Only http(s) targets are followed, and https -> http is refused: a downgrade would let a
//! network attacker substitute the image the client pointed at over TLS.
//!
//! The environment's proxy settings are never used: a proxy would connect on our behalf to
//! addresses we never checked.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use url::{Host, Url};

use super::addr;
use super::error::{echo_url, shorten};
use super::{MediaError, MediaPolicy};

/// Formats the loader accepts, so a server negotiating on Accept picks one of them.
const ACCEPT: &str = "image/png, image/jpeg, image/webp, image/gif";
/// Buffer for streaming the body; the cap and the clock are checked after each read.
const CHUNK: usize = 64 * 1024;

/// The body of an http(s) image URL, following redirects, at most `max_image_bytes`.
pub fn fetch(url: Url, policy: &MediaPolicy) -> Result<Vec<u8>, MediaError> {
    let original = url.clone();
    let mut redirects = 0;
    fetch_following(url, policy, &mut redirects).map_err(|e| {
        if redirects > 0 {
            e.after_redirect(&original)
        } else {
            e
        }
    })
}

fn fetch_following(
    url: Url,
    policy: &MediaPolicy,
    redirects: &mut u32,
) -> Result<Vec<u8>, MediaError> {
    let deadline = Instant::now() + policy.total_timeout;
    let mut url = url;
    loop {
        let addrs = vet(&url, policy)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(MediaError::Timeout {
                limit: policy.total_timeout,
            });
        }
        let response = match agent(&url, addrs, policy, remaining)
            .request_url("GET", &url)
            .set("Accept", ACCEPT)
            // Identity keeps Content-Length meaningful for the early size check.
            .set("Accept-Encoding", "identity")
            .call()
        {
            Ok(response) => response,
            Err(ureq::Error::Status(status, _)) => {
                return Err(MediaError::HttpStatus {
                    url: echo_url(&url),
                    status,
                })
            }
            Err(ureq::Error::Transport(t)) => return Err(transport_error(&t, &url, policy)),
        };
        match response.status() {
            200..=299 => return read_body(response, policy, deadline),
            301 | 302 | 303 | 307 | 308 => {
                if *redirects >= policy.max_redirects {
                    return Err(MediaError::TooManyRedirects {
                        limit: policy.max_redirects,
                    });
                }
                *redirects += 1;
                url = next_location(&url, response.header("location"))?;
            }
            status => {
                return Err(MediaError::HttpStatus {
                    url: echo_url(&url),
                    status,
                })
            }
        }
    }
}

/// The checked socket addresses for `url`, or why it may not be fetched. Resolves the host
/// (a blocking DNS lookup) but connects to nothing, so tests can run it on any address.
pub(super) fn vet(url: &Url, policy: &MediaPolicy) -> Result<Vec<SocketAddr>, MediaError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(MediaError::UnsupportedScheme {
            scheme: shorten(url.scheme()),
        });
    }
    let echo = echo_url(url);
    let invalid = |reason: &str| MediaError::InvalidUrl {
        url: echo.clone(),
        reason: reason.into(),
    };
    let host = url.host().ok_or_else(|| invalid("it has no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid("it has no port"))?;
    let host_text = host_text(&host);
    let (addrs, literal) = match host {
        Host::Ipv4(ip) => (vec![SocketAddr::new(IpAddr::V4(ip), port)], true),
        Host::Ipv6(ip) => (vec![SocketAddr::new(IpAddr::V6(ip), port)], true),
        Host::Domain(name) => {
            let dns = || MediaError::Dns {
                host: shorten(name),
            };
            let found: Vec<SocketAddr> =
                (name, port).to_socket_addrs().map_err(|_| dns())?.collect();
            if found.is_empty() {
                return Err(dns());
            }
            (found, false)
        }
    };
    if !host_allowed(&host, policy) {
        for sock in &addrs {
            if let Err(class) = addr::classify(sock.ip()) {
                return Err(MediaError::AddressNotAllowed {
                    host: shorten(&host_text),
                    class: class.describe(literal),
                });
            }
        }
    }
    // After the address check, so the address is what a credentials-laden URL is refused
    // for when both apply (`http://user:pw@127.0.0.1/`).
    if !url.username().is_empty() || url.password().is_some() {
        return Err(MediaError::CredentialsInUrl);
    }
    Ok(addrs)
}

/// A host as an operator would write it in `allowed_media_hosts`: IPv6 without brackets.
fn host_text(host: &Host<&str>) -> String {
    match host {
        Host::Domain(name) => name.to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    }
}

/// Whether the operator allowed this host to reach non-public addresses. IP entries compare
/// as addresses (any spelling); names compare case-insensitively and exactly (no suffixes).
fn host_allowed(host: &Host<&str>, policy: &MediaPolicy) -> bool {
    policy.allowed_media_hosts.iter().any(|entry| {
        let entry = entry.trim().trim_start_matches('[').trim_end_matches(']');
        match (host, entry.parse::<IpAddr>()) {
            (Host::Ipv4(ip), Ok(allowed)) => IpAddr::V4(*ip) == allowed,
            (Host::Ipv6(ip), Ok(allowed)) => IpAddr::V6(*ip) == allowed,
            (Host::Domain(name), Err(_)) => name.eq_ignore_ascii_case(entry),
            _ => false,
        }
    })
}

/// ureq resolves through this: only the addresses `vet` checked, only for that host.
struct PinnedResolver {
    netloc: String,
    addrs: Vec<SocketAddr>,
}

impl ureq::Resolver for PinnedResolver {
    fn resolve(&self, netloc: &str) -> io::Result<Vec<SocketAddr>> {
        if netloc == self.netloc {
            Ok(self.addrs.clone())
        } else {
            Err(io::Error::other("host was not checked"))
        }
    }
}

/// A one-hop agent: no proxy, no redirects, connections only to `addrs`.
fn agent(
    url: &Url,
    addrs: Vec<SocketAddr>,
    policy: &MediaPolicy,
    remaining: Duration,
) -> ureq::Agent {
    // ureq asks for "host:port" with the URL's host text (IPv6 in brackets).
    let netloc = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    );
    ureq::AgentBuilder::new()
        .try_proxy_from_env(false)
        .redirects(0)
        .timeout_connect(policy.connect_timeout.min(remaining))
        .timeout(remaining)
        .resolver(PinnedResolver { netloc, addrs })
        .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Where a redirect leads, if it is somewhere this loader may follow.
fn next_location(current: &Url, location: Option<&str>) -> Result<Url, MediaError> {
    // The Location value is the server's text: it is never repeated to the client.
    let location =
        location.ok_or_else(|| MediaError::BadRedirect("it has no Location header".into()))?;
    let next = current
        .join(location.trim())
        .map_err(|_| MediaError::BadRedirect("its Location is not a valid URL".into()))?;
    match (current.scheme(), next.scheme()) {
        ("https", "http") => Err(MediaError::BadRedirect(
            "redirects from https to http are not followed".into(),
        )),
        (_, "http" | "https") => Ok(next),
        (_, other) => Err(MediaError::BadRedirect(format!(
            "redirects to '{}' URLs are not followed",
            shorten(other)
        ))),
    }
}

/// Streams the body with the byte cap and the deadline checked as it arrives.
fn read_body(
    response: ureq::Response,
    policy: &MediaPolicy,
    deadline: Instant,
) -> Result<Vec<u8>, MediaError> {
    check_content_type(response.header("content-type"))?;
    let max = policy.max_image_bytes;
    let too_large = || MediaError::TooLarge { limit: max };
    let declared = response
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let timeout = || MediaError::Timeout {
        limit: policy.total_timeout,
    };
    let mut body = Vec::with_capacity(declared.map_or(CHUNK, |len| len as usize));
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; CHUNK];
    loop {
        // ureq's own deadline bounds each read; this bounds a body dripped in small reads.
        if Instant::now() >= deadline {
            return Err(timeout());
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(body),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(e.kind()) => return Err(timeout()),
            Err(_) => {
                return Err(MediaError::Transport(
                    "the connection broke during the body",
                ))
            }
        };
        if body.len() + n > max {
            return Err(too_large());
        }
        body.extend_from_slice(&buf[..n]);
    }
}

/// `image/*`, a generic binary type, or none: the magic bytes decide the rest. Refusing
/// other types early saves downloading, say, an HTML page up to the size cap.
fn check_content_type(header: Option<&str>) -> Result<(), MediaError> {
    let Some(value) = header else {
        return Ok(());
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let lower = essence.to_ascii_lowercase();
    if lower.starts_with("image/")
        || lower == "application/octet-stream"
        || lower == "binary/octet-stream"
    {
        return Ok(());
    }
    // Repeated only when it looks like a media type, never arbitrary server text.
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let well_formed = lower.len() <= 80
        && lower
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s));
    Err(MediaError::NotImageContentType {
        content_type: if well_formed {
            lower
        } else {
            "(malformed)".into()
        },
    })
}

fn is_timeout(kind: io::ErrorKind) -> bool {
    matches!(kind, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}

/// A ureq transport failure in the client's terms; ureq's own text (which may quote the
/// server) goes only to the debug log.
fn transport_error(t: &ureq::Transport, url: &Url, policy: &MediaPolicy) -> MediaError {
    tracing::debug!(error = %t, "image fetch failed");
    let host = shorten(url.host_str().unwrap_or_default());
    let timed_out = std::error::Error::source(t)
        .and_then(|e| e.downcast_ref::<io::Error>())
        .is_some_and(|e| is_timeout(e.kind()));
    match t.kind() {
        ureq::ErrorKind::Dns => MediaError::Dns { host },
        ureq::ErrorKind::ConnectionFailed if timed_out => MediaError::ConnectTimeout {
            host,
            limit: policy.connect_timeout,
        },
        ureq::ErrorKind::ConnectionFailed if t.message() == Some("tls connection init failed") => {
            MediaError::Transport("the TLS handshake failed")
        }
        ureq::ErrorKind::ConnectionFailed => MediaError::ConnectFailed { host },
        ureq::ErrorKind::Io if timed_out => MediaError::Timeout {
            limit: policy.total_timeout,
        },
        ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader => {
            MediaError::Transport("the server's response was not valid HTTP")
        }
        _ => MediaError::Transport("a connection error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        for ok in [
            None,
            Some("image/png"),
            Some("IMAGE/JPEG; charset=binary"),
            Some("application/octet-stream"),
            Some("binary/octet-stream"),
        ] {
            assert!(check_content_type(ok).is_ok(), "{ok:?}");
        }
        let err = check_content_type(Some("text/html; charset=utf-8")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image URL returned content type text/html, not an image"
        );
        let err = check_content_type(Some("<script>alert(1)</script>")).unwrap_err();
        assert!(err.to_string().contains("(malformed)"), "{err}");
    }

    #[test]
    fn allowed_hosts_match_exactly() {
        let policy = MediaPolicy {
            allowed_media_hosts: vec!["Images.Local".into(), "[::1]".into(), "10.0.0.5".into()],
            ..MediaPolicy::default()
        };
        let allowed = |u: &str| host_allowed(&Url::parse(u).unwrap().host().unwrap(), &policy);
        assert!(allowed("http://images.local/x"));
        assert!(allowed("http://IMAGES.LOCAL/x"));
        assert!(!allowed("http://a.images.local/x"));
        assert!(!allowed("http://images.local.evil.example/x"));
        assert!(allowed("http://[0:0::1]/x"));
        assert!(allowed("http://10.0.0.5/x"));
        assert!(allowed("http://0x0a000005/x"));
        assert!(!allowed("http://10.0.0.6/x"));
    }

    #[test]
    fn redirects_go_only_to_http_and_never_down_to_http() {
        let https = Url::parse("https://a.example/dir/x.png").unwrap();
        let http = Url::parse("http://a.example/dir/x.png").unwrap();
        let next = |from: &Url, to: &str| next_location(from, Some(to)).map(|u| u.to_string());
        assert_eq!(
            next(&https, "y.png").unwrap(),
            "https://a.example/dir/y.png"
        );
        assert_eq!(
            next(&https, "//b.example/z").unwrap(),
            "https://b.example/z"
        );
        assert_eq!(
            next(&http, "https://b.example/").unwrap(),
            "https://b.example/"
        );
        for (from, to) in [
            (&https, "http://a.example/x.png"),
            (&http, "file:///etc/passwd"),
            (&http, "data:image/png;base64,AAAA"),
            (&http, "ftp://a.example/x.png"),
            (&http, "http://[zz/"),
        ] {
            let err = next(from, to).unwrap_err();
            assert!(matches!(err, MediaError::BadRedirect(_)), "{to}: {err}");
            assert!(!err.to_string().contains("passwd"), "{err}");
        }
        assert!(matches!(
            next_location(&http, None),
            Err(MediaError::BadRedirect(_))
        ));
    }
}

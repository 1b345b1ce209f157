//! Checks every request passes before anything reads its body, and one error vocabulary for
//! every response:
//! - the `Host` header must name this server (DNS rebinding: a page on `evil.example` whose
//!   name later resolves to 127.0.0.1 is same-origin with us for the browser, but its
//!   requests still say `Host: evil.example`);
//! - a `Content-Length` past `--max-body-bytes` gets 413 at once, the body unread;
//! - a POST must say `Content-Type: application/json`, so a web page cannot drive the API
//!   with a "simple" cross-site POST (text/plain, a form, multipart), which browsers send
//!   without asking CORS first;
//! - an error response axum or tower produced as plain text (405, path and other extractor
//!   rejections) is rewritten into the OpenAI shape.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hearth_api::ApiError;

use crate::access::ErrorCode;
use crate::error::HttpError;

pub struct Guard {
    /// None: any host (`--allowed-hosts '*'`).
    hosts: Option<AllowedHosts>,
    max_body_bytes: usize,
}

impl Guard {
    pub fn new(bind_host: &str, allowed: &[String], max_body_bytes: usize) -> Arc<Guard> {
        let hosts = if allowed.iter().any(|h| h.trim() == "*") {
            None
        } else {
            let mut names: Vec<&str> = allowed.iter().map(String::as_str).collect();
            names.push(bind_host);
            let machine = machine_name();
            if let Some(name) = &machine {
                names.push(name);
                // `box` for `box.example.lan`, as people type it.
                if let Some((short, _)) = name.split_once('.') {
                    names.push(short);
                }
            }
            Some(AllowedHosts::new(names))
        };
        Arc::new(Guard {
            hosts,
            max_body_bytes,
        })
    }
}

/// Middleware, before routing: the Host, then the Content-Length.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    if let Some(hosts) = &guard.hosts {
        if let Some(host) = request_hosts(&request).find(|h| !hosts.allows(h)) {
            return HttpError(ApiError::host_not_allowed(&host)).into_response();
        }
    }
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n > guard.max_body_bytes as u64) {
        return HttpError(ApiError::body_too_large(guard.max_body_bytes)).into_response();
    }
    next.run(request).await
}

/// Route middleware for POST routes (`routes/mod.rs`; after routing, so a wrong path or
/// method still gets 404 or 405): a POST must declare a JSON body.
pub async fn require_json(request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        let content_type = request.headers().get(header::CONTENT_TYPE);
        if !content_type.is_some_and(is_json) {
            let got = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            return HttpError(ApiError::unsupported_media_type(got.as_deref())).into_response();
        }
    }
    next.run(request).await
}

/// `application/json`, with or without parameters, in any case.
fn is_json(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The hosts a request names, without ports: the authority of an absolute-form target and
/// the `Host` header. Neither for HTTP/1.0 clients that send no `Host`: they pass.
fn request_hosts(request: &Request) -> impl Iterator<Item = String> + '_ {
    let authority = request.uri().authority().map(|a| a.host().to_owned());
    let header = request.headers().get(header::HOST).map(|value| {
        let text = String::from_utf8_lossy(value.as_bytes());
        strip_port(text.trim()).to_owned()
    });
    authority.into_iter().chain(header)
}

/// `name:8080` → `name`, `[::1]:8080` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Host names the server answers to. IP literals (v4, bracketed v6), `localhost` and
/// `*.localhost` always pass: a rebinding attack needs a domain name the attacker controls.
struct AllowedHosts {
    exact: Vec<String>,
    /// `*.example.com` entries, kept as `.example.com`.
    suffixes: Vec<String>,
}

impl AllowedHosts {
    fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> AllowedHosts {
        let mut exact = vec!["localhost".to_owned()];
        let mut suffixes = vec![".localhost".to_owned()];
        for name in names {
            let name = normalize(name);
            if name.is_empty() {
                continue;
            }
            match name.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => suffixes.push(suffix.to_owned()),
                _ => exact.push(name),
            }
        }
        AllowedHosts { exact, suffixes }
    }

    fn allows(&self, host: &str) -> bool {
        let host = normalize(host);
        if host.parse::<Ipv4Addr>().is_ok() {
            return true;
        }
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return inner.parse::<Ipv6Addr>().is_ok();
        }
        self.exact.contains(&host)
            || self
                .suffixes
                .iter()
                .any(|suffix| host.ends_with(suffix.as_str()))
    }
}

/// Lower case, no trailing dot (`localhost.` is `localhost`).
fn normalize(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// This machine's host name.
fn machine_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|file| std::fs::read_to_string(file).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// Middleware: any error response that is not already OpenAI-shaped JSON (axum's 405 with
/// its empty body, its plain-text extractor rejections, anything tower adds) gets the
/// shape, with the original message where there was one. Other headers (`Allow`) stay.
pub async fn shape_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json || response.extensions().get::<ErrorCode>().is_some() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let allow = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::method_not_allowed(method.as_str(), &path, allow)
        }
        StatusCode::NOT_FOUND => ApiError::not_found(
            text.unwrap_or_else(|| format!("Invalid URL ({} {path})", method.as_str())),
        ),
        status => {
            let message = text.unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_owned()
            });
            let kind = if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            };
            ApiError::new(status.as_u16(), kind, None, message)
        }
    };
    let mut shaped = HttpError(error).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_default_to_local_names_and_ip_literals() {
        let hosts = AllowedHosts::new(["0.0.0.0", "box.lan", "*.corp.example"]);
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "[::1]",
            "[fe80::1]",
            "localhost",
            "LOCALHOST.",
            "app.localhost",
            "box.lan",
            "a.corp.example",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "corp.example",
            "box.lan.evil",
            "[evil]",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }

    #[test]
    fn ports_come_off() {
        assert_eq!(strip_port("localhost:8080"), "localhost");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("a.example:x"), "a.example:x");
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }
}

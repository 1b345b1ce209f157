//! Who may call the API and how often: bearer API keys (compared in constant time) and a
//! rate limit per key, or per client address when no keys are set. `/health*` and the chat
//! page's files (`GET /`, `/ui/*`) are always open;
//! `/metrics` needs a key but is not rate limited.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use hearth_api::ApiError;
use subtle::ConstantTimeEq;

use crate::config::{AccessConfig, RateLimit};
use crate::error::HttpError;

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct Gate {
    api_keys: Vec<String>,
    limiter: Option<(KeyedLimiter, RateLimit)>,
}

impl Gate {
    pub fn new(config: &AccessConfig) -> Arc<Gate> {
        let limiter = config.rate_limit.and_then(|limit| {
            let per_minute = NonZeroU32::new(limit.per_minute)?;
            let burst = NonZeroU32::new(limit.burst.max(1))?;
            let quota = Quota::per_minute(per_minute).allow_burst(burst);
            let limiter = RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>();
            Some((limiter, limit))
        });
        Arc::new(Gate {
            api_keys: config.api_keys.clone(),
            limiter,
        })
    }

    /// The index of the matching key. Every key is compared, so timing does not tell which
    /// prefix matched.
    fn key_index(&self, given: &str) -> Option<usize> {
        let mut found = None;
        for (index, key) in self.api_keys.iter().enumerate() {
            if bool::from(key.as_bytes().ct_eq(given.as_bytes())) {
                found = Some(index);
            }
        }
        found
    }

    /// Forget idle clients now and then, so the limiter's map does not grow without bound.
    pub fn start_housekeeping(self: &Arc<Self>) {
        if self.limiter.is_none() {
            return;
        }
        let gate = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(gate) = gate.upgrade() else { break };
                if let Some((limiter, _)) = &gate.limiter {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        });
    }
}

/// The key a client sent: `Authorization: Bearer KEY` (OpenAI's SDKs), or `x-api-key: KEY`
/// (Anthropic's).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let key = key.trim();
        if !key.is_empty() {
            return Some(key);
        }
    }
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub async fn check(
    State(gate): State<Arc<Gate>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    // The chat page's files are public (it asks for a key before it calls the API).
    let page = request.method() == Method::GET && (path == "/" || path.starts_with("/ui/"));
    if path == "/health"
        || path.starts_with("/health/")
        || page
        || request.method() == Method::OPTIONS
    {
        return next.run(request).await;
    }
    let client_key = if gate.api_keys.is_empty() {
        format!("ip:{}", client.ip())
    } else {
        match bearer(request.headers()) {
            None => {
                return HttpError(ApiError::unauthorized(
                    "You didn't provide an API key. Send it in the Authorization header \
                     (Authorization: Bearer YOUR_KEY).",
                ))
                .into_response()
            }
            Some(given) => match gate.key_index(given) {
                Some(index) => format!("key:{index}"),
                None => {
                    return HttpError(ApiError::unauthorized("Incorrect API key provided."))
                        .into_response()
                }
            },
        }
    };
    // Scrapes come every few seconds from one address: they are not what the limit is for.
    let Some((limiter, limit)) = gate.limiter.as_ref().filter(|_| path != "/metrics") else {
        return next.run(request).await;
    };
    match limiter.check_key(&client_key) {
        Ok(snapshot) => {
            let remaining = snapshot.remaining_burst_capacity();
            let refill = snapshot.quota().replenish_interval();
            let reset = refill * (limit.burst.max(1) - remaining.min(limit.burst.max(1)));
            let mut response = next.run(request).await;
            add_limit_headers(response.headers_mut(), limit, remaining, reset);
            response
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut response = HttpError(ApiError::rate_limited(
                format!(
                    "Rate limit reached: {} requests per minute. Retry in {}.",
                    limit.per_minute,
                    go_duration(wait)
                ),
                wait.as_secs_f64().ceil() as u64,
            ))
            .into_response();
            add_limit_headers(response.headers_mut(), limit, 0, wait);
            response
        }
    }
}

/// OpenAI's `x-ratelimit-*-requests` headers.
fn add_limit_headers(headers: &mut HeaderMap, limit: &RateLimit, remaining: u32, reset: Duration) {
    headers.insert(
        "x-ratelimit-limit-requests",
        HeaderValue::from(limit.per_minute),
    );
    headers.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(remaining),
    );
    if let Ok(value) = HeaderValue::from_str(&go_duration(reset)) {
        headers.insert("x-ratelimit-reset-requests", value);
    }
}

/// Durations as OpenAI writes them in headers: `20ms`, `1.5s`, `6m0s`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openai_headers() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn only_listed_keys_match() {
        let gate = Gate::new(&AccessConfig {
            api_keys: vec!["sk-one".into(), "sk-two".into()],
            ..AccessConfig::default()
        });
        assert_eq!(gate.key_index("sk-two"), Some(1));
        assert_eq!(gate.key_index("sk-tw"), None);
        assert_eq!(gate.key_index(""), None);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("bearer sk-x"));
        assert_eq!(bearer(&headers), Some("sk-x"));
        headers.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
    }
}

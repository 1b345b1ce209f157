//! The loader end to end, against a live local server where a network is involved: SSRF
//! forms (a hole in the checks shows as a successful fetch), redirects and hostile responses,
//! then the data-URL and local-file sources.

mod http;
mod sources;
mod ssrf;

use super::sniff::samples;
use super::test_server::{response, Reply, TestServer};
use super::*;

fn png_reply() -> Reply {
    Reply::Raw(response(
        "200 OK",
        &[("Content-Type", "image/png")],
        &samples::png(3, 2),
    ))
}

/// A server answering every path with a 3x2 PNG.
async fn png_server() -> TestServer {
    TestServer::start(|_, _| png_reply()).await
}

fn allowing(hosts: &[&str]) -> MediaPolicy {
    MediaPolicy {
        allowed_media_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..MediaPolicy::default()
    }
}

fn fill(template: &str, port: u16) -> String {
    template.replace("{p}", &port.to_string())
}

fn assert_address_refused(url: &str, result: Result<LoadedImage, MediaError>) {
    match result {
        Err(MediaError::AddressNotAllowed { .. }) => {}
        other => panic!("{url}: expected 'address not allowed', got {other:?}"),
    }
}

//! Redirects and responses that real servers get wrong or hostile ones send on purpose.

use std::time::{Duration, Instant};

use super::super::test_server::{chunked, head};
use super::*;

/// Redirects: `/r/N` redirects to `/r/N-1` (relative), `/r/0` is the image, `/to-loopback`
/// redirects to 127.0.0.1 by absolute URL, `/to-file` to a file URL.
async fn redirect_server() -> TestServer {
    TestServer::start(|path, port| {
        let redirect = |status: &str, location: &str| {
            Reply::Raw(response(status, &[("Location", location)], b""))
        };
        if let Some(n) = path.strip_prefix("/r/") {
            let n: u32 = n.parse().unwrap();
            if n == 0 {
                return png_reply();
            }
            let status = [
                "301 Moved",
                "302 Found",
                "303 See Other",
                "307 Temporary",
                "308 Permanent",
            ][n as usize % 5];
            return redirect(status, &format!("/r/{}", n - 1));
        }
        match path {
            "/to-loopback" => redirect("302 Found", &format!("http://127.0.0.1:{port}/r/0")),
            "/to-localhost" => redirect("302 Found", &format!("http://localhost:{port}/r/0")),
            "/to-file" => redirect("302 Found", "file:///etc/passwd"),
            "/to-secret" => redirect("302 Found", "/SECRET-TOKEN/missing?sig=SIGNATURE"),
            "/no-location" => Reply::Raw(response("302 Found", &[], b"")),
            _ => Reply::Raw(response("404 Not Found", &[], b"nope")),
        }
    })
    .await
}

#[tokio::test]
async fn a_redirect_to_a_disallowed_address_is_refused() {
    let server = redirect_server().await;
    let policy = allowing(&["localhost"]);
    let url = fill("http://localhost:{p}/to-loopback", server.port);
    let err = load_image(&url, &policy).await.unwrap_err();
    assert!(
        matches!(&err, MediaError::RedirectFailed { reason, .. } if reason.contains("loopback")),
        "{err}"
    );
    assert!(!err.to_string().contains("127.0.0.1"), "{err}");
    assert_eq!(
        server.hits(),
        1,
        "only the redirecting hop may be requested"
    );
    // The same hop to an allowed host is followed.
    let url = fill("http://localhost:{p}/to-localhost", server.port);
    load_image(&url, &policy).await.unwrap();

    let policy = allowing(&["127.0.0.1"]);
    for (path, want) in [
        ("/to-file", "'file' URLs are not followed"),
        ("/no-location", "no Location"),
        ("/missing", "HTTP status 404"),
        (
            "/to-secret",
            "redirected to a URL that returned HTTP status 404",
        ),
    ] {
        let url = fill(&format!("http://127.0.0.1:{{p}}{path}"), server.port);
        let err = load_image(&url, &policy).await.unwrap_err();
        assert!(err.to_string().contains(want), "{path}: {err}");
        // What the image server chose as the target is never repeated.
        for secret in ["SECRET", "SIGNATURE", "passwd"] {
            assert!(!err.to_string().contains(secret), "{path}: {err}");
        }
    }
}

#[tokio::test]
async fn redirect_chains_are_followed_up_to_the_limit() {
    let server = redirect_server().await;
    let policy = allowing(&["127.0.0.1"]);
    let url = fill("http://127.0.0.1:{p}/r/3", server.port);
    let image = load_image(&url, &policy).await.unwrap();
    assert_eq!(image.width, 3);
    assert_eq!(server.hits(), 4);

    let url = fill("http://127.0.0.1:{p}/r/4", server.port);
    let err = load_image(&url, &policy).await.unwrap_err();
    assert!(
        matches!(err, MediaError::TooManyRedirects { limit: 3 }),
        "{err}"
    );
    assert_eq!(server.hits(), 8, "the fourth redirect is not followed");

    let none = MediaPolicy {
        max_redirects: 0,
        ..policy
    };
    let url = fill("http://127.0.0.1:{p}/r/1", server.port);
    assert!(matches!(
        load_image(&url, &none).await,
        Err(MediaError::TooManyRedirects { limit: 0 })
    ));
}

/// Hostile or broken responses, keyed by path.
async fn hostile_server() -> TestServer {
    TestServer::start(|path, _| {
        let png_type = [("Content-Type", "image/png")];
        match path {
            "/slow" => Reply::Drip {
                head: head(
                    "200 OK",
                    &[("Content-Type", "image/png"), ("Content-Length", "60")],
                ),
                body: samples::png(3, 2),
                every: Duration::from_millis(500),
            },
            "/slow-head" => Reply::Drip {
                head: Vec::new(),
                body: response("200 OK", &png_type, &samples::png(3, 2)),
                every: Duration::from_millis(500),
            },
            // Declares more than the cap; sends only the head.
            "/declared-huge" => Reply::Raw(head(
                "200 OK",
                &[("Content-Type", "image/png"), ("Content-Length", "2000000")],
            )),
            "/chunked-huge" => {
                let mut body = samples::png(3, 2);
                body.resize(300_000, 0);
                Reply::Raw(chunked("200 OK", &png_type, &body, 8192))
            }
            "/unsized-huge" => {
                let mut out = head("200 OK", &png_type);
                out.extend(samples::png(3, 2));
                out.resize(out.len() + 300_000, 0);
                Reply::Raw(out)
            }
            "/chunked-ok" => Reply::Raw(chunked("200 OK", &png_type, &samples::png(3, 2), 7)),
            "/html" => Reply::Raw(response(
                "200 OK",
                &[("Content-Type", "text/html; charset=utf-8")],
                &samples::png(3, 2),
            )),
            "/octet" => Reply::Raw(response(
                "200 OK",
                &[("Content-Type", "application/octet-stream")],
                &samples::png(3, 2),
            )),
            "/untyped" => Reply::Raw(response("200 OK", &[], &samples::png(3, 2))),
            "/lying" => Reply::Raw(response(
                "200 OK",
                &png_type,
                b"<html><script>secret-page-content</script></html>",
            )),
            "/jpeg-as-png" => Reply::Raw(response(
                "200 OK",
                &png_type,
                &samples::encode(ImageKind::Jpeg, 5, 4),
            )),
            "/wide" => Reply::Raw(response("200 OK", &png_type, &samples::png(4097, 1))),
            "/truncated" => Reply::Raw(response("200 OK", &png_type, &samples::png(3, 2)[..20])),
            "/error" => Reply::Raw(response("500 Internal Server Error", &[], b"secret")),
            "/garbage" => Reply::Raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()),
            _ => Reply::Raw(response("404 Not Found", &[], b"")),
        }
    })
    .await
}

fn local_policy() -> MediaPolicy {
    MediaPolicy {
        max_image_bytes: 100_000,
        total_timeout: Duration::from_millis(1500),
        ..allowing(&["127.0.0.1"])
    }
}

async fn get(server: &TestServer, path: &str) -> Result<LoadedImage, MediaError> {
    load_image(
        &format!("http://127.0.0.1:{}{path}", server.port),
        &local_policy(),
    )
    .await
}

#[tokio::test]
async fn slow_responses_hit_the_total_timeout() {
    let server = hostile_server().await;
    for path in ["/slow", "/slow-head"] {
        let start = Instant::now();
        let err = get(&server, path).await.unwrap_err();
        assert!(matches!(err, MediaError::Timeout { .. }), "{path}: {err}");
        assert!(
            start.elapsed() < Duration::from_millis(2500),
            "{path}: took {:?}",
            start.elapsed()
        );
        assert!(err.to_string().contains("1.5 s"), "{err}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let server = hostile_server().await;
    for path in ["/declared-huge", "/chunked-huge", "/unsized-huge"] {
        let err = get(&server, path).await.unwrap_err();
        assert!(
            matches!(err, MediaError::TooLarge { limit: 100_000 }),
            "{path}: {err}"
        );
        assert!(err.to_string().contains("100000 bytes"));
    }
}

#[tokio::test]
async fn content_types_and_magic_bytes() {
    let server = hostile_server().await;
    for path in ["/chunked-ok", "/octet", "/untyped"] {
        let image = get(&server, path)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (image.format, image.width, image.height),
            (ImageKind::Png, 3, 2)
        );
    }
    // The bytes decide the format, not the declared type.
    let image = get(&server, "/jpeg-as-png").await.unwrap();
    assert_eq!(
        (image.format, image.width, image.height),
        (ImageKind::Jpeg, 5, 4)
    );

    let err = get(&server, "/html").await.unwrap_err();
    assert!(
        matches!(err, MediaError::NotImageContentType { .. }),
        "{err}"
    );
    let err = get(&server, "/lying").await.unwrap_err();
    assert!(matches!(err, MediaError::NotAnImage), "{err}");
    assert!(!err.to_string().contains("secret"));
    let err = get(&server, "/wide").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "image is 4097x1 pixels; each side may be at most 4096 pixels (and at least 1)"
    );
    let err = get(&server, "/truncated").await.unwrap_err();
    assert!(
        matches!(err, MediaError::BadHeader { kind: "PNG" }),
        "{err}"
    );
    let err = get(&server, "/error").await.unwrap_err();
    assert!(
        matches!(err, MediaError::HttpStatus { status: 500, .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("secret"));
    let err = get(&server, "/garbage").await.unwrap_err();
    assert!(matches!(err, MediaError::Transport(_)), "{err}");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_failure() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/x.png");
    let err = load_image(&url, &local_policy()).await.unwrap_err();
    assert!(matches!(err, MediaError::ConnectFailed { .. }), "{err}");
}

#[tokio::test]
async fn long_urls_are_shortened_in_messages() {
    let server = hostile_server().await;
    let path = format!("/error?{}", "q".repeat(300));
    let err = get(&server, &path).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains('…') && msg.len() < 200, "{msg}");
}

//! SSRF: every non-public address form refused by default, and fetched once allowed.

use super::*;

/// The host of `url` as an operator would list it (normalised, IPv6 without brackets).
fn host_of(url: &str) -> String {
    let host = url::Url::parse(url).unwrap().host_str().unwrap().to_owned();
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// Names /etc/hosts maps to loopback addresses (this machine's own aliases).
fn loopback_names_from_hosts_file() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<std::net::IpAddr>) else {
            continue;
        };
        if ip.is_loopback() {
            names.extend(fields.map(str::to_owned));
        }
    }
    names
}

/// URL forms for the local test server: (template, reachable). Every one must be refused by
/// default; those marked reachable do connect to the server once their host is allowed, which
/// proves the refusal is the check's doing and not a failed connection.
const LOOPBACK_FORMS: &[(&str, bool)] = &[
    ("http://127.0.0.1:{p}/img.png", true),
    ("http://localhost:{p}/img.png", true),
    ("http://LocalHost:{p}/img.png", true),
    ("HTTP://127.0.0.1:{p}/img.png", true),
    ("http://127.0.0.1.:{p}/img.png", true),
    ("http://0.0.0.0:{p}/img.png", true),
    ("http://0:{p}/img.png", true),
    ("http://2130706433:{p}/img.png", true),
    ("http://0177.0.0.1:{p}/img.png", true),
    ("http://0x7f.0.0.1:{p}/img.png", true),
    ("http://0x7f000001:{p}/img.png", true),
    ("http://0x7F.1:{p}/img.png", true),
    ("http://127.1:{p}/img.png", true),
    ("http://127.0.1:{p}/img.png", true),
    ("http://017700000001:{p}/img.png", true),
    ("http://%31%32%37.0.0.1:{p}/img.png", true),
    ("http://[::ffff:127.0.0.1]:{p}/img.png", true),
    ("http://[::ffff:7f00:1]:{p}/img.png", true),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]:{p}/img.png", true),
    ("http://user:pw@127.0.0.1:{p}/img.png", false),
    ("http://example.com@127.0.0.1:{p}/img.png", false),
    ("http://127.0.0.2:{p}/img.png", false),
    ("http://[::1]:{p}/img.png", false),
    ("http://[::]:{p}/img.png", false),
    ("http://[::127.0.0.1]:{p}/img.png", false),
    ("http://[::ffff:0:7f00:1]:{p}/img.png", false),
    ("http://[64:ff9b::7f00:1]:{p}/img.png", false),
    ("http://[2002:7f00:1::]:{p}/img.png", false),
    ("https://127.0.0.1:{p}/img.png", false),
];

#[tokio::test]
async fn loopback_forms_are_refused_without_a_request() {
    let server = png_server().await;
    let policy = MediaPolicy::default();
    let mut urls: Vec<String> = LOOPBACK_FORMS
        .iter()
        .map(|(t, _)| fill(t, server.port))
        .collect();
    urls.extend(
        loopback_names_from_hosts_file()
            .iter()
            .map(|name| format!("http://{name}:{}/img.png", server.port)),
    );
    for url in &urls {
        assert_address_refused(url, load_image(url, &policy).await);
    }
    assert_eq!(server.hits(), 0, "a refused URL reached the server");

    let err = load_image(&fill("http://127.0.0.1:{p}/", server.port), &policy)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "image URL host '127.0.0.1' is a loopback address, which is not allowed (a server \
         operator can allow the host with --allowed-media-hosts)"
    );
    let err = load_image(&fill("http://localhost:{p}/", server.port), &policy)
        .await
        .unwrap_err();
    assert!(err
        .to_string()
        .contains("'localhost' resolves to a loopback address"));
    let err = load_image(&fill("http://[fe80::1]:{p}/", server.port), &policy)
        .await
        .unwrap_err();
    assert!(err
        .to_string()
        .contains("'fe80::1' is a link-local address"));
}

#[tokio::test]
async fn the_same_forms_are_fetched_once_their_host_is_allowed() {
    let server = png_server().await;
    let mut fetched = 0;
    for (template, reachable) in LOOPBACK_FORMS {
        if !reachable {
            continue;
        }
        let url = fill(template, server.port);
        let policy = allowing(&[&host_of(&url)]);
        let image = load_image(&url, &policy)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            (image.format, image.width, image.height),
            (ImageKind::Png, 3, 2)
        );
        fetched += 1;
    }
    assert_eq!(server.hits(), fetched);
    // Names compare case-insensitively; an IP entry matches any spelling of that address.
    let policy = allowing(&["LOCALHOST", "[::ffff:127.0.0.1]"]);
    for url in [
        "http://localhost:{p}/a.png",
        "http://[::ffff:7f00:1]:{p}/a.png",
    ] {
        let url = fill(url, server.port);
        load_image(&url, &policy)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    // Allowing one host allows no other.
    let policy = allowing(&["localhost"]);
    let url = fill("http://127.0.0.1:{p}/a.png", server.port);
    assert_address_refused(&url, load_image(&url, &policy).await);
}

#[tokio::test]
async fn credentials_in_urls_are_refused_even_for_allowed_hosts() {
    let server = png_server().await;
    let url = fill("http://user:secret@127.0.0.1:{p}/img.png", server.port);
    let err = load_image(&url, &allowing(&["127.0.0.1"]))
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::CredentialsInUrl), "{err}");
    assert!(!err.to_string().contains("secret"));
    assert_eq!(server.hits(), 0);
}

/// Addresses that must never see a connection attempt from these tests (private networks,
/// metadata services): checked with `vet`, which resolves and classifies but connects to
/// nothing.
#[test]
fn non_loopback_private_forms_are_refused_before_connecting() {
    let policy = MediaPolicy::default();
    let forms = [
        ("http://10.0.0.1/", "private"),
        ("http://012.0.0.1/", "private"),
        ("http://0x0a.0.0.1/", "private"),
        ("http://167772161/", "private"),
        ("http://10.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://192.168.1.1:8080/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        (
            "http://[::ffff:169.254.169.254]/latest/meta-data/",
            "link-local",
        ),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::1]/", "unique-local"),
        ("http://[fd00:ec2::254]/", "unique-local"),
        ("http://[fec0::1]/", "site-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://192.0.2.1/", "documentation"),
        ("http://[2001:db8::1]/", "documentation"),
        ("http://198.18.0.1/", "benchmarking"),
        ("http://192.0.0.1/", "IETF"),
        ("http://240.0.0.1/", "reserved"),
        ("http://[2001::1]/", "Teredo"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[64:ff9b::a00:1]/", "private"),
        ("http://[2002:a00:1::]/", "private"),
        ("https://[::ffff:c0a8:101]/", "private"),
    ];
    for (url, class) in forms {
        let err = fetch::vet(&url::Url::parse(url).unwrap(), &policy).unwrap_err();
        assert!(
            matches!(err, MediaError::AddressNotAllowed { .. }) && err.to_string().contains(class),
            "{url}: {err}"
        );
    }
}

#[tokio::test]
async fn other_schemes_and_malformed_urls_are_refused() {
    let server = png_server().await;
    let policy = MediaPolicy::default();
    let cases: Vec<(String, &str)> = vec![
        (
            fill("ftp://127.0.0.1:{p}/img.png", server.port),
            "scheme 'ftp'",
        ),
        (
            fill("gopher://127.0.0.1:{p}/_GET", server.port),
            "scheme 'gopher'",
        ),
        (fill("ws://127.0.0.1:{p}/", server.port), "scheme 'ws'"),
        (fill("dict://127.0.0.1:{p}/", server.port), "scheme 'dict'"),
        ("javascript:alert(1)".into(), "scheme 'javascript'"),
        ("file:///etc/passwd".into(), "--allowed-media-dir"),
        ("/etc/passwd".into(), "--allowed-media-dir"),
        (
            fill("//127.0.0.1:{p}/img.png", server.port),
            "invalid image URL",
        ),
        ("img.png".into(), "invalid image URL"),
        ("http://".into(), "invalid image URL"),
        ("".into(), "invalid image URL"),
        ("data:text/html;base64,PGgxPg==".into(), "not an image type"),
    ];
    for (url, want) in &cases {
        let err = load_image(url, &policy).await.unwrap_err();
        assert!(err.to_string().contains(want), "{url}: {err}");
    }
    assert_eq!(server.hits(), 0);
}

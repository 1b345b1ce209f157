//! The HTTP surface against hostile or sloppy clients: timeouts, the connection cap, early
//! 413, OpenAI-shaped errors for everything, 415 for non-JSON POSTs, the Host check,
//! request-id hygiene, no model entries from lookups, and refused empty API keys. Slow and
//! lying clients are raw TCP sockets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{model_path, sse_data, Server};
use serde_json::{json, Value};

/// A reply read off a raw socket.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts the OpenAI error shape and returns the code.
    fn error_code(&self) -> Option<String> {
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["message"].is_string()
                && error["type"].is_string()
                && error.get("param").is_some()
                && error.get("code").is_some(),
            "not an OpenAI error: {} {:?}",
            self.status,
            self.body
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        error["code"].as_str().map(str::to_owned)
    }
}

fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(address(server)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Read one response (head, then `Content-Length` bytes of body) off the stream.
fn read_reply(stream: &mut TcpStream) -> std::io::Result<RawReply> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let mut body = data[head_end + 4..].to_vec();
    let complete = |body: &[u8]| {
        if chunked {
            body.ends_with(b"0\r\n\r\n")
        } else {
            body.len() >= length
        }
    };
    while !complete(&body) {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if chunked {
        body = dechunk(&body);
    }
    Ok(RawReply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A chunked body's data.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
    out
}

/// One request on its own connection. `Host: 127.0.0.1` unless `headers` name one.
fn request(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawReply {
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        text.push_str("Host: 127.0.0.1\r\n");
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("Connection: close\r\n\r\n");
    text.push_str(body);
    let mut stream = connect(server);
    stream.write_all(text.as_bytes()).unwrap();
    read_reply(&mut stream).unwrap()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Wait until the server closes `stream` (EOF or reset); panics after `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return started.elapsed(),
        }
        assert!(started.elapsed() < limit, "the server kept the connection");
    }
}

#[test]
fn slow_headers_and_idle_connections_are_cut_off() {
    let server = Server::start(&["--header-timeout", "1"]);

    // Slowloris: the head one byte at a time, never finished.
    let mut slow = connect(&server);
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = loop {
        if slow.write_all(b"a").is_err() {
            break started.elapsed();
        }
        match slow.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break started.elapsed(),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still open");
    };
    assert!(closed >= Duration::from_millis(800), "{closed:?}");

    // A connection that sends nothing, and a keep-alive connection after its response.
    let mut silent = connect(&server);
    closed_within(&mut silent, Duration::from_secs(5));
    let mut idle = connect(&server);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut idle).unwrap().status, 200);
    let after = closed_within(&mut idle, Duration::from_secs(5));
    assert!(after >= Duration::from_millis(800), "{after:?}");

    // A stream that outlasts the header timeout is not cut: the timer only runs while the
    // server waits for a request's head.
    let started = Instant::now();
    let raw = server.stream_raw(
        "/v1/completions",
        &json!({"model": "smol", "prompt": "Once upon a time", "max_tokens": 300,
                "logit_bias": {"0": -100, "1": -100, "2": -100}, "stream": true}),
    );
    assert!(started.elapsed() > Duration::from_secs(1));
    assert_eq!(sse_data(&raw).last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn a_stalled_body_gets_408() {
    let server = Server::start(&["--body-timeout", "1"]);
    let mut stream = connect(&server);
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
        )
        .unwrap();
    let started = Instant::now();
    let reply = read_reply(&mut stream).unwrap();
    let waited = started.elapsed();
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_eq!(reply.error_code().as_deref(), Some("request_timeout"));
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(reply.header("connection"), Some("close"));
    closed_within(&mut stream, Duration::from_secs(2));
}

#[test]
fn connections_past_the_cap_wait_for_a_free_one() {
    let server = Server::start(&["--max-connections", "2", "--header-timeout", "20"]);
    let keep_alive = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = connect(&server);
            stream.write_all(keep_alive).unwrap();
            assert_eq!(read_reply(&mut stream).unwrap().status, 200);
            stream
        })
        .collect();
    let mut third = connect(&server);
    third.write_all(keep_alive).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 16];
    let early = third.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the third connection was served at once: {early:?}"
    );
    drop(held.remove(0));
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(read_reply(&mut third).unwrap().status, 200);
}

#[test]
fn a_lying_content_length_gets_413_before_any_body() {
    let server = Server::start(&["--max-body-bytes", "1000"]);
    for (method, path) in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/models/smol/load"),
        ("GET", "/v1/models"),
        ("GET", "/nowhere"),
    ] {
        let mut stream = connect(&server);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 1000000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let reply = read_reply(&mut stream).unwrap();
        assert_eq!(reply.status, 413, "{method} {path}: {reply:?}");
        assert_eq!(reply.error_code().as_deref(), Some("request_too_large"));
        assert!(reply.header("x-request-id").is_some());
        closed_within(&mut stream, Duration::from_secs(2));
    }
    // Within the limit is fine.
    let body = json!({"model": "smol", "prompt": "x".repeat(900), "max_tokens": 1}).to_string();
    assert!(body.len() <= 1000);
    let reply = request(&server, "POST", "/v1/completions", &[JSON], &body);
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn every_error_is_openai_shaped() {
    let server = Server::start(&[]);
    let reply = request(&server, "GET", "/v2/nothing", &[], "");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code().as_deref(), Some("not_found"));
    assert_eq!(
        reply.json()["error"]["message"],
        "Invalid URL (GET /v2/nothing)"
    );
    // A POST to nowhere is a 404 too, whatever its Content-Type.
    assert_eq!(
        request(&server, "POST", "/v2/nothing", &[], "x").status,
        404
    );

    for (method, path, allow) in [
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models", "GET"),
        ("PUT", "/v1/models/smol", "GET"),
    ] {
        let reply = request(&server, method, path, &[], "");
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.error_code().as_deref(), Some("method_not_allowed"));
        let allowed = reply.header("allow").unwrap_or_default();
        assert!(
            allowed.contains(allow),
            "{method} {path}: Allow {allowed:?}"
        );
        assert!(reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(method));
    }

    // A path parameter that is not UTF-8 once decoded.
    let reply = request(&server, "GET", "/v1/models/%ff%fe", &[], "");
    assert_eq!(reply.status, 400, "{reply:?}");
    reply.error_code();
    let reply = request(&server, "POST", "/v1/models/%ff%fe/load", &[JSON], "");
    assert_eq!(reply.status, 400, "{reply:?}");
    reply.error_code();

    // Not JSON: 415 whatever the body, naming what to send.
    let body = r#"{"model": "smol", "prompt": "hi", "max_tokens": 1}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        for path in [
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/models/smol/load",
        ] {
            let headers: Vec<(&str, &str)> = content_type
                .map(|c| ("Content-Type", c))
                .into_iter()
                .collect();
            let reply = request(&server, "POST", path, &headers, body);
            assert_eq!(reply.status, 415, "{content_type:?} {path}");
            assert_eq!(
                reply.error_code().as_deref(),
                Some("unsupported_media_type")
            );
            assert!(reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/json"));
        }
    }
    let reply = request(
        &server,
        "POST",
        "/v1/completions",
        &[("Content-Type", "Application/JSON; charset=utf-8")],
        body,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = request(&server, "POST", "/v1/models/smol/unload", &[JSON], "");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["state"], "unloaded");
}

#[test]
fn the_host_header_must_name_this_server() {
    let server = Server::start(&["--allowed-hosts", "a.example,*.b.example"]);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let port = address(&server).rsplit(':').next().unwrap().to_owned();
    let with_port = |host: &str| format!("{host}:{port}");
    let status = |host: &str, path: &str| request(&server, "GET", path, &[("Host", host)], "");
    for ok in [
        with_port("127.0.0.1"),
        with_port("[::1]"),
        "10.0.0.7".to_owned(),
        with_port("localhost"),
        with_port("app.localhost"),
        with_port(hostname.trim()),
        with_port("a.example"),
        "x.b.example".to_owned(),
    ] {
        assert_eq!(status(&ok, "/v1/models").status, 200, "{ok}");
    }
    for bad in [
        with_port("evil.example"),
        "localhost.evil.example".to_owned(),
        "b.example".to_owned(),
    ] {
        for path in ["/v1/models", "/health"] {
            let reply = status(&bad, path);
            assert_eq!(reply.status, 403, "{bad} {path}");
            assert_eq!(reply.error_code().as_deref(), Some("host_not_allowed"));
        }
    }
    // HTTP/1.0 without a Host header.
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /v1/models HTTP/1.0\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut stream).unwrap().status, 200);

    let open = Server::start(&["--allowed-hosts", "*"]);
    let reply = request(&open, "GET", "/v1/models", &[("Host", "evil.example")], "");
    assert_eq!(reply.status, 200);
}

#[test]
fn client_request_ids_are_kept_only_when_plain() {
    let server = Server::start(&[]);
    let id_for = |value: &str| {
        request(&server, "GET", "/health", &[("X-Request-Id", value)], "")
            .header("x-request-id")
            .unwrap()
            .to_owned()
    };
    for ok in ["trace-42", "a.b_c:d-e", &"x".repeat(128)] {
        assert_eq!(id_for(ok), ok);
    }
    for bad in [
        "two words",
        "a/b",
        "<script>",
        "caf\u{e9}",
        &"x".repeat(129),
    ] {
        let id = id_for(bad);
        assert!(id.starts_with("req-") && id != bad, "{bad:?} -> {id}");
    }
}

/// A Hugging Face cache (`models--org--name/{refs,snapshots,blobs}`) whose blob links to
/// the default model.
fn fake_hub_cache(root: &Path, repo: &str, file: &str) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo_dir.join("snapshots").join(revision);
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), revision).unwrap();
    let blob = repo_dir.join("blobs").join("5f1e2d");
    std::os::unix::fs::symlink(model_path().canonicalize().unwrap(), &blob).unwrap();
    std::os::unix::fs::symlink("../../blobs/5f1e2d", snapshot.join(file)).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-http-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn differently_spelled_hub_ids_are_one_model_and_lookups_add_none() {
    let cache = temp_dir("hub");
    fake_hub_cache(&cache, "acme/tiny-GGUF", "tiny.Q4_1.gguf");
    let model = format!("smol={}", model_path().display());
    let server = Server::launch(
        &["--model", &model],
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    let count = || server.get("/v1/models").1["data"].as_array().unwrap().len();
    let spellings = [
        "acme/tiny-GGUF",
        "acme/tiny-GGUF:Q4_1",
        "acme/tiny-GGUF:q4_1",
        "acme/tiny-GGUF:Q4",
        "acme/tiny-GGUF:tiny.Q4_1.gguf",
        "acme/tiny-GGUF:tiny",
    ];
    for round in 0..10 {
        for id in spellings {
            let (status, card) = server.get(&format!("/v1/models/{id}"));
            assert_eq!(status, 200, "{id}: {card}");
            assert_eq!(card["state"], "unloaded", "{round} {id}");
        }
    }
    assert_eq!(count(), 1, "GETs added models");
    let (status, _) = server.post("/v1/models/acme/tiny-GGUF:q4_1/unload", &json!({}));
    assert_eq!(status, 200);
    assert_eq!(count(), 1, "unload added a model");

    // Requests in every spelling use one entry (the first spelling's).
    for id in spellings {
        let (status, body) = server.post(
            "/v1/completions",
            &json!({"model": id, "prompt": "The sky is", "max_tokens": 1}),
        );
        assert_eq!(status, 200, "{id}: {body}");
    }
    let (_, list) = server.get("/v1/models");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smol", "acme/tiny-GGUF"]);
    let (_, card) = server.get("/v1/models/acme/tiny-GGUF:TINY.Q4_1.gguf");
    assert_eq!(
        card["error"]["code"], "model_not_found",
        "exact file names match exactly"
    );
    let (_, card) = server.get("/v1/models/acme/tiny-GGUF:Q4_1");
    assert_eq!(card["id"], "acme/tiny-GGUF");
    assert_eq!(card["state"], "loaded");
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn empty_api_keys_are_refused_at_start() {
    let model = format!("smol={}", model_path().display());
    let state = temp_dir("keys");
    let keys_file = state.join("keys");
    std::fs::write(&keys_file, "\n# only a comment\n").unwrap();
    let keys_file = keys_file.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 4] = [
        (&["--api-key", ""], &[]),
        (&["--api-key", "sk-good", "--api-key", "  "], &[]),
        (&[], &[("HEARTH_API_KEYS", ",")]),
        (&["--api-key", "sk-good", "--api-key-file", keys_file], &[]),
    ];
    for (args, env) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["serve", "--port", "0", "--model", &model])
            .args(args)
            .envs(env.iter().copied())
            .env("HEARTH_STATE_DIR", &state)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} {env:?} started");
        assert!(
            stderr.contains("empty") || stderr.contains("no API keys"),
            "{args:?} {env:?}: {stderr}"
        );
        assert!(!stderr.contains("listening"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn shutdown_finishes_streams_and_does_not_wait_for_idle_connections() {
    let mut server = Server::start(&["--preload", "--shutdown-grace", "30"]);
    let mut idle = connect(&server);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut idle).unwrap().status, 200);

    let url = server.url("/v1/completions");
    let stream = std::thread::spawn(move || {
        let response = ureq::post(&url)
            .send_json(json!({"model": "smol", "prompt": "Once upon a time",
                              "max_tokens": 150, "stream": true,
                              "logit_bias": {"0": -100, "1": -100, "2": -100}}))
            .unwrap();
        let mut text = String::new();
        response.into_reader().read_to_string(&mut text).unwrap();
        text
    });
    common::wait_until("the stream to run", Duration::from_secs(10), || {
        server.worker_running("smol") == Some(1)
    });
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let text = stream.join().unwrap();
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the idle connection held the shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    closed_within(&mut idle, Duration::from_secs(1));
}

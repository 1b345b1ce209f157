//! Process isolation: workers are named, cancelled work stops, crashed and hung workers are
//! replaced, and shutdown leaves nothing behind.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn long_chat(stream: bool) -> serde_json::Value {
    json!({
        "model": "smol",
        "messages": [{"role": "user", "content": "Write a very long essay about the history of bread."}],
        "max_tokens": 900,
        "temperature": 0.8,
        "seed": 1,
        "logit_bias": {"2": -100, "0": -100, "4": -100},
        "stream": stream,
    })
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

#[test]
fn workers_are_named_after_their_model() {
    let server = Server::start(&["--preload"]);
    let pid = server.worker_pid("smol").expect("preloaded worker");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with("hearth-worker-smol\0"), "{cmdline:?}");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "hearth-worker-s", "the kernel keeps 15 bytes");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ppid = status.lines().find(|l| l.starts_with("PPid:")).unwrap();
    assert_eq!(
        ppid.split_whitespace().nth(1).unwrap(),
        server.pid().to_string()
    );
}

#[test]
fn a_disconnected_client_stops_its_generation() {
    let server = Server::start(&["--preload", "--parallel", "1"]);
    for stream in [true, false] {
        let agent = ureq::AgentBuilder::new().build();
        let url = server.url("/v1/chat/completions");
        let body = long_chat(stream);
        // Read before the request goes out: read after, a fast acceptance was already in it.
        let accepted_before = server.metric_sum("hearth:prompt_tokens_total");
        let handle = std::thread::spawn(move || {
            let response = agent
                .post(&url)
                .timeout(Duration::from_secs(3))
                .send_json(body);
            if let Ok(response) = response {
                // Read one event, then hang up.
                let mut reader = BufReader::new(response.into_reader());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
            }
        });
        handle.join().unwrap();
        // The worker accepted the request (its prompt was counted) before the client left.
        // (Polling `running` for 1 raced with a fast hang-up: the sequence could start and
        // be dropped between two polls.)
        assert!(server.metric_sum("hearth:prompt_tokens_total") > accepted_before);
        wait_until(
            "the worker to drop the sequence",
            Duration::from_secs(10),
            || server.worker_running("smol") == Some(0),
        );
    }
    // The slot is free for the next request.
    let (status, _) = server.post(
        "/v1/chat/completions",
        &json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
    );
    assert_eq!(status, 200);
}

#[test]
fn a_killed_worker_fails_its_requests_fast_and_is_replaced() {
    let server = Server::start(&["--preload"]);
    let pid = server.worker_pid("smol").unwrap();

    let url = server.url("/v1/chat/completions");
    let plain = std::thread::spawn({
        let url = url.clone();
        move || {
            let started = Instant::now();
            let result = ureq::post(&url).send_json(long_chat(false));
            (
                result.err().map(|e| match e {
                    ureq::Error::Status(code, r) => (code, r.into_string().unwrap_or_default()),
                    other => (0, other.to_string()),
                }),
                started,
            )
        }
    });
    // Both requests must have produced output before the kill: one that has not is retried
    // on the new worker instead (a_request_the_lost_worker_had_not_started_is_retried...).
    let (first_content, content_seen) = std::sync::mpsc::channel();
    let streaming = std::thread::spawn(move || {
        let response = ureq::post(&url).send_json(long_chat(true)).unwrap();
        let mut reader = BufReader::new(response.into_reader());
        let mut text = String::new();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
                let _ = first_content.send(());
            }
            text.push_str(&line);
            line.clear();
        }
        text
    });
    wait_until("both generations to run", Duration::from_secs(10), || {
        server.worker_running("smol") == Some(2)
    });
    content_seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream produced text");
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    signal(pid, nix::sys::signal::Signal::SIGKILL);

    let (error, _) = plain.join().unwrap();
    let (code, body) = error.expect("the non-streaming request fails");
    assert!(killed_at.elapsed() < Duration::from_secs(2));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let text = streaming.join().unwrap();
    let last = sse_data(&text).pop().unwrap();
    assert!(
        last.contains("\"error\""),
        "the stream ends with an error event: {last}"
    );
    assert!(killed_at.elapsed() < Duration::from_secs(3));

    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
    );
    assert_eq!(status, 200, "{body}");
    let new_pid = server.worker_pid("smol").unwrap();
    assert_ne!(new_pid, pid);
    assert!(!process_exists(pid), "the dead worker was reaped");
}

#[test]
fn a_hung_worker_is_killed_and_its_request_gets_504() {
    let server = Server::start(&["--preload", "--request-timeout", "4"]);
    let pid = server.worker_pid("smol").unwrap();
    let url = server.url("/v1/chat/completions");
    let request = std::thread::spawn(move || {
        let started = Instant::now();
        match ureq::post(&url).send_json(long_chat(false)) {
            Err(ureq::Error::Status(code, r)) => {
                (code, r.into_string().unwrap(), started.elapsed())
            }
            other => panic!(
                "expected an error status, got {:?}",
                other.map(|r| r.status())
            ),
        }
    });
    wait_until("the generation to run", Duration::from_secs(10), || {
        server.worker_running("smol") == Some(1)
    });
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let (code, body, elapsed) = request.join().unwrap();
    assert_eq!(code, 504, "{body}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    wait_until(
        "the hung worker to be killed and reaped",
        Duration::from_secs(5),
        || !process_exists(pid),
    );
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
    );
    assert_eq!(
        status,
        200,
        "{body} {:?}",
        server.stderr_lines.lock().unwrap()
    );
    assert_ne!(server.worker_pid("smol"), Some(pid));
}

#[test]
fn sigterm_stops_the_server_and_its_workers() {
    let mut server = Server::start(&["--preload", "--shutdown-grace", "5"]);
    let pid = server.worker_pid("smol").unwrap();
    signal(server.pid(), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until("the worker to exit", Duration::from_secs(5), || {
        !process_exists(pid)
    });
    // Its socket directory is `hearth-{pid}-{start time}`.
    let prefix = format!("hearth-{}-", server.pid());
    let runtime_dirs = [
        Some(std::env::temp_dir()),
        std::env::var_os("XDG_RUNTIME_DIR").map(Into::into),
    ];
    for dir in runtime_dirs.into_iter().flatten() {
        let left = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        assert!(!left, "sockets are removed");
    }
}

//! A real `hearth serve` on a free port with the default model, for integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Start with the default model under the id `smol`, plus any extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let model = format!("smol={}", model_path().display());
        let mut args = vec!["--model", model.as_str()];
        args.extend_from_slice(extra);
        Server::launch(&args, &[])
    }

    /// `hearth serve` with these arguments (models included) and environment, on a free
    /// port, with its own state directory unless the environment names one.
    pub fn launch(args: &[&str], env: &[(&str, &str)]) -> Server {
        // One that exits before listening fails the test with its log (`try_from_child`).
        Server::from_child(
            Server::command(args, env)
                .spawn()
                .expect("the hearth binary runs"),
        )
    }

    /// The command `launch` runs, for tests that adjust it before spawning.
    pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state_dir =
            std::env::temp_dir().join(format!("hearth-test-state-{}-{n}", std::process::id()));
        // A test process that reuses an earlier one's pid would inherit its registry.
        let _ = std::fs::remove_dir_all(&state_dir);
        let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
        command
            // One thread per worker: tests run side by side, some with two workers busy at
            // once, on two cores. More llama.cpp threads than cores makes ggml's spinning
            // barriers wait out whole time slices, and everything slows to a crawl.
            .args([
                "serve",
                "--port",
                "0",
                "--threads",
                "1",
                "--ctx-size",
                "1024",
            ])
            .args(args)
            .env("HEARTH_LOG", "hearth=info")
            .env("HEARTH_STATE_DIR", &state_dir)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Attach to a `hearth serve` started by the caller with stderr piped: wait for its
    /// address and keep its log lines.
    pub fn from_child(child: Child) -> Server {
        Server::try_from_child(child).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `from_child`, or why the server printed no address (with its log).
    fn try_from_child(mut child: Child) -> Result<Server, String> {
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        let _ = tx.send(addr);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(e) => {
                // Exited (or hung) before listening: say why.
                let _ = child.kill();
                let status = child.wait();
                let log = lines.lock().unwrap().join("\n");
                return Err(format!(
                    "The server printed no address ({e}; {status:?}); its log:\n{log}"
                ));
            }
        };
        Ok(Server {
            child,
            base: format!("http://{addr}"),
            stderr_lines: lines,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST JSON; returns (status, body) for success and error statuses alike.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        response(ureq::post(&self.url(path)).send_json(body.clone()))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        response(ureq::get(&self.url(path)).call())
    }

    /// POST a streaming request and return the raw SSE body.
    pub fn stream_raw(&self, path: &str, body: &Value) -> String {
        let response = ureq::post(&self.url(path)).send_json(body.clone()).unwrap();
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        let mut text = String::new();
        response.into_reader().read_to_string(&mut text).unwrap();
        text
    }

    /// The pid of the worker serving `model`, from /health/ready.
    pub fn worker_pid(&self, model: &str) -> Option<u32> {
        let (_, body) = self.get("/health/ready");
        body["models"][model]["pid"].as_u64().map(|p| p as u32)
    }

    pub fn worker_running(&self, model: &str) -> Option<u64> {
        let (_, body) = self.get("/health/ready");
        body["models"][model]["running"].as_u64()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn response(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match result {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("request failed: {e}"),
    }
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        })
        .collect()
}

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn process_exists(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is 'Z'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A response with its headers, for tests that look at more than the JSON.
pub struct Reply {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_owned)
    }
}

/// Any method, any headers; `body` sent as JSON when given.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
    let mut request = ureq::request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some(body) => request.send_json(body.clone()),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request to {url} failed: {e}"),
    };
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| Some((name.clone(), response.header(&name)?.to_owned())))
        .collect();
    Reply {
        status: response.status(),
        headers,
        text: response.into_string().unwrap_or_default(),
    }
}

impl Server {
    /// A sample's value from /metrics: `name{labels}` with labels written as Prometheus
    /// prints them (sorted, e.g. `model="smol",priority="low"`); 0 when absent.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        self.metric_with(name, labels, &[])
    }

    /// The sum of every series of a metric, whatever its labels (e.g. all restarts).
    pub fn metric_sum(&self, name: &str) -> f64 {
        send("GET", &self.url("/metrics"), &[], None)
            .text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn metric_with(&self, name: &str, labels: &str, headers: &[(&str, &str)]) -> f64 {
        let text = send("GET", &self.url("/metrics"), headers, None).text;
        let series = if labels.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{labels}}}")
        };
        text.lines()
            .find_map(|line| line.strip_prefix(&series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

//! Model lifecycle on the real default model: Hugging Face ids from a local cache (offline),
//! shared first loads, failed loads with backoff, idle unload, explicit load/unload, the
//! memory budget with LRU eviction, the orphan sweep of the worker registry, and hang
//! detection by pings. Second and third "models" are the default file under other aliases.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-life-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn alias(name: &str) -> String {
    format!("{name}={}", model_path().display())
}

fn ask(server: &Server, model: &str) -> (u16, Value) {
    server.post(
        "/v1/completions",
        &json!({"model": model, "prompt": "The sky is", "max_tokens": 2}),
    )
}

/// A completion of `max_tokens` that may not end early, on its own thread; yields its status.
fn long_completion(
    server: &Server,
    model: &'static str,
    max_tokens: usize,
) -> std::thread::JoinHandle<u16> {
    let url = server.url("/v1/completions");
    std::thread::spawn(move || {
        ureq::post(&url)
            .send_json(json!({
                "model": model, "prompt": "Once upon a time", "max_tokens": max_tokens,
                "logit_bias": {"0": -100, "1": -100, "2": -100},
            }))
            .map(|r| r.status())
            .unwrap_or(0)
    })
}

fn state_of(server: &Server, model: &str) -> String {
    let (_, list) = server.get("/v1/models");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model)
        .map(|m| m["state"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{model} is not listed: {list}"))
}

/// Lay out a Hugging Face cache (`models--org--name/{refs,snapshots,blobs}`) whose blob is
/// a link to the default model, as `huggingface_hub` would have left it.
fn fake_hub_cache(root: &Path, repo: &str, file: &str) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("snapshots").join(revision)).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), revision).unwrap();
    let blob = repo_dir.join("blobs").join("5f1e2d");
    std::os::unix::fs::symlink(model_path().canonicalize().unwrap(), &blob).unwrap();
    std::os::unix::fs::symlink(
        "../../blobs/5f1e2d",
        repo_dir.join("snapshots").join(revision).join(file),
    )
    .unwrap();
    std::fs::write(
        repo_dir.join("snapshots").join(revision).join("README.md"),
        "card",
    )
    .unwrap();
}

fn workers_of(server_pid: u32, model: &str) -> Vec<u32> {
    let prefix = format!("hearth-worker-{model}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(prefix.as_bytes()))
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("PPid:") && l.ends_with(&format!("\t{server_pid}")))
            })
        })
        .filter(|pid| process_exists(*pid))
        .collect()
}

#[test]
fn hub_ids_resolve_from_the_local_cache_offline() {
    let cache = temp_dir("hub");
    fake_hub_cache(
        &cache,
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    );
    fake_hub_cache(&cache, "acme/tiny-GGUF", "tiny.Q4_1.gguf");
    let env = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let server = Server::launch(
        &["--model", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1"],
        &env,
    );
    let (status, body) = ask(&server, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1");
    assert_eq!(status, 200, "{body}");
    // A cached id the server was not started with is served too (no download on request).
    let (status, body) = ask(&server, "acme/tiny-GGUF");
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&server, "acme/tiny-GGUF"), "loaded");
    let (_, card) = server.get("/v1/models/acme/tiny-GGUF");
    assert_eq!(card["id"], "acme/tiny-GGUF");

    let (status, body) = ask(&server, "acme/missing");
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hearth pull"),
        "{body}"
    );
    for sneaky in [
        "../../etc/passwd",
        "/etc/passwd",
        "acme/../x",
        "acme/tiny-GGUF:../../x",
    ] {
        let (status, body) = ask(&server, sneaky);
        assert_eq!(status, 404, "{sneaky}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found");
    }

    // `hearth pull` finds a cached model without the network, and says why it cannot fetch.
    let pull = |id: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["pull", id])
            .envs(env)
            .output()
            .unwrap()
    };
    let found = pull("acme/tiny-GGUF:Q4_1");
    assert!(found.status.success());
    let path = String::from_utf8(found.stdout).unwrap();
    assert!(path.trim().ends_with("tiny.Q4_1.gguf"), "{path}");
    let missing = pull("acme/missing");
    assert!(!missing.status.success());
    let stderr = String::from_utf8(missing.stderr).unwrap();
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
    let invalid = pull("/etc/passwd");
    assert!(!invalid.status.success());
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn first_requests_share_one_load_and_a_broken_model_backs_off() {
    let dir = temp_dir("broken");
    let broken = dir.join("broken.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&broken, &bytes[..1 << 20]).unwrap();
    let broken_arg = format!("broken={}", broken.display());
    let server = Arc::new(Server::launch(
        &["--model", &alias("smol"), "--model", &broken_arg],
        &[],
    ));

    let clients: Vec<_> = (0..4)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || ask(&server, "smol").0)
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap(), 200);
    }
    assert_eq!(
        server.metric("hearth:model_load_seconds_count", "model=\"smol\""),
        1.0,
        "one load for four first requests"
    );

    let (status, body) = ask(&server, "broken");
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("failed to load"), "{message}");
    assert!(
        workers_of(server.pid(), "broken").is_empty(),
        "no process left behind"
    );
    // Asked again at once: the cause, fast, with when to come back.
    let started = Instant::now();
    let again = send(
        "POST",
        &server.url("/v1/completions"),
        &[],
        Some(&json!({"model": "broken", "prompt": "x", "max_tokens": 1})),
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(again.status, 503);
    assert!(again.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("next try in"));
    assert!(again.header("retry-after").is_some());
    let (_, list) = server.get("/v1/models");
    let card = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "broken")
        .unwrap()
        .clone();
    assert_eq!(card["state"], "failed");
    assert!(card["error"].as_str().is_some());
    // The healthy model is unaffected.
    assert_eq!(ask(&server, "smol").0, 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn idle_models_unload_and_come_back_and_load_unload_work_on_demand() {
    let dir = temp_dir("idle");
    let config = dir.join("hearth.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nid = \"keep\"\npath = \"{}\"\nidle_timeout = 0\nparallel = 1\n",
            model_path().canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    let server = Server::launch(
        &[
            "--config",
            config.to_str().unwrap(),
            "--model",
            &alias("smol"),
            "--idle-timeout",
            "3",
            "--max-loaded-models",
            "2",
        ],
        &[],
    );
    assert_eq!(state_of(&server, "smol"), "unloaded");
    assert_eq!(ask(&server, "keep").0, 200);
    assert_eq!(ask(&server, "smol").0, 200);
    let first = server
        .worker_pid("smol")
        .expect("loaded for the idle timeout after its request");
    let memory = |server: &Server| server.metric("hearth:worker_memory_bytes", "model=\"smol\"");
    assert!(
        memory(&server) > 0.0,
        "a loaded worker's memory is measured"
    );
    wait_until("smol to unload when idle", Duration::from_secs(15), || {
        state_of(&server, "smol") == "unloaded"
    });
    assert_eq!(memory(&server), 0.0, "an unloaded model holds no memory");
    wait_until("its worker to exit", Duration::from_secs(5), || {
        !process_exists(first)
    });
    assert_eq!(
        state_of(&server, "keep"),
        "loaded",
        "idle_timeout = 0 never unloads"
    );
    assert_eq!(
        server.metric(
            "hearth:worker_restarts_total",
            "model=\"smol\",reason=\"crashed\""
        ),
        0.0,
        "an unload is not a restart"
    );
    // The next request loads it again.
    assert_eq!(ask(&server, "smol").0, 200);
    assert_ne!(server.worker_pid("smol").unwrap(), first);

    // On demand.
    let (status, body) = server.post("/v1/models/keep/unload", &json!({}));
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("unloaded")),
        "{body}"
    );
    assert_eq!(body["changed"], true);
    let (status, body) = server.post("/v1/models/keep/load", &json!({}));
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("loaded")),
        "{body}"
    );
    let (status, _) = server.post("/v1/models/nope/load", &json!({}));
    assert_eq!(status, 404);

    // A model with a request in flight is not unloaded.
    let long = long_completion(&server, "keep", 150);
    wait_until("the long request to run", Duration::from_secs(10), || {
        server.metric("hearth:num_requests_running", "model=\"keep\"") == 1.0
    });
    let (status, body) = server.post("/v1/models/keep/unload", &json!({}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "model_busy");
    assert_eq!(long.join().unwrap(), 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn loading_past_the_limits_evicts_the_least_recently_used_idle_model() {
    let server = Server::launch(
        &[
            "--model",
            &alias("a"),
            "--model",
            &alias("b"),
            "--model",
            &alias("c"),
            "--max-loaded-models",
            "2",
            "--memory-wait",
            "1",
        ],
        &[],
    );
    assert_eq!(ask(&server, "a").0, 200);
    assert_eq!(ask(&server, "b").0, 200);
    assert_eq!(ask(&server, "a").0, 200, "a is now the most recently used");
    assert_eq!(ask(&server, "c").0, 200);
    let states: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|m| state_of(&server, m))
        .collect();
    assert_eq!(states, ["loaded", "unloaded", "loaded"]);
    assert_eq!(server.metric("hearth:models_loaded", ""), 2.0);

    // Both loaded models busy: the third waits --memory-wait, then 503 with Retry-After;
    // nothing in use is evicted.
    let (busy_a, busy_c) = (
        long_completion(&server, "a", 400),
        long_completion(&server, "c", 400),
    );
    wait_until("both to run", Duration::from_secs(10), || {
        server.metric("hearth:num_requests_running", "model=\"a\"") == 1.0
            && server.metric("hearth:num_requests_running", "model=\"c\"") == 1.0
    });
    let started = Instant::now();
    let refused = send(
        "POST",
        &server.url("/v1/completions"),
        &[],
        Some(&json!({"model": "b", "prompt": "x", "max_tokens": 1})),
    );
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(refused.header("retry-after").is_some());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(state_of(&server, "a"), "loaded");
    assert_eq!(state_of(&server, "c"), "loaded");
    assert_eq!(busy_a.join().unwrap(), 200);
    assert_eq!(busy_c.join().unwrap(), 200);
}

#[test]
fn the_memory_budget_counts_bytes_not_just_models() {
    // The default model at 1024 tokens x 4 slots is estimated at about 240 MiB: a 400 MiB
    // budget holds one copy, never two.
    let server = Server::launch(
        &[
            "--model",
            &alias("a"),
            "--model",
            &alias("b"),
            "--memory-budget",
            "400MiB",
        ],
        &[],
    );
    assert_eq!(ask(&server, "a").0, 200);
    assert_eq!(ask(&server, "b").0, 200);
    assert_eq!(state_of(&server, "a"), "unloaded");
    assert_eq!(state_of(&server, "b"), "loaded");
    let (_, ready) = server.get("/health/ready");
    let estimate = ready["models"]["b"]["memory_estimate_bytes"]
        .as_u64()
        .unwrap();
    assert!(estimate > 150 << 20 && estimate <= 400 << 20, "{estimate}");

    let tiny = Server::launch(&["--model", &alias("a"), "--memory-budget", "10MiB"], &[]);
    let (status, body) = ask(&tiny, "a");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "memory_budget_exceeded", "{body}");
}

#[test]
fn a_restarted_server_kills_the_workers_a_dead_one_left() {
    let state = temp_dir("registry");
    let env = [
        ("HEARTH_STATE_DIR", state.to_str().unwrap()),
        ("HEARTH_TEST_KEEP_ORPHANS", "1"),
    ];
    let mut first = Server::launch(&["--model", &alias("smol"), "--preload"], &env);
    let orphan = first.worker_pid("smol").unwrap();
    let registry: Value =
        serde_json::from_slice(&std::fs::read(state.join("workers.json")).unwrap()).unwrap();
    assert_eq!(registry[0]["pid"], orphan);
    assert_eq!(registry[0]["orchestrator_pid"], first.pid());
    assert!(registry[0]["start_time"].as_u64().unwrap() > 0);

    // A worker exits by itself when its orchestrator's socket closes; one that is wedged
    // (here: stopped) cannot, and without PDEATHSIG it outlives the orchestrator.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(orphan as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(process_exists(orphan), "left behind on purpose");

    let second = Server::launch(
        &["--model", &alias("smol")],
        &[("HEARTH_STATE_DIR", state.to_str().unwrap())],
    );
    wait_until("the orphan to be killed", Duration::from_secs(5), || {
        !process_exists(orphan)
    });
    let registry: Value =
        serde_json::from_slice(&std::fs::read(state.join("workers.json")).unwrap()).unwrap();
    assert_eq!(registry, json!([]));
    assert_eq!(ask(&second, "smol").0, 200);
    drop(second);
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn a_worker_that_stops_answering_pings_is_killed_and_replaced() {
    let server = Server::launch(
        &[
            "--model",
            &alias("smol"),
            "--preload",
            "--ping-interval",
            "0.2",
            "--hang-timeout",
            "1.5",
        ],
        &[],
    );
    let pid = server.worker_pid("smol").unwrap();
    let stop = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    stop(nix::sys::signal::Signal::SIGSTOP);
    // While it happens, readiness says so.
    let (status, ready) = server.get("/health/ready");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["unresponsive"], json!(["smol"]));
    wait_until(
        "the silent worker to be killed",
        Duration::from_secs(10),
        || !process_exists(pid),
    );
    // Reaping (and counting) follows the kill by a moment.
    wait_until("the restart to be counted", Duration::from_secs(5), || {
        server.metric(
            "hearth:worker_restarts_total",
            "model=\"smol\",reason=\"unresponsive\"",
        ) == 1.0
    });
    let (status, ready) = server.get("/health/ready");
    assert_eq!(status, 200, "{ready}");
    assert!(ready["models"]["smol"]["last_restart"]
        .as_str()
        .unwrap()
        .contains("unresponsive"));
    assert!(server
        .stderr_lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("killing worker") && l.contains("unresponsive")));
    assert_eq!(ask(&server, "smol").0, 200);
    assert_ne!(server.worker_pid("smol").unwrap(), pid);
}

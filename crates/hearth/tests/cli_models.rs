//! `hearth ls`, `show`, `ps` and `rm` against the repository's models, a running server and
//! a Hugging Face cache made for the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn hearth(args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .expect("hearth runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A Hugging Face cache holding `org/tiny` (a copy of the default model as its blob).
fn fake_cache(name: &str) -> PathBuf {
    let cache = std::env::temp_dir().join(format!("hearth-cli-{name}-{}", std::process::id()));
    let repo = cache.join("models--org--tiny");
    std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc").unwrap();
    std::fs::copy(common::model_path(), repo.join("blobs/0123")).unwrap();
    std::os::unix::fs::symlink(
        "../../blobs/0123",
        repo.join("snapshots/abc/tiny-Q4_1.gguf"),
    )
    .unwrap();
    cache
}

#[test]
fn ls_and_show_read_model_files_without_loading_them() {
    let empty = std::env::temp_dir().join("hearth-cli-no-cache");
    let (ok, out, err) = hearth(&["ls", "--json"], &[("HF_HUB_CACHE", &empty)]);
    assert!(ok, "{err}");
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    let smol = list
        .iter()
        .find(|m| m["name"] == "SmolLM2-135M-Instruct.Q4_1")
        .expect("the default model is listed");
    assert_eq!(smol["architecture"], "llama");
    assert_eq!(smol["quantization"], "Q4_1");
    assert_eq!(smol["context_length"], 8192);
    assert_eq!(smol["capabilities"], json!(["completion", "chat"]));
    let (ok, out, _) = hearth(&["ls"], &[("HF_HUB_CACHE", &empty)]);
    assert!(ok && out.starts_with("NAME") && out.contains("SmolLM2-135M-Instruct.Q4_1"));

    let (ok, out, err) = hearth(
        &["show", "--json", "models/SmolLM2-135M-Instruct.Q4_1.gguf"],
        &[],
    );
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["layers"], 30);
    assert!(shown["chat_template"]
        .as_str()
        .unwrap()
        .contains("im_start"));
    let (ok, _, err) = hearth(&["show", "no/such:Q4_K_M"], &[("HF_HUB_CACHE", &empty)]);
    assert!(
        !ok && err.contains("not in the Hugging Face cache"),
        "{err}"
    );
}

#[test]
fn ps_shows_a_running_servers_models() {
    let server = common::Server::start(&["--preload"]);
    let (ok, out, err) = hearth(&["ps", "--url", &server.base], &[]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("MODEL") && lines[1].starts_with("smol"),
        "{out}"
    );
    assert!(lines[1].contains("ready"), "{out}");
    let (ok, out, _) = hearth(&["ps", "--json", "--url", &server.base], &[]);
    assert!(ok);
    let health: Value = serde_json::from_str(&out).unwrap();
    assert!(health["models"]["smol"]["pid"].as_u64().is_some());
    let (ok, _, err) = hearth(&["ps", "--url", "http://127.0.0.1:1"], &[]);
    assert!(!ok && err.contains("no hearth server"), "{err}");
}

#[test]
fn rm_removes_a_cached_model_but_not_while_it_is_loaded() {
    let cache = fake_cache("rm");
    let env = [("HF_HUB_CACHE", cache.as_path())];
    let (ok, out, err) = hearth(&["ls", "--json"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("org/tiny:tiny-Q4_1.gguf"), "{out}");
    // Loaded in a server: refused.
    let server = common::Server::launch(
        &["--model", "org/tiny:Q4_1", "--preload"],
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    let (ok, _, err) = hearth(&["rm", "org/tiny:Q4_1", "--url", &server.base], &env);
    assert!(!ok && err.contains("is loaded"), "{err}");
    assert!(cache.join("models--org--tiny/blobs/0123").exists());
    drop(server);
    // No server: removed, link and blob.
    let (ok, out, err) = hearth(
        &["rm", "org/tiny:Q4_1", "--url", "http://127.0.0.1:1"],
        &env,
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("removed"), "{out}");
    assert!(!cache.join("models--org--tiny/blobs/0123").exists());
    assert!(!cache
        .join("models--org--tiny/snapshots/abc/tiny-Q4_1.gguf")
        .exists());
    let (ok, _, err) = hearth(&["rm", "models/SmolLM2-135M-Instruct.Q4_1.gguf"], &env);
    assert!(!ok && err.contains("yours to delete"), "{err}");
    std::fs::remove_dir_all(&cache).unwrap();
}

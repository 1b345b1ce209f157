//! `hearth run`: one reply to a prompt, and an interactive chat that keeps its history.

use std::io::Write;
use std::process::{Command, Stdio};

fn model() -> String {
    format!(
        "{}/../../models/SmolLM2-135M-Instruct.Q4_1.gguf",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `hearth run` on the default model, greedy and short.
fn hearth_run() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
    let model = model();
    command.args([
        "run",
        "--model",
        &model,
        "--threads",
        "2",
        "--temperature",
        "0",
    ]);
    command.args(["--max-tokens", "24"]);
    command
}

#[test]
fn one_shot_prompt_streams_the_reply() {
    let output = hearth_run()
        .arg("What is the capital of Germany?")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply = String::from_utf8(output.stdout).unwrap();
    assert!(reply.contains("Berlin"), "{reply:?}");
}

#[test]
fn interactive_chat_keeps_history_until_exit() {
    let mut child = hearth_run()
        .arg("--show-prompt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of Germany?\nAnd of France?\n/exit\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.matches(">>> ").count(), 3, "{stdout:?}");
    // The second turn's prompt carries the first exchange.
    let prompts = String::from_utf8(output.stderr).unwrap();
    let second = prompts.rsplit("<|im_start|>system").next().unwrap();
    assert!(
        second.contains("What is the capital of Germany?") && second.contains("And of France?"),
        "{prompts}"
    );
    assert!(
        second.matches("<|im_start|>assistant").count() >= 2,
        "{prompts}"
    );
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "--model", "/nonexistent/model.gguf", "hi"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("not found") && stderr.contains("/nonexistent/model.gguf"),
        "{stderr}"
    );
}

//! A worker never exits because of one frame: a body it cannot decode fails the requests the
//! frame header names, and the worker goes on serving. Driven over the worker's own socket,
//! as the orchestrator does, so nothing in between can filter the frame.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::model_path;
use hearth_api::params::SamplingFields;
use hearth_ipc::{read_frame, write_frame, FromWorker, Incoming, PromptSpec, ToWorker};

fn next(stream: &mut UnixStream) -> FromWorker {
    match read_frame::<_, FromWorker>(stream).expect("the worker is still there") {
        Some(Incoming::Message(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn an_unreadable_frame_fails_its_requests_and_the_worker_serves_on() {
    let dir = std::env::temp_dir().join(format!("hearth-frames-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("w.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "worker",
            "--model-id",
            "smol",
            "--threads",
            "1",
            "--parallel",
            "1",
        ])
        .args(["--ctx-size", "256", "--model"])
        .arg(model_path())
        .arg("--socket")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    assert!(matches!(next(&mut stream), FromWorker::Ready(_)));

    // A body no parser here accepts, addressed to sequences 10, 11 and 12.
    let body = "[".repeat(1000) + &"]".repeat(1000);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&10u64.to_be_bytes());
    frame.extend_from_slice(&3u32.to_be_bytes());
    frame.extend_from_slice(body.as_bytes());
    stream.write_all(&frame).unwrap();
    for expected in 10..13 {
        match next(&mut stream) {
            FromWorker::Failed { id, status, error } => {
                assert_eq!((id, status), (expected, 500));
                assert!(
                    error.message.contains("could not read"),
                    "{}",
                    error.message
                );
            }
            other => panic!("expected a failure for {expected}, got {other:?}"),
        }
    }

    // Still answering pings, and still generating.
    write_frame(&mut stream, &ToWorker::Ping { nonce: 5 }).unwrap();
    assert!(matches!(
        next(&mut stream),
        FromWorker::Pong { nonce: 5, .. }
    ));
    let params = SamplingFields {
        temperature: Some(0.0),
        ..Default::default()
    }
    .to_params(Some(3), None)
    .unwrap();
    write_frame(
        &mut stream,
        &ToWorker::Generate {
            id: 20,
            prompt: std::sync::Arc::new(PromptSpec::Text("Once upon a time".into())),
            choices: vec![params.clone(), params],
            priority: hearth_api::Priority::Low,
        },
    )
    .unwrap();
    let mut done = Vec::new();
    while done.len() < 2 {
        match next(&mut stream) {
            FromWorker::Done {
                id,
                completion_tokens,
                ..
            } => {
                assert_eq!(completion_tokens, 3);
                done.push(id);
            }
            FromWorker::Failed { error, .. } => panic!("{}", error.message),
            _ => {}
        }
    }
    done.sort();
    assert_eq!(done, [20, 21]);
    drop(stream);
    let status = worker.wait().unwrap();
    assert!(
        status.success(),
        "the worker exits cleanly when the socket closes"
    );
    let _ = std::fs::remove_dir_all(dir);
}

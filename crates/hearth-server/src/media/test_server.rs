//! A raw HTTP/1.1 server on 127.0.0.1 for the loader's tests: each connection gets one
//! scripted reply, byte for byte, so tests can send what real servers get wrong (drips,
//! lies about length and type, redirect chains).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the server sends for one request.
pub enum Reply {
    /// Written whole, then the connection closes.
    Raw(Vec<u8>),
    /// `head` at once, then `body` one byte every `every`.
    Drip {
        head: Vec<u8>,
        body: Vec<u8>,
        every: Duration,
    },
}

pub struct TestServer {
    pub port: u16,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Serves `handler(path, port)` for every request until dropped.
    pub async fn start(handler: impl Fn(&str, u16) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Some(path) = read_request_path(&mut sock).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Write errors are the client giving up (a test's point, often).
                    match handler(&path, port) {
                        Reply::Raw(bytes) => {
                            let _ = sock.write_all(&bytes).await;
                        }
                        Reply::Drip { head, body, every } => {
                            if sock.write_all(&head).await.is_err() {
                                return;
                            }
                            for byte in body {
                                tokio::time::sleep(every).await;
                                if sock.write_all(&[byte]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        TestServer { port, hits, task }
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request line's path, after reading the whole head (bounded).
async fn read_request_path(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// A complete response with Content-Length.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = head(status, headers);
    out.truncate(out.len() - 2);
    out.extend(format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes());
    out.extend_from_slice(body);
    out
}

/// Status line and headers, ending the head; `Connection: close` always.
pub fn head(status: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A chunked response (no length up front), in chunks of `chunk` bytes.
pub fn chunked(status: &str, headers: &[(&str, &str)], body: &[u8], chunk: usize) -> Vec<u8> {
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("Transfer-Encoding", "chunked"));
    let mut out = head(status, &all);
    for part in body.chunks(chunk) {
        out.extend(format!("{:x}\r\n", part.len()).into_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

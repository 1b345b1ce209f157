//! The HTTP half of `hearth bench --http`: one stream through a real `hearth serve`, timed
//! from the client's side, to show what the orchestrator and worker hop cost.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench_cmd::Run;
use crate::cli::BenchArgs;

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn measure(
    model: &Path,
    threads: usize,
    prompt: &[u32],
    eog: &[u32],
    args: &BenchArgs,
) -> Result<Run> {
    let ctx = (args.prompt_tokens + args.gen_tokens + 16).to_string();
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--port",
            "0",
            "--preload",
            "--parallel",
            "1",
            "--ctx-size",
            &ctx,
        ])
        .arg("--threads")
        .arg(threads.to_string())
        // The engine measurement's placement, so both rows measure the same device.
        .arg("--gpu-layers")
        .arg(args.engine.gpu.gpu_layers.to_string())
        .arg("--main-gpu")
        .arg(args.engine.gpu.main_gpu.to_string())
        .arg("--flash-attn")
        .arg(args.engine.flash_attn.as_str())
        .arg("--cuda-fusion")
        .arg(args.engine.gpu.cuda_fusion.as_str())
        .arg("--split-mode")
        .arg(args.engine.gpu.split_mode.engine().as_str())
        .args(
            args.engine
                .gpu
                .tensor_split
                .iter()
                .flat_map(|split| ["--tensor-split".to_owned(), split.to_string()]),
        )
        .arg("--greedy-on-device")
        .arg(args.engine.gpu.greedy_on_device.as_str())
        .arg("--model")
        .arg(format!("bench={}", model.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("server stderr")?;
    let server = ServerProcess(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .context("the server exited before listening")??;
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let url = format!("http://{addr}/v1/completions");
    let bias: serde_json::Map<String, Value> =
        eog.iter().map(|t| (t.to_string(), json!(-100))).collect();
    let body = json!({
        "model": "bench",
        "prompt": prompt,
        "max_tokens": args.gen_tokens,
        "temperature": 0,
        "logit_bias": bias,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    one_stream(&url, &body)?; // warm-up
    let runs = (0..args.repeat)
        .map(|_| one_stream(&url, &body))
        .collect::<Result<Vec<_>>>()?;
    drop(server);
    Ok(Run::medians(runs))
}

fn one_stream(url: &str, body: &Value) -> Result<Run> {
    let start = Instant::now();
    let response = ureq::post(url)
        .timeout(Duration::from_secs(600))
        .send_json(body.clone())?;
    let mut first: Option<Instant> = None;
    let mut last = start;
    let mut tokens = 0;
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data)?;
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            tokens = usage["completion_tokens"].as_u64().unwrap_or(0) as usize;
        } else if chunk["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
        }
    }
    let Some(first) = first else {
        bail!("the stream produced no text");
    };
    let span = (last - first).as_secs_f64();
    Ok(Run {
        first_token: first - start,
        decode_rate: if span > 0.0 {
            (tokens.saturating_sub(1)) as f64 / span
        } else {
            0.0
        },
        steps: 0,
        phases: Default::default(),
    })
}

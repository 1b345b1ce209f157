//! `hearth ps`, `ls`, `show`, `rm`: what a running server has loaded, what models this
//! machine holds, what a model file is, and removing one from the cache. Tables for people,
//! `--json` for scripts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hearth_engine::gguf::{summary, GgufSummary};
use hearth_server::hub::{cache_dir, find_cached, HubRef};
use serde_json::{json, Value};

use crate::cli::{LsArgs, PsArgs, RmArgs, ServerArgs, ShowArgs};

/// GET `path` from the server; `None` when nothing listens there.
fn get(server: &ServerArgs, path: &str) -> Result<Option<Value>> {
    let url = format!("{}{path}", server.url.trim_end_matches('/'));
    let mut request = ureq::get(&url).timeout(std::time::Duration::from_secs(10));
    if let Some(key) = &server.api_key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    match request.call() {
        Ok(response) => Ok(Some(
            response
                .into_json()
                .context("reading the server's answer")?,
        )),
        Err(ureq::Error::Status(status, response)) => {
            let body: Value = response.into_json().unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
            bail!("{url}: {status} {message}")
        }
        Err(ureq::Error::Transport(e)) if e.kind() == ureq::ErrorKind::ConnectionFailed => Ok(None),
        Err(e) => Err(e).with_context(|| format!("asking {url}")),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `95s`, `12m`, `3h`.
fn idle(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

pub fn ps(args: PsArgs) -> Result<()> {
    let Some(health) = get(&args.server, "/health/ready")? else {
        bail!(
            "no hearth server at {} (start one with `hearth serve`, or give --url)",
            args.server.url
        );
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&health)?);
        return Ok(());
    }
    let empty = serde_json::Map::new();
    let models = health["models"].as_object().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|(id, m)| {
            let number = |key: &str| m[key].as_u64().map_or("-".into(), |n| n.to_string());
            let queued: u64 = ["high", "normal", "low"]
                .iter()
                .filter_map(|p| m["queued"][p].as_u64())
                .sum();
            vec![
                id.clone(),
                m["status"]
                    .as_str()
                    .or(m["state"].as_str())
                    .unwrap_or("?")
                    .to_owned(),
                number("pid"),
                match (m["running"].as_u64(), m["slots"].as_u64()) {
                    (Some(r), Some(s)) => format!("{r}/{s}"),
                    _ => "-".into(),
                },
                queued.to_string(),
                match (m["kv_used"].as_u64(), m["kv_capacity"].as_u64()) {
                    (Some(u), Some(c)) if c > 0 => format!("{:.0}%", 100.0 * u as f64 / c as f64),
                    _ => "-".into(),
                },
                m["memory_estimate_bytes"]
                    .as_u64()
                    .map_or("-".into(), bytes),
                m["idle_seconds"].as_u64().map_or("busy".into(), idle),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["MODEL", "STATE", "PID", "RUNNING", "QUEUED", "KV", "MEMORY", "IDLE"],
            &rows
        )
    );
    if let Some(counting) = health["counting"].as_array().filter(|c| !c.is_empty()) {
        let ids: Vec<&str> = counting.iter().filter_map(Value::as_str).collect();
        println!("\ncounting tokens (vocabulary only): {}", ids.join(", "));
    }
    Ok(())
}

/// A model file found on this machine.
struct Found {
    name: String,
    source: &'static str,
    path: PathBuf,
    summary: Result<GgufSummary, String>,
}

fn local_models() -> Vec<Found> {
    let mut found = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir("models")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf") && p.is_file())
        .collect();
    files.sort();
    for path in files {
        found.push(Found {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source: "models/",
            summary: summary(&path),
            path,
        });
    }
    found.extend(cached_models(&cache_dir()));
    found
}

/// GGUF files of the current revision of every repository in the Hugging Face cache.
fn cached_models(cache: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    let mut repos: Vec<PathBuf> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("models--"))
        })
        .collect();
    repos.sort();
    for repo_dir in repos {
        let folder = repo_dir.file_name().unwrap_or_default().to_string_lossy();
        let repo = folder.trim_start_matches("models--").replace("--", "/");
        let Ok(revision) = std::fs::read_to_string(repo_dir.join("refs").join("main")) else {
            continue;
        };
        let snapshot = repo_dir.join("snapshots").join(revision.trim());
        let mut files = Vec::new();
        collect_gguf(&snapshot, &mut files);
        files.sort();
        for path in files {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            found.push(Found {
                name: format!("{repo}:{file}"),
                source: "cache",
                summary: summary(&path),
                path,
            });
        }
    }
    found
}

fn collect_gguf(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_gguf(&path, out);
        } else if path.extension().is_some_and(|e| e == "gguf") {
            out.push(path);
        }
    }
}

pub fn ls(args: LsArgs) -> Result<()> {
    let found = local_models();
    if args.json {
        let list: Vec<Value> = found
            .iter()
            .map(|f| {
                let mut entry = json!({
                    "name": f.name,
                    "source": f.source,
                    "path": f.path,
                });
                match &f.summary {
                    Ok(s) => {
                        entry["size_bytes"] = json!(s.size_bytes);
                        entry["architecture"] = json!(s.architecture);
                        entry["quantization"] = json!(s.quantization);
                        entry["context_length"] = json!(s.context_length);
                        entry["capabilities"] = json!(s.capabilities());
                    }
                    Err(e) => entry["error"] = json!(e),
                }
                entry
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if found.is_empty() {
        println!(
            "no models in models/ or {}; fetch one with `hearth pull org/name:QUANT`",
            cache_dir().display()
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|f| match &f.summary {
            Ok(s) => vec![
                f.name.clone(),
                s.architecture.clone(),
                s.quantization.clone().unwrap_or_else(|| "?".into()),
                bytes(s.size_bytes),
                s.context_length.map_or("-".into(), |c| c.to_string()),
                s.capabilities().join(","),
                f.source.to_owned(),
            ],
            Err(e) => vec![
                f.name.clone(),
                format!("unreadable: {e}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                f.source.to_owned(),
            ],
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "NAME",
                "ARCH",
                "QUANT",
                "SIZE",
                "CONTEXT",
                "CAPABILITIES",
                "SOURCE"
            ],
            &rows
        )
    );
    Ok(())
}

/// A model argument as a file: a path, or a Hugging Face id in the cache.
fn model_file(model: &str) -> Result<PathBuf> {
    let path = PathBuf::from(model);
    if path.is_file() {
        return Ok(path);
    }
    let reference = HubRef::parse(model)
        .map_err(|e| anyhow::anyhow!("{model} is neither a file nor a Hugging Face id: {e}"))?;
    find_cached(&cache_dir(), &reference).map_err(anyhow::Error::msg)
}

pub fn show(args: ShowArgs) -> Result<()> {
    let path = model_file(&args.model)?;
    let s = summary(&path).map_err(anyhow::Error::msg)?;
    if args.json {
        let mut value = serde_json::to_value(&s)?;
        value["path"] = json!(path);
        value["capabilities"] = json!(s.capabilities());
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let or_dash = |v: Option<u64>| v.map_or("-".into(), |n| n.to_string());
    let lines = [
        ("path", path.display().to_string()),
        ("name", s.name.clone().unwrap_or_else(|| "-".into())),
        ("architecture", s.architecture.clone()),
        (
            "quantization",
            s.quantization.clone().unwrap_or_else(|| "?".into()),
        ),
        ("size", bytes(s.size_bytes)),
        ("context length", or_dash(s.context_length)),
        ("embedding length", or_dash(s.embedding_length)),
        ("layers", or_dash(s.layers)),
        ("tensors", s.tensors.to_string()),
        ("pooling", s.pooling.clone().unwrap_or_else(|| "-".into())),
        (
            "chat template",
            s.chat_template
                .as_ref()
                .map_or("none".into(), |t| format!("{} characters", t.len())),
        ),
        ("capabilities", s.capabilities().join(", ")),
    ];
    for (key, value) in lines {
        println!("{key:<18}{value}");
    }
    Ok(())
}

pub fn rm(args: RmArgs) -> Result<()> {
    if Path::new(&args.model).is_file() {
        bail!(
            "{} is a file, not a cached model: only the Hugging Face cache is managed here; a \
             file in models/ is yours to delete",
            args.model
        );
    }
    let reference = HubRef::parse(&args.model).map_err(|e| {
        anyhow::anyhow!(
            "{}: only models in the Hugging Face cache are removed here ({e}); a file in \
             models/ is yours to delete",
            args.model
        )
    })?;
    let link = find_cached(&cache_dir(), &reference).map_err(anyhow::Error::msg)?;
    match get(&args.server, "/v1/models")? {
        Some(models) => {
            let loaded = models["data"].as_array().into_iter().flatten().any(|m| {
                m["id"].as_str() == Some(args.model.as_str())
                    && matches!(m["state"].as_str(), Some("loaded" | "loading"))
            });
            if loaded {
                bail!(
                    "{} is loaded in the server at {}: unload it first (POST /v1/models/{}/unload)",
                    args.model,
                    args.server.url,
                    args.model
                );
            }
        }
        None => eprintln!(
            "(no server at {}: nothing to check for the model being loaded)",
            args.server.url
        ),
    }
    // The snapshot entry is a link into the repository's blobs/: remove both — the blob only
    // if it is there (one level of link followed: never a file the blob itself points to).
    let repo_dir = cache_dir().join(format!("models--{}", reference.repo.replace('/', "--")));
    let blob = std::fs::read_link(&link).ok().and_then(|target| {
        let candidate = link.parent()?.join(target);
        let blob = candidate
            .parent()?
            .canonicalize()
            .ok()?
            .join(candidate.file_name()?);
        let blobs = repo_dir.join("blobs").canonicalize().ok()?;
        blob.starts_with(blobs).then_some(blob)
    });
    let freed = std::fs::metadata(&link).map(|m| m.len()).unwrap_or(0);
    std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    if let Some(blob) = blob {
        std::fs::remove_file(&blob).with_context(|| format!("removing {}", blob.display()))?;
    }
    println!("removed {} ({})", link.display(), bytes(freed));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(87_654_321), "87.7 MB");
        let t = table(
            &["A", "BB"],
            &[vec!["long".into(), "x".into()], vec!["s".into(), "".into()]],
        );
        assert_eq!(t, "A     BB\nlong  x\ns");
    }

    #[test]
    fn the_cache_is_listed_by_repository_and_file() {
        let cache = std::env::temp_dir().join(format!("hearth-ls-{}", std::process::id()));
        let snapshot = cache.join("models--org--tiny/snapshots/abc");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(cache.join("models--org--tiny/refs")).unwrap();
        std::fs::write(cache.join("models--org--tiny/refs/main"), "abc\n").unwrap();
        std::fs::write(snapshot.join("tiny-Q4_K_M.gguf"), b"not a model").unwrap();
        let found = cached_models(&cache);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "org/tiny:tiny-Q4_K_M.gguf");
        assert!(
            found[0].summary.is_err(),
            "a broken file is listed as unreadable"
        );
        std::fs::remove_dir_all(&cache).unwrap();
    }
}

//! Hugging Face model references (`org/name`, optionally `org/name:Q4_K_M` or
//! `org/name:file.gguf`): strict parsing, lookup in the standard local cache, and download
//! with `hf-hub` into that same cache.

use std::path::{Path, PathBuf};

/// A validated `org/name[:selector]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub repo: String,
    /// A quantization (`Q4_K_M`, matched in file names) or an exact `.gguf` file name.
    pub selector: Option<String>,
}

fn plain_part(part: &str, max: usize) -> bool {
    !part.is_empty()
        && part.len() <= max
        && !part.starts_with(['.', '-'])
        && !part.contains("..")
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl HubRef {
    /// `org/name` or `org/name:selector`. Anything else (absolute paths, `..`, extra
    /// slashes, odd characters) is refused, so an id can never name an arbitrary file.
    pub fn parse(text: &str) -> Result<HubRef, String> {
        let invalid = || {
            format!(
                "invalid Hugging Face model id {text:?}: expected org/name or org/name:QUANT \
                 (letters, digits, '-', '_', '.')"
            )
        };
        let (repo, selector) = match text.split_once(':') {
            Some((repo, selector)) => (repo, Some(selector)),
            None => (text, None),
        };
        let (org, name) = repo.split_once('/').ok_or_else(invalid)?;
        if !plain_part(org, 96) || !plain_part(name, 96) {
            return Err(invalid());
        }
        if let Some(selector) = selector {
            if !plain_part(selector, 200) {
                return Err(invalid());
            }
        }
        Ok(HubRef {
            repo: repo.to_owned(),
            selector: selector.map(str::to_owned),
        })
    }

    /// `models--org--name`, the repository's folder in the cache.
    fn folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// The GGUF file this reference means among a repository's files (never a vision
    /// projector, which shares the repository and often the quantization's name).
    pub fn pick<'a>(&self, files: &'a [String]) -> Result<&'a String, String> {
        let ggufs: Vec<&String> = files
            .iter()
            .filter(|f| f.to_ascii_lowercase().ends_with(".gguf") && !is_projector(f))
            .collect();
        let file_name = |f: &String| f.rsplit('/').next().unwrap_or(f).to_owned();
        let matches: Vec<&String> = match &self.selector {
            Some(s) if s.to_ascii_lowercase().ends_with(".gguf") => {
                ggufs.into_iter().filter(|f| file_name(f) == *s).collect()
            }
            Some(s) => {
                let s = s.to_ascii_lowercase();
                ggufs
                    .into_iter()
                    .filter(|f| file_name(f).to_ascii_lowercase().contains(&s))
                    .collect()
            }
            None if ggufs.len() <= 1 => ggufs,
            // Several quantizations and no choice: the usual default, else the first.
            None => {
                let q4 = ggufs
                    .iter()
                    .copied()
                    .filter(|f| f.to_ascii_lowercase().contains("q4_k_m"))
                    .collect::<Vec<_>>();
                if q4.is_empty() {
                    ggufs.into_iter().take(1).collect()
                } else {
                    q4
                }
            }
        };
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no GGUF file in {} matches {:?}",
                self.repo,
                self.selector.as_deref().unwrap_or("*.gguf")
            )),
            several => {
                // Split models list their first shard; anything else is ambiguous.
                let mut names: Vec<&String> = several.to_vec();
                names.sort();
                if let Some(first) = names.iter().find(|n| n.contains("-00001-of-")) {
                    return Ok(first);
                }
                Err(format!(
                    "{} files in {} match {:?}: {}; name one with org/name:FILE.gguf",
                    names.len(),
                    self.repo,
                    self.selector.as_deref().unwrap_or(""),
                    names
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
    }
}

/// Whether a repository file is a vision projector (`mmproj*.gguf`, as llama.cpp's
/// repositories name them).
fn is_projector(file: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file).to_ascii_lowercase();
    name.starts_with("mmproj") && name.ends_with(".gguf")
}

impl HubRef {
    /// The vision projector among a repository's files, if it has one: the only one, else
    /// the one of this reference's quantization, else the F16 one (llama.cpp's
    /// repositories ship a projector per precision), else the first by name.
    pub fn pick_projector<'a>(&self, files: &'a [String]) -> Option<&'a String> {
        let mut projectors: Vec<&String> = files.iter().filter(|f| is_projector(f)).collect();
        projectors.sort();
        let named = |part: &str| {
            let part = part.to_ascii_lowercase();
            projectors
                .iter()
                .copied()
                .find(|f| f.to_ascii_lowercase().contains(&part))
        };
        match projectors.len() {
            0 => None,
            1 => Some(projectors[0]),
            _ => self
                .selector
                .as_deref()
                .filter(|s| !s.to_ascii_lowercase().ends_with(".gguf"))
                .and_then(named)
                .or_else(|| named("f16"))
                .or(projectors.first().copied()),
        }
    }
}

impl std::fmt::Display for HubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            Some(s) => write!(f, "{}:{s}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
/// else `~/.cache/huggingface/hub` (where the Python tools look too).
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The cached snapshot of `reference`'s repository (its `main` revision) and the files in it,
/// sorted; `None` when the repository is not in the cache.
fn cached_snapshot(cache: &Path, reference: &HubRef) -> Option<(PathBuf, Vec<String>)> {
    let repo_dir = cache.join(reference.folder());
    let revision = std::fs::read_to_string(repo_dir.join("refs").join("main")).ok()?;
    let snapshot = repo_dir.join("snapshots").join(revision.trim());
    let mut files = Vec::new();
    list_files(&snapshot, &snapshot, &mut files);
    files.sort();
    Some((snapshot, files))
}

/// The vision projector cached with `reference`'s model, if its repository has one there.
pub fn find_cached_projector(cache: &Path, reference: &HubRef) -> Option<PathBuf> {
    let (snapshot, files) = cached_snapshot(cache, reference)?;
    let path = snapshot.join(reference.pick_projector(&files)?);
    path.is_file().then_some(path)
}

/// The file for `reference` in the cache at `cache`, without touching the network.
pub fn find_cached(cache: &Path, reference: &HubRef) -> Result<PathBuf, String> {
    let (snapshot, files) = cached_snapshot(cache, reference).ok_or_else(|| {
        format!(
            "{} is not in the Hugging Face cache at {}",
            reference.repo,
            cache.display()
        )
    })?;
    let file = reference.pick(&files)?;
    let path = snapshot.join(file);
    // Snapshot entries are links into blobs/: a dangling one is an incomplete download.
    if !path.is_file() {
        return Err(format!("{} is in the cache but incomplete", path.display()));
    }
    Ok(path)
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(root, &path, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push(relative.to_string_lossy().into_owned());
        }
    }
}

/// The file for `reference`: from the cache, else downloaded into it (with a progress bar
/// on the terminal when `progress`) together with the repository's vision projector, if it
/// has one. `HF_HUB_OFFLINE=1` forbids the download.
pub fn fetch(reference: &HubRef, progress: bool) -> Result<PathBuf, String> {
    let cache = cache_dir();
    let cached = find_cached(&cache, reference);
    if cached.is_ok() || offline() {
        return cached
            .map_err(|e| format!("{e}; HF_HUB_OFFLINE is set, so it cannot be downloaded"));
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache)
        .with_progress(progress);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| format!("Hugging Face client: {e}"))?;
    let repo = api.model(reference.repo.clone());
    let info = repo
        .info()
        .map_err(|e| format!("looking up {} on Hugging Face: {e}", reference.repo))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let file = reference.pick(&files)?;
    let model = repo
        .get(file)
        .map_err(|e| format!("downloading {file} from {}: {e}", reference.repo))?;
    if let Some(projector) = reference.pick_projector(&files) {
        repo.get(projector)
            .map_err(|e| format!("downloading {projector} from {}: {e}", reference.repo))?;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strict() {
        let r = HubRef::parse("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1").unwrap();
        assert_eq!(r.repo, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(r.selector.as_deref(), Some("Q4_1"));
        for bad in [
            "/etc/passwd",
            "../x/y",
            "org/../y",
            "org/name/extra",
            "org",
            "org/na me",
            "org/name:../../x",
            ".hidden/name",
            "",
        ] {
            assert!(HubRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_pick_one_file() {
        let files: Vec<String> = [
            "README.md",
            "model.Q4_K_M.gguf",
            "model.Q8_0.gguf",
            "sub/model.Q4_1.gguf",
        ]
        .map(String::from)
        .to_vec();
        let pick = |s: &str| HubRef::parse(s).unwrap().pick(&files).cloned();
        assert_eq!(pick("o/m").unwrap(), "model.Q4_K_M.gguf");
        assert_eq!(pick("o/m:q8_0").unwrap(), "model.Q8_0.gguf");
        assert_eq!(pick("o/m:model.Q4_1.gguf").unwrap(), "sub/model.Q4_1.gguf");
        assert!(pick("o/m:Q5_0").is_err());
        assert!(pick("o/m:model").is_err(), "ambiguous");
    }

    #[test]
    fn projectors_are_never_the_model_and_are_picked_by_quantization() {
        let files: Vec<String> = [
            "SmolVLM-Q8_0.gguf",
            "SmolVLM-f16.gguf",
            "mmproj-SmolVLM-Q8_0.gguf",
            "mmproj-SmolVLM-f16.gguf",
        ]
        .map(String::from)
        .to_vec();
        let r = |s: &str| HubRef::parse(s).unwrap();
        assert_eq!(r("o/m:Q8_0").pick(&files).unwrap(), "SmolVLM-Q8_0.gguf");
        assert_eq!(
            r("o/m:Q8_0").pick_projector(&files).unwrap(),
            "mmproj-SmolVLM-Q8_0.gguf"
        );
        assert_eq!(
            r("o/m:SmolVLM-f16.gguf").pick_projector(&files).unwrap(),
            "mmproj-SmolVLM-f16.gguf"
        );
        assert_eq!(
            r("o/m").pick_projector(&files).unwrap(),
            "mmproj-SmolVLM-f16.gguf"
        );
        assert_eq!(r("o/m").pick_projector(&files[..2]), None);
    }
}

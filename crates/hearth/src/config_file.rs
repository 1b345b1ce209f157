//! The optional TOML file naming the models to serve and their own settings:
//!
//! ```toml
//! [[models]]
//! id = "smol"                                   # optional alias
//! path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! ctx_size = 2048                               # tokens per sequence
//! parallel = 2                                  # sequence slots
//! idle_timeout = 600                            # seconds; 0 = never unload
//!
//! [[models]]
//! hub = "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF:Q4_K_M"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: Option<String>,
    /// A GGUF file; relative paths are relative to the config file.
    pub path: Option<PathBuf>,
    /// A Hugging Face id, `org/name[:QUANT]`.
    pub hub: Option<String>,
    pub ctx_size: Option<u32>,
    pub parallel: Option<usize>,
    pub idle_timeout: Option<f64>,
    /// The model's vision projector (mmproj GGUF); relative to the config file.
    pub mmproj: Option<PathBuf>,
}

pub fn load(path: &Path) -> Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: ConfigFile =
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for (i, model) in config.models.iter_mut().enumerate() {
        match (&model.path, &model.hub) {
            (Some(_), Some(_)) | (None, None) => {
                anyhow::bail!(
                    "{}: model {} needs exactly one of `path` or `hub`",
                    path.display(),
                    i + 1
                )
            }
            (Some(p), None) if p.is_relative() => model.path = Some(base.join(p)),
            _ => {}
        }
        if let Some(p) = model.mmproj.as_ref().filter(|p| p.is_relative()) {
            model.mmproj = Some(base.join(p));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_with_settings_parse_and_paths_are_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("hearth-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hearth.toml");
        std::fs::write(
            &file,
            "[[models]]\nid = \"smol\"\npath = \"m.gguf\"\nctx_size = 2048\nparallel = 2\nidle_timeout = 0\n\n\
             [[models]]\nhub = \"org/name:Q4_K_M\"\n",
        )
        .unwrap();
        let config = load(&file).unwrap();
        assert_eq!(config.models.len(), 2);
        assert_eq!(
            config.models[0].path.as_deref(),
            Some(dir.join("m.gguf").as_path())
        );
        assert_eq!(config.models[0].parallel, Some(2));
        assert_eq!(config.models[1].hub.as_deref(), Some("org/name:Q4_K_M"));

        std::fs::write(&file, "[[models]]\nid = \"x\"\n").unwrap();
        assert!(load(&file).is_err(), "needs a path or a hub id");
        std::fs::write(&file, "[[models]]\npath = \"a\"\nsize = 1\n").unwrap();
        assert!(load(&file).is_err(), "unknown keys are errors");
        let _ = std::fs::remove_dir_all(dir);
    }
}

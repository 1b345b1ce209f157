//! Finding the model file when none is named.

use std::path::PathBuf;

pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The named model, or the default model relative to the working directory or to the
/// checkout the binary was built in (`target/release/hearth` → `models/`).
pub fn resolve(model: Option<PathBuf>) -> PathBuf {
    if let Some(model) = model {
        return model;
    }
    let local = PathBuf::from(DEFAULT_MODEL);
    if local.exists() {
        return local;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .skip(1)
                .map(|dir| dir.join(DEFAULT_MODEL))
                .find(|p| p.exists())
        })
        .unwrap_or(local)
}

//! What a GGUF file says about itself, read from its header alone (llama.cpp's `gguf_*`
//! reader without tensor data): for `hearth ls` and `hearth show`, which must not load
//! weights to list models.

use std::ffi::{CStr, CString};
use std::path::Path;

use serde::Serialize;

/// A model file's facts.
#[derive(Debug, Clone, Serialize)]
pub struct GgufSummary {
    pub architecture: String,
    pub name: Option<String>,
    /// Quantization of most weights (`Q4_K_M`, `F16`, …), from `general.file_type`.
    pub quantization: Option<String>,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub layers: Option<u64>,
    pub pooling: Option<String>,
    pub chat_template: Option<String>,
    pub size_bytes: u64,
    pub tensors: i64,
}

impl GgufSummary {
    /// What the model can be used for, as far as its file tells.
    pub fn capabilities(&self) -> Vec<&'static str> {
        let template = self.chat_template.as_deref().unwrap_or("");
        let mut out = Vec::new();
        if self.pooling.is_some() {
            out.push("embeddings");
        } else {
            out.push("completion");
        }
        if !template.is_empty() {
            out.push("chat");
        }
        if template.contains("tools") {
            out.push("tools");
        }
        if template.contains("<think>") {
            out.push("reasoning");
        }
        out
    }
}

/// llama.cpp's `llama_pooling_type` names (`{arch}.pooling_type`); `None` for no pooling.
pub(crate) fn pooling_name(t: u64) -> Option<&'static str> {
    Some(match t {
        1 => "mean",
        2 => "cls",
        3 => "last",
        4 => "rank",
        _ => return None,
    })
}

/// llama.cpp's `llama_ftype` names (`general.file_type`).
fn file_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// The header of the GGUF at `path` (an error if it is not one).
pub fn summary(path: &Path) -> Result<GgufSummary, String> {
    let size_bytes = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
    let params = llama_cpp_sys_2::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: a valid C string; with no_alloc and no ggml context, only the header is read.
    let ctx = unsafe { llama_cpp_sys_2::gguf_init_from_file(c_path.as_ptr(), params) };
    if ctx.is_null() {
        return Err(format!("{}: not a readable GGUF file", path.display()));
    }
    let reader = Reader(ctx);
    let architecture = reader
        .string("general.architecture")
        .unwrap_or_else(|| "unknown".into());
    let per_arch = |key: &str| reader.integer(&format!("{architecture}.{key}"));
    Ok(GgufSummary {
        name: reader.string("general.name"),
        quantization: reader
            .integer("general.file_type")
            .and_then(|t| u32::try_from(t).ok())
            .and_then(file_type_name)
            .map(str::to_owned),
        context_length: per_arch("context_length"),
        embedding_length: per_arch("embedding_length"),
        layers: per_arch("block_count"),
        pooling: per_arch("pooling_type")
            .and_then(pooling_name)
            .map(str::to_owned),
        chat_template: reader.string("tokenizer.chat_template"),
        // SAFETY: ctx is valid until the reader drops.
        tensors: unsafe { llama_cpp_sys_2::gguf_get_n_tensors(ctx) },
        size_bytes,
        architecture,
    })
}

struct Reader(*mut llama_cpp_sys_2::gguf_context);

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: made by gguf_init_from_file, freed once.
        unsafe { llama_cpp_sys_2::gguf_free(self.0) }
    }
}

impl Reader {
    fn key(&self, key: &str) -> Option<i64> {
        let key = CString::new(key).ok()?;
        // SAFETY: valid context and C string.
        let id = unsafe { llama_cpp_sys_2::gguf_find_key(self.0, key.as_ptr()) };
        (id >= 0).then_some(id)
    }

    fn string(&self, key: &str) -> Option<String> {
        let id = self.key(key)?;
        // SAFETY: the key exists; its type is checked before reading it as a string.
        unsafe {
            if llama_cpp_sys_2::gguf_get_kv_type(self.0, id) != llama_cpp_sys_2::GGUF_TYPE_STRING {
                return None;
            }
            let value = llama_cpp_sys_2::gguf_get_val_str(self.0, id);
            (!value.is_null()).then(|| CStr::from_ptr(value).to_string_lossy().into_owned())
        }
    }

    /// An integer value of any width.
    fn integer(&self, key: &str) -> Option<u64> {
        use llama_cpp_sys_2 as sys;
        let id = self.key(key)?;
        // SAFETY: each getter is called only for the type the file declares.
        unsafe {
            match sys::gguf_get_kv_type(self.0, id) {
                sys::GGUF_TYPE_UINT8 => Some(u64::from(sys::gguf_get_val_u8(self.0, id))),
                sys::GGUF_TYPE_UINT16 => Some(u64::from(sys::gguf_get_val_u16(self.0, id))),
                sys::GGUF_TYPE_UINT32 => Some(u64::from(sys::gguf_get_val_u32(self.0, id))),
                sys::GGUF_TYPE_UINT64 => Some(sys::gguf_get_val_u64(self.0, id)),
                sys::GGUF_TYPE_INT32 => u64::try_from(sys::gguf_get_val_i32(self.0, id)).ok(),
                sys::GGUF_TYPE_INT64 => u64::try_from(sys::gguf_get_val_i64(self.0, id)).ok(),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_gguf_is_an_error() {
        let dir = std::env::temp_dir().join(format!("hearth-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.gguf");
        std::fs::write(&path, b"GGUF but not really").unwrap();
        assert!(summary(&path).is_err());
        assert!(summary(&dir.join("missing.gguf")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! How much memory a model will take before it is loaded: its weights (the file) plus its KV
//! cache, sized from the GGUF header's shape keys. Only the header is read. The count is in
//! bytes of host RAM; with GPU offload a second figure for device memory joins it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Compute buffers, the process itself and allocator slack, on top of weights and KV.
const OVERHEAD_BYTES: u64 = 64 << 20;

/// Memory one loaded model is expected to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub ram_bytes: u64,
}

/// Weights + f16 KV cache for `context_tokens` (all slots together) + overhead. A header
/// that cannot be read still counts the file (the load itself reports the real error).
pub fn estimate(path: &Path, context_tokens: u64) -> Footprint {
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let kv = read_shape(path)
        .map(|shape| shape.kv_bytes_per_token() * context_tokens)
        .unwrap_or(0);
    Footprint {
        ram_bytes: file_bytes + kv + OVERHEAD_BYTES,
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Shape {
    layers: u64,
    embedding: u64,
    heads: u64,
    kv_heads: u64,
    key_length: Option<u64>,
    value_length: Option<u64>,
}

impl Shape {
    fn kv_bytes_per_token(&self) -> u64 {
        let head_dim = self.embedding / self.heads.max(1);
        let k = self.key_length.unwrap_or(head_dim) * self.kv_heads;
        let v = self.value_length.unwrap_or(head_dim) * self.kv_heads;
        // f16 keys and values in every layer.
        self.layers * (k + v) * 2
    }
}

fn read_shape(path: &Path) -> Option<Shape> {
    let mut reader = BufReader::new(File::open(path).ok()?);
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).ok()?;
    if &magic != b"GGUF" {
        return None;
    }
    let version = read_u32(&mut reader)?;
    if version < 2 {
        return None;
    }
    let _tensors = read_u64(&mut reader)?;
    let count = read_u64(&mut reader)?;
    let mut numbers = HashMap::new();
    let mut architecture = None;
    for _ in 0..count.min(100_000) {
        let key = read_string(&mut reader)?;
        let kind = read_u32(&mut reader)?;
        if key == "general.architecture" && kind == STRING {
            architecture = Some(read_string(&mut reader)?);
        } else if let Some(n) = read_number(&mut reader, kind)? {
            numbers.insert(key, n);
        }
    }
    let arch = architecture?;
    let get = |name: &str| numbers.get(&format!("{arch}.{name}")).copied();
    let heads = get("attention.head_count")?;
    Some(Shape {
        layers: get("block_count")?,
        embedding: get("embedding_length")?,
        heads,
        kv_heads: get("attention.head_count_kv").unwrap_or(heads),
        key_length: get("attention.key_length"),
        value_length: get("attention.value_length"),
    })
}

const STRING: u32 = 8;
const ARRAY: u32 = 9;

fn read_u32(r: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Option<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> Option<String> {
    let len = read_u64(r)?;
    if len > 1 << 20 {
        return None;
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes).ok()?;
    String::from_utf8(bytes).ok()
}

/// Fixed width of a scalar GGUF type, or `None` for strings and arrays.
fn scalar_width(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// An unsigned integer value as u64; other values are skipped (`Some(None)`).
fn read_number<R: Read + Seek>(r: &mut R, kind: u32) -> Option<Option<u64>> {
    match kind {
        4 => read_u32(r).map(|v| Some(v as u64)),
        10 => read_u64(r).map(Some),
        STRING => {
            let len = read_u64(r)?;
            r.seek(SeekFrom::Current(len as i64)).ok()?;
            Some(None)
        }
        ARRAY => {
            let item = read_u32(r)?;
            let n = read_u64(r)?;
            match scalar_width(item) {
                Some(width) => {
                    r.seek(SeekFrom::Current((width * n) as i64)).ok()?;
                }
                None if item == STRING => {
                    for _ in 0..n {
                        let len = read_u64(r)?;
                        r.seek(SeekFrom::Current(len as i64)).ok()?;
                    }
                }
                None => return None,
            }
            Some(None)
        }
        other => {
            let width = scalar_width(other)?;
            r.seek(SeekFrom::Current(width as i64)).ok()?;
            Some(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_is_weights_plus_its_kv_cache() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let shape = read_shape(&path).expect("the default model's header reads");
        // SmolLM2-135M: 30 layers, 576 wide, 9 heads, 3 KV heads of 64.
        assert_eq!(
            (shape.layers, shape.embedding, shape.heads, shape.kv_heads),
            (30, 576, 9, 3)
        );
        assert_eq!(shape.kv_bytes_per_token(), 30 * 2 * 192 * 2);
        let file = std::fs::metadata(&path).unwrap().len();
        let footprint = estimate(&path, 4096);
        assert_eq!(footprint.ram_bytes, file + 4096 * 23_040 + OVERHEAD_BYTES);
    }

    #[test]
    fn unreadable_files_count_only_their_size() {
        let path = std::env::temp_dir().join(format!("hearth-fp-{}", std::process::id()));
        std::fs::write(&path, b"not a gguf").unwrap();
        assert_eq!(estimate(&path, 4096).ram_bytes, 10 + OVERHEAD_BYTES);
        let _ = std::fs::remove_file(path);
    }
}

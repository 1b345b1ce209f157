//! Where a model's weights and KV cache live: the CPU, or GPUs within their free memory.
//!
//! `--gpu-layers auto` asks llama.cpp's own fitting (`common_fit_params`: a dry-run
//! allocation of the model and of a context of the shape the engine will make, against each
//! device's free memory less a margin) how many layers fit; without a GPU it is 0. A number
//! offloads that many layers as asked.

use std::ffi::CString;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};
use serde::{Deserialize, Serialize};

use crate::backend::backend;
use crate::engine::FlashAttention;
use crate::error::{EngineError, Result};

/// Device memory left free when fitting: CUDA's own context, cuBLAS workspaces and other
/// processes need some (llama.cpp's default margin).
pub const FIT_MARGIN_BYTES: usize = 1 << 30;

/// Layers to offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuLayers {
    /// As many as fit in the GPUs' free memory (none without a GPU).
    #[default]
    Auto,
    Count(u32),
}

impl FromStr for GpuLayers {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(GpuLayers::Auto);
        }
        s.parse::<u32>()
            .map(GpuLayers::Count)
            .map_err(|_| format!("'{s}' is not a number of layers or `auto`"))
    }
}

impl std::fmt::Display for GpuLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuLayers::Auto => f.write_str("auto"),
            GpuLayers::Count(n) => write!(f, "{n}"),
        }
    }
}

/// How a model spreads over several GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitMode {
    /// All on `main_gpu`.
    None,
    /// Whole layers (and their KV) per GPU, in proportion to free memory.
    #[default]
    Layer,
    /// Rows of each weight matrix across GPUs.
    Row,
}

impl SplitMode {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(SplitMode::None),
            "layer" => Ok(SplitMode::Layer),
            "row" => Ok(SplitMode::Row),
            other => Err(format!("split mode '{other}': expected none, layer or row")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SplitMode::None => "none",
            SplitMode::Layer => "layer",
            SplitMode::Row => "row",
        }
    }

    fn llama(self) -> LlamaSplitMode {
        match self {
            SplitMode::None => LlamaSplitMode::None,
            SplitMode::Layer => LlamaSplitMode::Layer,
            SplitMode::Row => LlamaSplitMode::Row,
        }
    }
}

/// The element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheType {
    #[default]
    F16,
    Q8_0,
    Q4_0,
}

impl CacheType {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(CacheType::F16),
            "q8_0" => Ok(CacheType::Q8_0),
            "q4_0" => Ok(CacheType::Q4_0),
            other => Err(format!("cache type '{other}': expected f16, q8_0 or q4_0")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheType::F16 => "f16",
            CacheType::Q8_0 => "q8_0",
            CacheType::Q4_0 => "q4_0",
        }
    }

    pub(crate) fn llama(self) -> KvCacheType {
        match self {
            CacheType::F16 => KvCacheType::F16,
            CacheType::Q8_0 => KvCacheType::Q8_0,
            CacheType::Q4_0 => KvCacheType::Q4_0,
        }
    }

    /// Bytes per element, as stored (blocks of 32 with their scale).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            CacheType::F16 => 2.0,
            CacheType::Q8_0 => 34.0 / 32.0,
            CacheType::Q4_0 => 18.0 / 32.0,
        }
    }
}

/// Where to put a model.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub gpu_layers: GpuLayers,
    /// The GPU that holds everything with `SplitMode::None`, and the small tensors otherwise.
    pub main_gpu: u32,
    pub split_mode: SplitMode,
    /// GPU memory to leave free on the main GPU for what loads after the model (a vision
    /// projector and its encoder's buffers), on top of the margin.
    pub reserve_bytes: usize,
    /// The share of the model each GPU holds (`--tensor-split`; empty: fitted to free
    /// memory).
    pub tensor_split: TensorSplit,
}

/// Proportions of a model per GPU, in device order (`3,1`: three quarters on the first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorSplit(pub Vec<f32>);

impl FromStr for TensorSplit {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        // SAFETY: a plain query of a constant.
        let max = unsafe { llama_cpp_sys_2::llama_max_devices() };
        let shares = s
            .split(',')
            .map(|part| match part.trim().parse::<f32>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(format!(
                    "tensor split {s:?}: each share must be a number ≥ 0 (e.g. 3,1)"
                )),
            })
            .collect::<std::result::Result<Vec<f32>, String>>()?;
        if shares.len() > max {
            return Err(format!(
                "tensor split {s:?}: {} shares, but llama.cpp handles at most {max} devices",
                shares.len()
            ));
        }
        if !shares.iter().any(|&x| x > 0.0) {
            return Err(format!(
                "tensor split {s:?}: at least one share must be above 0"
            ));
        }
        Ok(TensorSplit(shares))
    }
}

impl std::fmt::Display for TensorSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(f32::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// The context the engine will make, for fitting the model around it.
#[derive(Debug, Clone)]
pub struct ContextShape {
    /// Cells over all sequences.
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_seq: u32,
    pub kv_unified: bool,
    pub flash_attention: FlashAttention,
    pub cache_type_k: CacheType,
    pub cache_type_v: CacheType,
}

impl ContextShape {
    /// llama.cpp's context parameters for this shape (threads aside).
    pub(crate) fn params(&self) -> LlamaContextParams {
        let flash_attention = match self.flash_attention {
            FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        };
        LlamaContextParams::default()
            .with_flash_attention_policy(flash_attention)
            .with_n_ctx(std::num::NonZeroU32::new(self.n_ctx))
            .with_n_batch(self.n_batch)
            .with_n_ubatch(self.n_batch)
            .with_n_seq_max(self.n_seq)
            .with_kv_unified(self.kv_unified)
            .with_type_k(self.cache_type_k.llama())
            .with_type_v(self.cache_type_v.llama())
    }
}

/// A compute device llama.cpp can use, and its memory now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub index: usize,
    /// Backend name (`CUDA0`, `Vulkan0`, `CPU`).
    pub name: String,
    /// What the driver calls it (`NVIDIA H100 80GB HBM3`).
    pub description: String,
    /// `cpu`, `gpu`, `igpu` or `accel`.
    pub kind: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

impl Device {
    pub fn is_gpu(&self) -> bool {
        matches!(self.kind.as_str(), "gpu" | "igpu")
    }
}

/// Every device this build of llama.cpp sees (CPU-only builds: the CPU).
pub fn devices() -> Vec<Device> {
    backend();
    list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| Device {
            index: d.index,
            name: d.name,
            description: d.description,
            kind: match d.device_type {
                LlamaBackendDeviceType::Cpu => "cpu",
                LlamaBackendDeviceType::Gpu => "gpu",
                LlamaBackendDeviceType::IntegratedGpu => "igpu",
                _ => "accel",
            }
            .to_owned(),
            total_bytes: d.memory_total as u64,
            free_bytes: d.memory_free as u64,
        })
        .collect()
}

/// The GPUs among `devices()`.
pub fn gpus() -> Vec<Device> {
    devices().into_iter().filter(Device::is_gpu).collect()
}

/// Model parameters for `placement`, with `auto` fitted to the GPUs' free memory around a
/// context of `shape`. Returns them and the layers asked to be offloaded (llama.cpp caps a
/// count above the model's at all of them).
pub(crate) fn model_params(
    path: &Path,
    placement: &Placement,
    shape: Option<&ContextShape>,
) -> Result<(Pin<Box<LlamaModelParams>>, u32)> {
    let gpus = gpus().len();
    let shares = placement.tensor_split.0.len();
    if gpus > 0 && shares > gpus {
        return Err(EngineError::DoesNotFit {
            path: path.to_owned(),
            reason: format!(
                "--tensor-split gives {shares} shares, but there are {gpus} GPUs: one share per GPU"
            ),
        });
    }
    let base = LlamaModelParams::default()
        .with_main_gpu(placement.main_gpu as i32)
        .with_split_mode(placement.split_mode.llama())
        .with_tensor_split(&placement.tensor_split.0);
    match (placement.gpu_layers, shape) {
        (GpuLayers::Count(n), _) => Ok((Box::pin(base.with_n_gpu_layers(n)), n)),
        // A split chosen by hand is not fitted (llama.cpp's fitting chooses the split
        // itself and refuses one given): every layer goes to the GPUs in those shares, and
        // one that does not fit fails the load with llama.cpp's allocation error.
        (GpuLayers::Auto, Some(_)) if shares > 0 && gpus > 0 => {
            Ok((Box::pin(base.with_n_gpu_layers(u32::MAX)), u32::MAX))
        }
        (GpuLayers::Auto, Some(shape)) if gpus > 0 => fit(path, base, shape, placement),
        (GpuLayers::Auto, _) => Ok((Box::pin(base.with_n_gpu_layers(0)), 0)),
    }
}

fn fit(
    path: &Path,
    base: LlamaModelParams,
    shape: &ContextShape,
    placement: &Placement,
) -> Result<(Pin<Box<LlamaModelParams>>, u32)> {
    let mut params = Box::pin(base);
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        EngineError::ModelUnreadable {
            path: path.to_owned(),
            reason: "the path holds a NUL byte".into(),
        }
    })?;
    let mut context = shape.params();
    // SAFETY: a plain query of a constant.
    let max_devices = unsafe { llama_cpp_sys_2::llama_max_devices() };
    let mut margins = vec![FIT_MARGIN_BYTES; max_devices];
    if let Some(main) = margins.get_mut(placement.main_gpu as usize) {
        *main += placement.reserve_bytes;
    }
    params
        .as_mut()
        .fit_params(
            &c_path,
            &mut context,
            &mut margins,
            // Never shrink the context: what a client was promised is what it gets.
            shape.n_ctx,
            llama_cpp_sys_2::GGML_LOG_LEVEL_DEBUG,
        )
        .map_err(|e| EngineError::DoesNotFit {
            path: path.to_owned(),
            reason: format!(
                "{e}: the weights and a {}-token KV cache do not fit the GPUs' free memory \
                 and the host's; lower --ctx-size or --parallel, or use a smaller quantization",
                shape.n_ctx
            ),
        })?;
    // llama.cpp's "all layers" is -1 (measured on an H200: an 8B model fitted whole came
    // back as -1 and was reported as 0 layers on the GPU).
    let layers = u32::try_from(params.n_gpu_layers()).unwrap_or(u32::MAX);
    Ok((params, layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_splits_parse_and_print_and_nonsense_is_refused() {
        let split: TensorSplit = "3,1".parse().unwrap();
        assert_eq!(split, TensorSplit(vec![3.0, 1.0]));
        assert_eq!(split.to_string(), "3,1");
        assert_eq!(
            " 0.5 , 0.5".parse::<TensorSplit>().unwrap().0,
            vec![0.5, 0.5]
        );
        for bad in [
            "",
            "a,b",
            "1,-1",
            "0,0",
            "inf",
            "NaN",
            &vec!["1"; 17].join(","),
        ] {
            assert!(bad.parse::<TensorSplit>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn settings_parse_and_print() {
        assert_eq!("auto".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
        assert_eq!("33".parse::<GpuLayers>(), Ok(GpuLayers::Count(33)));
        assert!("-1".parse::<GpuLayers>().is_err());
        assert_eq!(GpuLayers::Count(7).to_string(), "7");
        assert_eq!(SplitMode::parse("row"), Ok(SplitMode::Row));
        assert!(SplitMode::parse("rows").is_err());
        assert_eq!(CacheType::parse("Q8_0"), Ok(CacheType::Q8_0));
        assert!(CacheType::parse("q5_1").is_err());
    }

    #[test]
    fn a_cpu_build_sees_the_cpu_and_puts_nothing_on_a_gpu() {
        let devices = devices();
        assert!(devices.iter().any(|d| d.kind == "cpu"), "{devices:?}");
        if gpus().is_empty() {
            let (params, layers) =
                model_params(Path::new("x.gguf"), &Placement::default(), None).unwrap();
            assert_eq!(layers, 0);
            assert_eq!(params.n_gpu_layers(), 0);
        }
    }
}

//! Images in prompts: llama.cpp's `mtmd` projector turns a decoded image into embeddings the
//! text model reads at the image's place in the prompt.
//!
//! The preparing thread decodes an image (the `image` crate, bounded) and has mtmd tokenize
//! it into chunks — the image, and any text tokens its model wraps images in. The prompt
//! holds one placeholder token per KV cell the chunks fill, derived from a hash of the image,
//! so the prompt cache matches an image only against the same image at the same place; the
//! engine thread evaluates the chunks into the sequence when its prefill reaches them.

use std::hash::BuildHasher;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::mtmd::{
    MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunks, MtmdInputText,
};

use crate::error::{EngineError, Result};
use crate::model::Model;

/// Placeholder tokens have the top bit set: no vocabulary is that large, so one never
/// reaches a token decode, and the sampler and validation can tell them apart.
pub const PLACEHOLDER_BIT: u32 = 1 << 31;

/// Bounds on a decoded image: a second line behind the orchestrator's header checks.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_side: u32,
    /// Bytes the decoder may allocate.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_side: 4096,
            // 4096 x 4096 RGBA16 is 128 MiB; a little more for the decoder's own buffers.
            max_alloc: 160 << 20,
        }
    }
}

/// A model's vision projector (an mmproj GGUF).
#[derive(Debug)]
pub struct Projector {
    /// Tokenizing takes `&self`, evaluating `&mut`: the engine thread and the preparing
    /// thread take turns.
    context: Mutex<MtmdContext>,
    /// The text that stands for an image when mtmd tokenizes: chosen at random per load, so
    /// no text in a prompt can pose as one.
    marker: String,
    limits: ImageLimits,
    /// Keys for the image hash that names placeholder tokens: random per process, so nobody
    /// can make two images that collide and poison another client's cached prefix.
    hash_keys: std::collections::hash_map::RandomState,
}

/// One image of a prompt, ready to evaluate into a sequence.
pub struct PromptImage {
    chunks: MtmdInputChunks,
    /// KV cells (and positions) the image takes.
    pub tokens: usize,
    /// A hash of the image's bytes: names its placeholder tokens.
    pub hash: u64,
}

impl std::fmt::Debug for PromptImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptImage")
            .field("tokens", &self.tokens)
            .field("hash", &self.hash)
            .finish()
    }
}

impl Projector {
    /// Load `path` for `model`. Projectors whose images take other positions than KV cells
    /// (M-RoPE: the Qwen2-VL family) are refused: the scheduler places every token at its
    /// own position.
    pub fn load(path: &Path, model: &Model, threads: usize, limits: ImageLimits) -> Result<Self> {
        let marker = format!("<__hearth_media_{:016x}__>", rand::random::<u64>());
        let params = MtmdContextParams {
            use_gpu: model.gpu_layers() > 0,
            print_timings: false,
            n_threads: i32::try_from(threads.max(1)).unwrap_or(i32::MAX),
            media_marker: std::ffi::CString::new(marker.clone()).expect("no NUL in the marker"),
            image_min_tokens: -1,
            image_max_tokens: -1,
        };
        let text = path.to_str().ok_or_else(|| EngineError::ModelUnreadable {
            path: path.to_owned(),
            reason: "the path is not UTF-8".into(),
        })?;
        if !path.is_file() {
            return Err(EngineError::ModelNotFound(path.to_owned()));
        }
        let context = MtmdContext::init_from_file(text, &model.llama, &params).map_err(|e| {
            EngineError::ProjectorFailed {
                path: path.to_owned(),
                reason: format!("{e} (not a projector for this model, or a corrupt file)"),
            }
        })?;
        if !context.support_vision() {
            return Err(EngineError::ProjectorFailed {
                path: path.to_owned(),
                reason: "it has no vision encoder".into(),
            });
        }
        if context.decode_use_mrope() {
            return Err(EngineError::ProjectorFailed {
                path: path.to_owned(),
                reason: "M-RoPE projectors (the Qwen2-VL family) are not supported yet".into(),
            });
        }
        Ok(Projector {
            context: Mutex::new(context),
            marker,
            limits,
            hash_keys: std::collections::hash_map::RandomState::new(),
        })
    }

    /// Decode an image (PNG, JPEG, WebP, GIF's first frame) and tokenize it for the model.
    pub fn image(&self, bytes: &[u8]) -> Result<PromptImage> {
        let rgb = decode_rgb(bytes, self.limits)?;
        let (width, height) = rgb.dimensions();
        let bitmap = MtmdBitmap::from_image_data(width, height, rgb.as_raw())
            .map_err(|e| EngineError::BadImage(format!("mtmd refused the bitmap: {e}")))?;
        let text = MtmdInputText {
            text: self.marker.clone(),
            add_special: false,
            parse_special: true,
        };
        let chunks = self
            .lock()
            .tokenize(text, &[&bitmap])
            .map_err(|e| EngineError::BadImage(format!("the projector could not read it: {e}")))?;
        let tokens = chunks.total_tokens();
        if usize::try_from(chunks.total_positions()).ok() != Some(tokens) || tokens == 0 {
            return Err(EngineError::BadImage(format!(
                "the projector places {tokens} tokens at {} positions",
                chunks.total_positions()
            )));
        }
        Ok(PromptImage {
            chunks,
            tokens,
            hash: self.hash_keys.hash_one(bytes),
        })
    }

    /// Evaluate an image into `slot`'s KV from `position` (llama.cpp decodes; no logits).
    pub(crate) fn eval(
        &self,
        image: &PromptImage,
        context: &mut LlamaContext<'_>,
        position: usize,
        slot: usize,
        batch_size: usize,
    ) -> std::result::Result<(), String> {
        let mut mtmd = self.lock();
        let end = image
            .chunks
            .eval_chunks(
                &mut mtmd,
                context,
                position as i32,
                slot as i32,
                i32::try_from(batch_size).unwrap_or(i32::MAX),
                false,
            )
            .map_err(|e| e.to_string())?;
        if usize::try_from(end).ok() != Some(position + image.tokens) {
            return Err(format!(
                "the image filled positions {position}..{end}, expected {} tokens",
                image.tokens
            ));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MtmdContext> {
        self.context.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The placeholder tokens of an image: one per cell, each a different mix of its hash, so a
/// prompt matches a cached one through an image only where the whole image is the same.
pub fn placeholders(hash: u64, tokens: usize) -> impl Iterator<Item = u32> {
    (0..tokens as u64).map(move |i| {
        let mut z = hash ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        PLACEHOLDER_BIT | (z as u32 & !PLACEHOLDER_BIT)
    })
}

/// An image in a prompt: placeholder tokens `start..start + len`, evaluated as one unit.
#[derive(Debug, Clone)]
pub struct PromptMedia {
    pub start: usize,
    pub len: usize,
    /// `None` only in the scheduler's policy tests (the scripted backend needs no pixels).
    pub image: Option<Arc<PromptImage>>,
}

impl PromptMedia {
    pub fn new(start: usize, image: Arc<PromptImage>) -> PromptMedia {
        PromptMedia {
            start,
            len: image.tokens,
            image: Some(image),
        }
    }

    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// The longest usable prefix of `n` tokens: a prefix that ends inside an image is cut back
/// to the image's start (an image is evaluated whole or not at all).
pub fn media_floor(media: &[PromptMedia], n: usize) -> usize {
    media
        .iter()
        .find(|m| m.start < n && n < m.end())
        .map_or(n, |m| m.start)
}

/// Decode with the `image` crate under `limits` (dimensions and allocation), to RGB.
fn decode_rgb(bytes: &[u8], limits: ImageLimits) -> Result<image::RgbImage> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| EngineError::BadImage(e.to_string()))?;
    let mut bounds = image::Limits::default();
    bounds.max_image_width = Some(limits.max_side);
    bounds.max_image_height = Some(limits.max_side);
    // Room for the largest image allowed as RGBA16 (a larger --max-image-side raises it).
    let side = u64::from(limits.max_side);
    bounds.max_alloc = Some(limits.max_alloc.max(side * side * 8 + (32 << 20)));
    reader.limits(bounds);
    let decoded = reader
        .decode()
        .map_err(|e| EngineError::BadImage(e.to_string()))?;
    Ok(decoded.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_never_tokens_and_differ_per_image_and_place() {
        let a: Vec<u32> = placeholders(1, 64).collect();
        let b: Vec<u32> = placeholders(2, 64).collect();
        assert!(a.iter().all(|&t| t & PLACEHOLDER_BIT != 0));
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 64);
    }

    #[test]
    fn a_prefix_ending_inside_an_image_stops_at_its_start() {
        let media = [PromptMedia {
            start: 10,
            len: 5,
            image: None,
        }];
        assert_eq!(media_floor(&media, 9), 9);
        assert_eq!(media_floor(&media, 10), 10);
        assert_eq!(media_floor(&media, 12), 10);
        assert_eq!(media_floor(&media, 15), 15);
    }

    #[test]
    fn images_over_the_limits_are_refused_before_decoding() {
        let mut png = Vec::new();
        image::RgbImage::new(300, 2)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let tight = ImageLimits {
            max_side: 256,
            max_alloc: 1 << 20,
        };
        assert!(decode_rgb(&png, tight).is_err());
        assert_eq!(
            decode_rgb(&png, ImageLimits::default())
                .unwrap()
                .dimensions(),
            (300, 2)
        );
        assert!(decode_rgb(b"not an image", ImageLimits::default()).is_err());
    }
}

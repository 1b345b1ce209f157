//! A GGUF model loaded through llama.cpp, with the facts the rest of hearth needs about it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;

use crate::backend::backend;
use crate::error::{EngineError, Result};
use crate::placement::{ContextShape, Placement};
use crate::structured::GrammarCompiler;

/// GGUF files start with these four bytes.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Magic, version, tensor count and metadata count: anything shorter cannot be a GGUF.
const GGUF_MIN_HEADER: u64 = 24;

/// What a caller may want to know about a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub architecture: String,
    pub name: Option<String>,
    /// Context length the model was trained with.
    pub context_length: u32,
    pub vocab_size: u32,
    pub bos_token: Option<u32>,
    pub eos_token: Option<u32>,
    /// Every token that ends generation (EOS, end-of-turn, ...).
    pub eog_tokens: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    pub size_bytes: u64,
    pub n_params: u64,
    /// How the GGUF says to pool token vectors into one (`mean`, `cls`, `last`, `rank`),
    /// for embedding models; `None` for generative ones.
    pub pooling: Option<String>,
    /// Whether attention is causal: false for encoders (BERT), which only embed.
    pub causal: bool,
}

/// Options for loading a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Layers to offload and to which GPUs (`auto`: what fits; nothing on CPU-only builds).
    pub placement: Placement,
    /// The context the engine will make: what `auto` fits the layers around.
    pub context: Option<ContextShape>,
    /// Compiled structured-output grammars kept (0 means the default).
    pub grammar_cache_size: usize,
    /// Load the tokenizer and metadata only, no weights: for counting tokens.
    pub vocab_only: bool,
}

/// A loaded model: the llama.cpp weights plus the text of every token.
pub struct Model {
    pub(crate) llama: LlamaModel,
    info: ModelInfo,
    /// Byte text of each token id (special tokens render as their text), computed once.
    pieces: Vec<Vec<u8>>,
    /// Built on the first structured-output request.
    grammars: std::sync::OnceLock<std::result::Result<GrammarCompiler, String>>,
    grammar_cache_size: usize,
    gpu_layers: u32,
}

/// Where a loaded model's layers went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Offload {
    /// Layers (of `layers`) on a GPU.
    pub gpu_layers: u32,
    pub layers: u32,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("info", &self.info).finish()
    }
}

impl Model {
    /// Load a GGUF file (memory-mapped). Missing, unreadable and non-GGUF files are typed errors.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let path = path.as_ref().to_path_buf();
        check_gguf_header(&path)?;
        let (params, asked) = if options.vocab_only {
            let params = LlamaModelParams::default()
                .with_n_gpu_layers(0)
                .with_vocab_only(true);
            (Box::pin(params), 0)
        } else {
            crate::placement::model_params(&path, &options.placement, options.context.as_ref())?
        };
        let llama = LlamaModel::load_from_file(backend(), &path, &params)
            .map_err(|_| EngineError::LoadFailed(path.clone()))?;
        // llama.cpp offloads the output layer as one more: a count above the blocks means all.
        // Without a GPU a count offloads nothing.
        let gpu_layers = if asked == 0 || crate::placement::gpus().is_empty() {
            0
        } else {
            asked.min(llama.n_layer())
        };
        let pieces = token_pieces(&llama);
        let info = read_info(&llama, path);
        Ok(Model {
            llama,
            info,
            pieces,
            grammars: std::sync::OnceLock::new(),
            gpu_layers,
            grammar_cache_size: match options.grammar_cache_size {
                0 => crate::structured::GRAMMAR_CACHE_CAPACITY,
                n => n,
            },
        })
    }

    /// Layers offloaded to a GPU (0: the CPU does everything).
    pub fn gpu_layers(&self) -> u32 {
        self.gpu_layers
    }

    /// Where the model's layers went.
    pub fn offload(&self) -> Offload {
        Offload {
            gpu_layers: self.gpu_layers,
            layers: self.llama.n_layer(),
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Tokenize text. `special` parses control tokens written in the text (e.g. `<|im_start|>`),
    /// which is what a rendered chat template needs.
    pub fn tokenize(&self, text: &str, add_bos: bool, special: bool) -> Vec<u32> {
        self.llama
            .vocab()
            .tokenize(text.as_bytes(), add_bos && self.info.add_bos, special)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// The bytes a token stands for (may be part of a UTF-8 character).
    pub fn token_bytes(&self, token: u32) -> &[u8] {
        self.pieces
            .get(token as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Decode tokens to text, replacing invalid UTF-8.
    pub fn detokenize(&self, tokens: &[u32]) -> String {
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|&t| self.token_bytes(t).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The structured-output compiler for this model's vocabulary.
    pub fn grammars(&self) -> Result<&GrammarCompiler> {
        self.grammars
            .get_or_init(|| {
                GrammarCompiler::new(&self.llama, &self.info.eog_tokens, self.grammar_cache_size)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| EngineError::ContextFailed(e.clone()))
    }

    /// (grammars compiled, cache hits), once structured output has been used.
    pub fn grammar_counters(&self) -> (u64, u64) {
        match self.grammars.get() {
            Some(Ok(g)) => (g.compiled(), g.cache_hits()),
            _ => (0, 0),
        }
    }

    pub fn is_eog(&self, token: u32) -> bool {
        self.info.eog_tokens.contains(&token)
    }

    /// Text of a special token such as BOS, for chat templates.
    pub fn token_text(&self, token: Option<u32>) -> String {
        token
            .map(|t| String::from_utf8_lossy(self.token_bytes(t)).into_owned())
            .unwrap_or_default()
    }
}

fn check_gguf_header(path: &Path) -> Result<()> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::ModelNotFound(path.to_path_buf()),
        _ => EngineError::ModelUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    let meta = file.metadata().map_err(|e| EngineError::ModelUnreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(EngineError::ModelUnreadable {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    if meta.len() < GGUF_MIN_HEADER {
        return Err(EngineError::NotGguf {
            path: path.to_path_buf(),
            reason: format!("only {} bytes", meta.len()),
        });
    }
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| EngineError::ModelUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if &magic != GGUF_MAGIC {
        return Err(EngineError::NotGguf {
            path: path.to_path_buf(),
            reason: "missing GGUF magic bytes".into(),
        });
    }
    Ok(())
}

fn token_pieces(llama: &LlamaModel) -> Vec<Vec<u8>> {
    let vocab = llama.vocab();
    (0..llama.n_vocab())
        .map(|id| vocab.token_to_piece(LlamaToken(id), true, None))
        .collect()
}

fn read_info(llama: &LlamaModel, path: PathBuf) -> ModelInfo {
    let vocab = llama.vocab();
    let valid = |t: LlamaToken| (t.0 >= 0 && t.0 < llama.n_vocab()).then_some(t.0 as u32);
    let eog_tokens = (0..llama.n_vocab())
        .filter(|&id| vocab.is_eog(LlamaToken(id)))
        .map(|id| id as u32)
        .collect();
    let architecture = llama
        .meta_val_str("general.architecture")
        .unwrap_or_else(|_| "unknown".into());
    ModelInfo {
        path,
        name: llama.meta_val_str("general.name").ok(),
        context_length: llama.n_ctx_train(),
        vocab_size: llama.n_vocab() as u32,
        bos_token: valid(vocab.bos()),
        eos_token: valid(vocab.eos()),
        eog_tokens,
        add_bos: vocab.should_add_bos(),
        chat_template: llama
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok()),
        size_bytes: llama.size(),
        n_params: llama.n_params(),
        pooling: llama
            .meta_val_str(&format!("{architecture}.pooling_type"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .and_then(crate::gguf::pooling_name)
            .map(str::to_owned),
        causal: llama
            .meta_val_str(&format!("{architecture}.attention.causal"))
            .map_or(true, |v| v.trim() != "false"),
        architecture,
    }
}

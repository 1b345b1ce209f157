//! Sentence embeddings: a second llama.cpp context on the same model, with embeddings on
//! and a pooling type, run on its own thread. Inputs are packed into batches — each input
//! its own sequence, whole (an encoder attends both ways, so a sequence may not be split
//! across ubatches) — and each pooled vector comes back L2-normalised, as OpenAI's are.
//! Jobs take turns a batch at a time, so a one-sentence request waits for one batch, not for
//! a 2,048-input job ahead of it; a cancelled job stops at its next batch.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use crate::backend::backend;
use crate::error::{EngineError, Result};
use crate::model::Model;

/// How token vectors become one vector per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// What the GGUF says (`{arch}.pooling_type`); a model without one cannot embed.
    #[default]
    Model,
    Mean,
    Cls,
    Last,
}

impl Pooling {
    fn llama(self) -> LlamaPoolingType {
        match self {
            Pooling::Model => LlamaPoolingType::Unspecified,
            Pooling::Mean => LlamaPoolingType::Mean,
            Pooling::Cls => LlamaPoolingType::Cls,
            Pooling::Last => LlamaPoolingType::Last,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmbedConfig {
    pub pooling: Pooling,
    pub threads: usize,
    /// Tokens decoded at once; also the longest input (the model's training context, at
    /// most, as longer inputs attend past what it learnt).
    pub batch_tokens: u32,
    /// Inputs decoded at once.
    pub batch_inputs: u32,
}

/// Vectors of one call, or why there are none.
pub type Embeddings = Result<Vec<Vec<f32>>>;
type Reply = Box<dyn FnOnce(Embeddings) + Send>;

struct Job {
    inputs: Vec<Vec<u32>>,
    /// The first input not embedded yet, and the vectors so far.
    next: usize,
    vectors: Vec<Vec<f32>>,
    cancelled: Arc<AtomicBool>,
    reply: Reply,
}

/// The embedding thread of one model.
pub struct Embedder {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dims: usize,
    max_tokens: usize,
}

impl Embedder {
    /// Create the context (an error if the model cannot pool) and start its thread.
    pub fn start(model: Arc<Model>, config: EmbedConfig) -> Result<Embedder> {
        match (config.pooling, model.info().pooling.as_deref()) {
            (Pooling::Model, None) => return Err(EngineError::NoPooling),
            // A reranker's pooling gives scores, not vectors.
            (Pooling::Model, Some("rank")) => {
                return Err(EngineError::InvalidRequest(
                    "this model ranks (rank pooling); it makes no embeddings".into(),
                ))
            }
            _ => {}
        }
        let max_tokens = config
            .batch_tokens
            .min(model.info().context_length.max(1))
            .max(1);
        let dims = model.llama.n_embd_out().max(0) as usize;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("hearth-embed".into())
            .spawn(move || run(model, config, max_tokens, inbox, ready_tx))
            .map_err(|e| EngineError::ContextFailed(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Embedder {
                jobs: Some(jobs),
                thread: Some(thread),
                dims,
                max_tokens: max_tokens as usize,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(EngineError::ContextFailed(
                "the embedding thread ended while starting".into(),
            )),
        }
    }

    /// Length of each vector.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The longest input, in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Embed `inputs` (token ids, each at most `max_tokens` and not empty); `reply` runs
    /// on the embedding thread when they are done. Setting `cancelled` stops the job at its
    /// next batch (its reply then reports `Cancelled`).
    pub fn submit(
        &self,
        inputs: Vec<Vec<u32>>,
        cancelled: Arc<AtomicBool>,
        reply: impl FnOnce(Embeddings) + Send + 'static,
    ) {
        let job = Job {
            vectors: Vec::with_capacity(inputs.len()),
            inputs,
            next: 0,
            cancelled,
            reply: Box::new(reply),
        };
        if let Some(Err(mpsc::SendError(job))) = self.jobs.as_ref().map(|j| j.send(job)) {
            (job.reply)(Err(EngineError::ContextFailed(
                "the embedding thread has stopped".into(),
            )));
        }
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    model: Arc<Model>,
    config: EmbedConfig,
    max_tokens: u32,
    inbox: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<()>>,
) {
    let threads = i32::try_from(config.threads.max(1)).unwrap_or(i32::MAX);
    let batch_inputs = config.batch_inputs.max(1);
    let params = LlamaContextParams::default()
        .with_embeddings(true)
        .with_pooling_type(config.pooling.llama())
        .with_n_ctx(NonZeroU32::new(max_tokens))
        .with_n_batch(max_tokens)
        .with_n_ubatch(max_tokens)
        .with_n_seq_max(batch_inputs)
        // Sequences never attend to each other; one shared buffer holds a whole batch.
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut context = match model.llama.new_context(backend(), params) {
        Ok(context) => context,
        Err(e) => {
            let _ = ready.send(Err(EngineError::ContextFailed(e.to_string())));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    // One sequence id per token.
    let mut batch = LlamaBatch::new(max_tokens as usize, 1);
    let mut active: VecDeque<Job> = VecDeque::new();
    loop {
        // Wait for work only when there is none; take every job that has arrived. With
        // the sender gone (the worker is stopping), what is left is answered, not done.
        if active.is_empty() {
            match inbox.recv() {
                Ok(job) => active.push_back(job),
                Err(_) => return,
            }
        }
        loop {
            match inbox.try_recv() {
                Ok(job) => active.push_back(job),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    for job in active.drain(..) {
                        (job.reply)(Err(EngineError::EngineStopped));
                    }
                    return;
                }
            }
        }
        let Some(mut job) = active.pop_front() else {
            continue;
        };
        if job.cancelled.load(Ordering::Relaxed) {
            (job.reply)(Err(EngineError::Cancelled));
            continue;
        }
        if job.next >= job.inputs.len() {
            (job.reply)(Ok(std::mem::take(&mut job.vectors)));
            continue;
        }
        // As many whole inputs as fit in one batch.
        let start = job.next;
        let mut end = start;
        let mut tokens = 0;
        while end < job.inputs.len()
            && end - start < batch_inputs as usize
            && tokens + job.inputs[end].len() <= max_tokens as usize
        {
            tokens += job.inputs[end].len();
            end += 1;
        }
        let done = if end == start {
            Err(EngineError::ContextFailed(format!(
                "an input of {} tokens is longer than {max_tokens}",
                job.inputs[start].len()
            )))
        } else {
            embed_batch(&mut context, &mut batch, &job.inputs[start..end])
        };
        match done {
            Err(e) => (job.reply)(Err(e)),
            Ok(mut vectors) => {
                job.vectors.append(&mut vectors);
                job.next = end;
                if job.next == job.inputs.len() {
                    (job.reply)(Ok(std::mem::take(&mut job.vectors)));
                } else {
                    // Its next batch after every other job's.
                    active.push_back(job);
                }
            }
        }
    }
}

fn embed_batch(
    context: &mut llama_cpp_2::context::LlamaContext<'_>,
    batch: &mut LlamaBatch,
    inputs: &[Vec<u32>],
) -> Result<Vec<Vec<f32>>> {
    let failed = |e: &dyn std::fmt::Display| EngineError::ContextFailed(e.to_string());
    // What earlier batches left (a causal model keeps KV) must not be attended to.
    context.clear_kv_cache();
    batch.clear();
    for (seq, input) in inputs.iter().enumerate() {
        for (position, &token) in input.iter().enumerate() {
            // Every token's output feeds the pooling.
            batch
                .add(
                    LlamaToken(token as i32),
                    position as i32,
                    &[seq as i32],
                    true,
                )
                .map_err(|e| failed(&e))?;
        }
    }
    context.decode(batch).map_err(|e| failed(&e))?;
    inputs
        .iter()
        .enumerate()
        .map(|(seq, _)| {
            let pooled = context
                .embeddings_seq_ith(seq as i32)
                .map_err(|e| failed(&e))?;
            Ok(normalised(pooled))
        })
        .collect()
}

/// `v / |v|` (a zero vector stays zero).
fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::normalised;

    #[test]
    fn vectors_come_back_unit_length() {
        let v = normalised(&[3.0, 4.0]);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(normalised(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}

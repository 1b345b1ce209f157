//! The seam between the scheduler's policy and the engine that runs the model: the
//! scheduler decides what to decode and which cached KV to keep, reuse or copy; a `Backend`
//! executes (llama.cpp here; a scripted mock in the policy tests), and a `Vocabulary` says
//! what each token is.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LlamaStateSeqFlags, SeqState};

use crate::model::Model;
use crate::vision::{Projector, PromptMedia};

/// One token of a decode batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry {
    pub token: u32,
    /// Its position in its slot's sequence.
    pub position: usize,
    /// The slot (llama.cpp sequence id) it belongs to.
    pub slot: usize,
    /// Whether its logits are read after the decode.
    pub logits: bool,
}

/// Decodes batches and keeps each slot's KV cells.
pub trait Backend {
    /// Decode a batch: each entry's KV is written to its slot at its position.
    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), String>;
    /// Evaluate an image into `slot` at `media.start` (its own pass; no logits). `tokens`
    /// are its placeholders, what the slot's cache will say it holds.
    fn decode_media(
        &mut self,
        slot: usize,
        media: &PromptMedia,
        tokens: &[u32],
    ) -> Result<(), String>;
    /// Whether `decode` returns before the pass has run (a GPU computing on its own while
    /// the host goes on); `synchronize` then waits for it.
    fn asynchronous(&self) -> bool {
        false
    }
    /// Wait until the last `decode` has run.
    fn synchronize(&mut self) {}
    /// The logits of the `index`-th entry of the last batch (one with `logits` set).
    fn logits(&self, index: usize) -> &[f32];
    /// From the next decode on, let the device choose `slot`'s token itself — the argmax
    /// of its logits plus `bias` — instead of handing the logits out (`None`: hand them
    /// out again). Returns whether the device chooses for the slot. Its logits must not be
    /// read then (where every output of a ubatch is chosen on the device, llama.cpp copies
    /// none out at all); read `device_choice`.
    fn choose_on_device(&mut self, _slot: usize, bias: Option<&[(u32, f32)]>) -> bool {
        let _ = bias;
        false
    }
    /// The device's choice for the `index`-th entry of the last batch (its slot chose on
    /// the device when the batch was decoded).
    fn device_choice(&self, _index: usize) -> Option<u32> {
        None
    }
    /// Drop a slot's KV from position `from` on (`0`: all of it).
    fn remove(&mut self, slot: usize, from: usize);
    /// Make `dst` hold a copy of all of `src`'s KV (whole sequences only: llama.cpp asserts
    /// on partial copies across KV streams).
    fn copy(&mut self, src: usize, dst: usize);
    /// A slot's KV, copied out to host memory (`None` if the backend cannot).
    fn save(&mut self, slot: usize) -> Option<Self::Snapshot>;
    /// Replace a slot's KV with a saved one; false if it does not fit.
    fn restore(&mut self, slot: usize, snapshot: &Self::Snapshot) -> bool;
    /// Bytes a snapshot holds.
    fn snapshot_bytes(snapshot: &Self::Snapshot) -> usize;
    /// What `save` returns.
    type Snapshot;
}

/// What the scheduler needs to know about tokens.
/// (`Sync`: sequences take their tokens on the sampling threads.)
pub trait Vocabulary: Sync {
    fn token_bytes(&self, token: u32) -> &[u8];
    fn is_eog(&self, token: u32) -> bool;
    fn vocab_size(&self) -> usize;
}

impl Vocabulary for Model {
    fn token_bytes(&self, token: u32) -> &[u8] {
        Model::token_bytes(self, token)
    }

    fn is_eog(&self, token: u32) -> bool {
        Model::is_eog(self, token)
    }

    fn vocab_size(&self) -> usize {
        self.info().vocab_size as usize
    }
}

/// llama.cpp behind the seam: one context, one reusable batch.
pub struct LlamaBackend<'m> {
    context: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    capacity: usize,
    /// Per entry of the last batch, its row of llama.cpp's logits (entries with logits are
    /// stored in batch order), or `None`.
    logit_rows: Vec<Option<usize>>,
    /// Where the last batch's logits start once it has run (an address: taken once per step
    /// by `synchronize`), 0 before. `llama_get_logits_ith` synchronizes the device on every
    /// call: 32 sequences paid 32 CUDA stream synchronizations a step for it.
    logits_at: usize,
    vocab_size: usize,
    /// The model's vision projector, if it has one.
    projector: Option<std::sync::Arc<Projector>>,
    /// Every layer runs on a GPU: llama.cpp's decode launches the pass and returns.
    offloaded: bool,
    /// Slots may have their greedy tokens chosen on the device (`choose_on_device`).
    device_choice: bool,
    /// Per slot, the logit bias of the greedy chain attached to it (`None`: none).
    chains: Vec<Option<Vec<(u32, f32)>>>,
    /// Per entry of the last batch, whether its slot chose on the device.
    chosen_on_device: Vec<bool>,
}

impl<'m> LlamaBackend<'m> {
    pub fn new(
        context: LlamaContext<'m>,
        batch_size: usize,
        projector: Option<std::sync::Arc<Projector>>,
        offloaded: bool,
        vocab_size: usize,
        device_choice: bool,
    ) -> LlamaBackend<'m> {
        LlamaBackend {
            context,
            batch: LlamaBatch::new(batch_size, 1),
            capacity: batch_size,
            logit_rows: Vec::with_capacity(batch_size),
            logits_at: 0,
            vocab_size,
            projector,
            offloaded,
            device_choice,
            chains: Vec::new(),
            chosen_on_device: Vec::with_capacity(batch_size),
        }
    }
}

impl LlamaBackend<'_> {
    /// Run a one-token and a 16-token pass and forget them. CUDA loads each kernel on its
    /// first use (tens of ms in all), which would otherwise land on the first request's time
    /// to first token; llama-server warms up the same way. For models with layers on a GPU:
    /// on the CPU nothing is loaded lazily.
    pub fn warm_up(&mut self) {
        for len in [1, 16.min(self.capacity)] {
            let batch: Vec<BatchEntry> = (0..len)
                .map(|position| BatchEntry {
                    token: 0,
                    position,
                    slot: 0,
                    logits: position + 1 == len,
                })
                .collect();
            let decoded = self.decode(&batch);
            self.synchronize();
            self.remove(0, 0);
            if let Err(e) = decoded {
                tracing::warn!(%e, "warming up the GPU failed");
                return;
            }
        }
    }
}

impl Backend for LlamaBackend<'_> {
    fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), String> {
        if batch.len() > self.capacity {
            return Err(format!(
                "a batch of {} tokens exceeds the batch size {}",
                batch.len(),
                self.capacity
            ));
        }
        self.batch.clear();
        self.logits_at = 0;
        self.logit_rows.clear();
        self.chosen_on_device.clear();
        let mut rows = 0;
        for entry in batch {
            self.chosen_on_device
                .push(entry.logits && self.chains.get(entry.slot).is_some_and(Option::is_some));
            self.logit_rows.push(entry.logits.then(|| {
                rows += 1;
                rows - 1
            }));
            self.batch
                .add(
                    LlamaToken(entry.token as i32),
                    entry.position as i32,
                    &[entry.slot as i32],
                    entry.logits,
                )
                .map_err(|e| e.to_string())?;
        }
        self.context
            .decode(&mut self.batch)
            .map_err(|e| e.to_string())
    }

    fn decode_media(&mut self, slot: usize, media: &PromptMedia, _: &[u32]) -> Result<(), String> {
        // Its passes replace llama.cpp's logits: the last batch's rows are gone.
        self.logits_at = 0;
        self.logit_rows.clear();
        self.chosen_on_device.clear();
        // An image's passes read no token: the slot's own chain comes off (a sequence with
        // images is chosen on the host anyway).
        self.choose_on_device(slot, None);
        let (Some(projector), Some(image)) = (&self.projector, &media.image) else {
            return Err("this model has no vision projector".into());
        };
        projector.eval(image, &mut self.context, media.start, slot, self.capacity)
    }

    fn asynchronous(&self) -> bool {
        self.offloaded
    }

    fn synchronize(&mut self) {
        self.context.synchronize();
        if self.logit_rows.iter().any(Option::is_some) {
            self.logits_at = self.context.get_logits().as_ptr() as usize;
        }
    }

    fn logits(&self, index: usize) -> &[f32] {
        match self.logit_rows.get(index).copied().flatten() {
            Some(row) if self.logits_at != 0 => {
                // SAFETY: after the batch has run, llama.cpp holds one row of `vocab_size`
                // logits per entry with logits, in batch order, in one buffer it allocated
                // (`llama_get_logits`; its address comes through the crate's first-row
                // slice, the only way the crate hands it out), until the next decode — which
                // takes `&mut self`, so no slice handed out here outlives them.
                unsafe {
                    std::slice::from_raw_parts(
                        (self.logits_at as *const f32).add(row * self.vocab_size),
                        self.vocab_size,
                    )
                }
            }
            _ => self.context.get_logits_ith(index as i32),
        }
    }

    fn choose_on_device(&mut self, slot: usize, bias: Option<&[(u32, f32)]>) -> bool {
        if self.chains.len() <= slot {
            self.chains.resize(slot + 1, None);
        }
        let current = &self.chains[slot];
        if current.as_deref() == bias {
            return bias.is_some();
        }
        let Some(bias) = bias.filter(|_| self.device_choice) else {
            // Detach (also where device choice is off: nothing is attached then).
            if current.is_some() {
                self.context.set_sampler(slot as i32, None);
                self.chains[slot] = None;
            }
            return false;
        };
        let biases: Vec<LlamaLogitBias> = bias
            .iter()
            .map(|&(token, bias)| LlamaLogitBias::new(LlamaToken(token as i32), bias))
            .collect();
        let mut chain = Vec::with_capacity(2);
        if !biases.is_empty() {
            chain.push(LlamaSampler::logit_bias(self.vocab_size as i32, &biases));
        }
        chain.push(LlamaSampler::greedy());
        // llama.cpp re-plans its compute graph at the next decode (`sched_reserve`); a
        // slot keeps its chain between requests, so that happens when a slot changes
        // between greedy and sampled requests (or to another logit bias, or a sequence
        // moves to a slot without a chain), not per request.
        if self
            .context
            .set_sampler(slot as i32, Some(LlamaSampler::chain_simple(chain)))
        {
            self.chains[slot] = Some(bias.to_vec());
            true
        } else {
            tracing::warn!(
                slot,
                "llama.cpp cannot choose tokens on this device; choosing on the host"
            );
            self.device_choice = false;
            // Every slot chooses on the host from now on.
            for (other, chain) in self.chains.iter_mut().enumerate() {
                if chain.take().is_some() {
                    self.context.set_sampler(other as i32, None);
                }
            }
            false
        }
    }

    fn device_choice(&self, index: usize) -> Option<u32> {
        if !self.chosen_on_device.get(index).copied().unwrap_or(false) {
            return None;
        }
        self.context
            .sampled_token_ith(index as i32)
            .and_then(|token| u32::try_from(token.0).ok())
    }

    fn remove(&mut self, slot: usize, from: usize) {
        let from = (from > 0).then_some(from as u32);
        if let Err(e) = self
            .context
            .clear_kv_cache_seq(Some(slot as u32), from, None)
        {
            tracing::warn!(%e, slot, "removing KV cells failed");
        }
    }

    fn copy(&mut self, src: usize, dst: usize) {
        if let Err(e) = self
            .context
            .copy_kv_cache_seq(src as i32, dst as i32, None, None)
        {
            tracing::warn!(%e, src, dst, "copying a sequence's KV failed");
        }
    }

    type Snapshot = SeqState;

    fn save(&mut self, slot: usize) -> Option<SeqState> {
        self.context
            .state_seq_get(slot as i32, LlamaStateSeqFlags::empty())
            .inspect_err(|e| tracing::warn!(%e, slot, "saving a sequence's KV failed"))
            .ok()
    }

    fn restore(&mut self, slot: usize, snapshot: &SeqState) -> bool {
        self.context
            .state_seq_set(snapshot, slot as i32)
            .inspect_err(|e| tracing::warn!(%e, slot, "restoring a sequence's KV failed"))
            .is_ok()
    }

    fn snapshot_bytes(snapshot: &SeqState) -> usize {
        snapshot.byte_len()
    }
}

/// A scripted backend for policy tests: each slot's KV is the list of tokens written at
/// each position, and the logits after a token name a next token computed from every token
/// before it in that slot — so reusing the wrong cache, or leaving a hole, changes the
/// output (or fails the decode) just as it would with a real model. As in llama.cpp, a
/// copy between slots changes the destination's cells at once but moves the data only at
/// the next decode, in the order queued; saving or decoding a slot whose data does not
/// match its cells panics.
#[cfg(test)]
pub mod mock {
    use super::*;

    #[derive(Debug, Default)]
    pub struct ScriptedBackend {
        pub vocab: usize,
        /// Tokens per slot, by position, as its cells say (llama.cpp's metadata).
        pub kv: Vec<Vec<u32>>,
        /// What each slot's buffer holds (may run past its cells, or lag a queued copy).
        data: Vec<Vec<u32>>,
        /// Copies queued for the next decode: (source, destination).
        queued: Vec<(usize, usize)>,
        /// Entries of every decode so far (to count prefill work).
        pub decoded: Vec<Vec<BatchEntry>>,
        /// Per decode, the runs of consecutive slot ids in batch order: llama.cpp's passes
        /// over the weights with one KV stream per slot (`split_equal(sequential)`).
        pub runs: Vec<usize>,
        logits: Vec<Vec<f32>>,
        /// Make the next decode fail.
        pub fail_next: bool,
        /// Snapshots taken and restored.
        pub saves: usize,
        pub restores: usize,
        /// Whole-sequence copies.
        pub copies: usize,
        /// Images evaluated.
        pub media_decoded: usize,
        /// Pretend to be a device that computes on its own (`Backend::asynchronous`).
        pub asynchronous: bool,
        /// Choose greedy tokens "on the device" when asked (`Backend::choose_on_device`).
        pub device: bool,
        /// Per slot, the bias of its device chain (`None`: none).
        pub chains: Vec<Option<Vec<(u32, f32)>>>,
        /// Chains attached or taken off (each a re-plan of llama.cpp's graph).
        pub chain_changes: usize,
        /// Per entry of the last decode, the device's choice (where its slot had a chain).
        choices: Vec<Option<u32>>,
        /// Whether the last decode handed logits out: as llama.cpp, only if some output
        /// belongs to a slot without a chain.
        raw_logits: bool,
    }

    impl ScriptedBackend {
        pub fn new(slots: usize, vocab: usize) -> ScriptedBackend {
            ScriptedBackend {
                vocab,
                kv: vec![Vec::new(); slots],
                data: vec![Vec::new(); slots],
                chains: vec![None; slots],
                ..ScriptedBackend::default()
            }
        }

        /// llama.cpp's `update` at the start of a decode: the queued copies, in order.
        fn run_copies(&mut self) {
            for (src, dst) in std::mem::take(&mut self.queued) {
                self.data[dst] = self.data[src].clone();
            }
        }

        /// Write `tokens` at `position` into a slot's data, whose earlier positions must be
        /// what its cells say (the cells already hold the new tokens).
        fn check_then_write(&mut self, slot: usize, position: usize, tokens: &[u32]) {
            self.check(slot, position);
            let data = &mut self.data[slot];
            data.truncate(position);
            data.extend_from_slice(tokens);
        }

        /// A slot's data up to `len` must be what its cells say before it is read or
        /// extended.
        fn check(&self, slot: usize, len: usize) {
            let data = &self.data[slot];
            assert!(
                data.len() >= len && data[..len] == self.kv[slot][..len],
                "slot {slot}: its data up to {len} does not match its cells (a copy not yet \
                 made, or overwritten)"
            );
        }

        /// The token that follows this history: never 0 (end of turn) unless the history is
        /// long, so replies have some length.
        pub fn next_token(vocab: usize, history: &[u32]) -> u32 {
            let mut h: u64 = 1469598103934665603;
            for &t in history {
                h = (h ^ u64::from(t)).wrapping_mul(1099511628211);
            }
            1 + (h % (vocab as u64 - 1)) as u32
        }

        /// Prompt tokens decoded so far (entries without logits, plus prompt ends).
        pub fn tokens_decoded(&self) -> usize {
            self.decoded.iter().map(Vec::len).sum()
        }
    }

    impl Backend for ScriptedBackend {
        fn decode(&mut self, batch: &[BatchEntry]) -> Result<(), String> {
            if std::mem::take(&mut self.fail_next) {
                return Err("scripted failure".into());
            }
            self.logits.clear();
            self.choices.clear();
            self.run_copies();
            self.raw_logits = batch
                .iter()
                .any(|e| e.logits && self.chains[e.slot].is_none());
            for entry in batch {
                // An image's placeholders must never be decoded as text.
                if entry.token as usize >= self.vocab {
                    return Err(format!("token {} is outside the vocabulary", entry.token));
                }
                let kv = &mut self.kv[entry.slot];
                if entry.position != kv.len() {
                    return Err(format!(
                        "slot {} holds {} tokens; a token at position {} leaves a hole or overwrites",
                        entry.slot,
                        kv.len(),
                        entry.position
                    ));
                }
                kv.push(entry.token);
                self.check_then_write(entry.slot, entry.position, &[entry.token]);
                let mut logits = vec![0.0; self.vocab];
                if entry.logits {
                    let next = Self::next_token(self.vocab, &self.data[entry.slot]);
                    logits[next as usize] = 10.0;
                }
                let chain = self.chains[entry.slot].as_ref().filter(|_| entry.logits);
                self.choices.push(chain.map(|bias| {
                    let mut biased = logits.clone();
                    for &(token, b) in bias {
                        biased[token as usize] += b;
                    }
                    let max = biased.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    biased.iter().position(|&l| l == max).unwrap_or(0) as u32
                }));
                self.logits.push(logits);
            }
            self.decoded.push(batch.to_vec());
            self.runs.push(
                batch
                    .iter()
                    .enumerate()
                    .filter(|&(i, e)| {
                        i == 0 || {
                            let before = batch[i - 1].slot;
                            e.slot != before && e.slot != before + 1
                        }
                    })
                    .count(),
            );
            Ok(())
        }

        fn decode_media(
            &mut self,
            slot: usize,
            media: &PromptMedia,
            tokens: &[u32],
        ) -> Result<(), String> {
            if std::mem::take(&mut self.fail_next) {
                return Err("scripted failure".into());
            }
            self.run_copies();
            self.choices.clear();
            self.choose_on_device(slot, None);
            let kv = &mut self.kv[slot];
            if media.start != kv.len() || tokens.len() != media.len {
                return Err(format!(
                    "slot {slot} holds {} tokens; an image at {} leaves a hole or overwrites",
                    kv.len(),
                    media.start
                ));
            }
            kv.extend_from_slice(tokens);
            self.check_then_write(slot, media.start, tokens);
            self.media_decoded += 1;
            Ok(())
        }

        fn asynchronous(&self) -> bool {
            self.asynchronous
        }

        fn logits(&self, index: usize) -> &[f32] {
            assert!(
                self.raw_logits,
                "logits read after a decode whose every output was chosen on the device"
            );
            assert!(
                self.choices.get(index).is_none_or(Option::is_none),
                "logits read for an entry the device chose for"
            );
            &self.logits[index]
        }

        fn choose_on_device(&mut self, slot: usize, bias: Option<&[(u32, f32)]>) -> bool {
            let bias = bias.filter(|_| self.device);
            if self.chains[slot].as_deref() != bias {
                self.chains[slot] = bias.map(<[_]>::to_vec);
                self.chain_changes += 1;
            }
            bias.is_some()
        }

        fn device_choice(&self, index: usize) -> Option<u32> {
            self.choices.get(index).copied().flatten()
        }

        fn remove(&mut self, slot: usize, from: usize) {
            self.kv[slot].truncate(from);
        }

        fn copy(&mut self, src: usize, dst: usize) {
            self.copies += 1;
            self.kv[dst] = self.kv[src].clone();
            self.queued.push((src, dst));
        }

        type Snapshot = Vec<u32>;

        fn save(&mut self, slot: usize) -> Option<Vec<u32>> {
            self.saves += 1;
            self.check(slot, self.kv[slot].len());
            Some(self.kv[slot].clone())
        }

        fn restore(&mut self, slot: usize, snapshot: &Vec<u32>) -> bool {
            self.restores += 1;
            self.kv[slot] = snapshot.clone();
            self.data[slot] = snapshot.clone();
            true
        }

        fn snapshot_bytes(snapshot: &Vec<u32>) -> usize {
            snapshot.len() * 4
        }
    }

    /// Tokens that spell themselves as `<id>`; token 0 ends the turn.
    pub struct ScriptedVocabulary {
        pieces: Vec<Vec<u8>>,
    }

    impl ScriptedVocabulary {
        pub fn new(size: usize) -> ScriptedVocabulary {
            ScriptedVocabulary {
                pieces: (0..size).map(|i| format!("<{i}>").into_bytes()).collect(),
            }
        }
    }

    impl Vocabulary for ScriptedVocabulary {
        fn token_bytes(&self, token: u32) -> &[u8] {
            &self.pieces[token as usize]
        }

        fn is_eog(&self, token: u32) -> bool {
            token == 0
        }

        fn vocab_size(&self) -> usize {
            self.pieces.len()
        }
    }
}

//! Continuous batching over one backend (llama.cpp, or a scripted mock in tests).
//!
//! Each step decodes one token for every running sequence plus a chunk of pending prompt
//! tokens (chunked prefill), so streams keep flowing while a long prompt is read. Sequences
//! join and leave between steps. A finished sequence's KV stays in its slot as a prompt
//! cache: a new request starts from the longest prefix of its prompt found in any slot
//! (copied into the slot it gets) and prefills only the rest.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::cpu_gate::{CpuGate, Turn};
use crate::detok::Utf8Decoder;
use crate::engine::{EngineConfig, EngineStats, EventSink};
use crate::exec::{Backend, BatchEntry, Vocabulary};
use crate::handoff::{Handoff, PublishOnDrop};
use crate::host_cache::HostCache;
use crate::request::{
    Event, FinishReason, GeneratedToken, GenerationRequest, Priority, RequestId, Usage,
};
use crate::sampling::{Sampler, TokenLogprobs};
use crate::step_times::Phase;
use crate::stop::{StopMatcher, StopOutcome};
use crate::structured::Constraint;
use crate::vision::{media_floor, PromptMedia};

pub(crate) enum Command {
    Submit(Box<Submission>),
    Cancel(RequestId),
    Shutdown,
}

pub(crate) struct Submission {
    pub id: RequestId,
    pub request: GenerationRequest,
    pub constraint: Option<Constraint>,
    pub sink: EventSink,
}

/// A sequence that owns a slot (a llama.cpp sequence id and its KV cells).
struct Sequence {
    id: RequestId,
    priority: Priority,
    slot: usize,
    prompt: Vec<u32>,
    /// The prompt's images (over placeholder tokens), in order.
    media: Vec<PromptMedia>,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Prompt tokens that were in the cache before this sequence started (not prefilled).
    cached: usize,
    /// Generated tokens written to the KV cache, in order (what the slot holds after the
    /// prompt).
    history: Vec<u32>,
    /// Sampled token not yet decoded (its KV entry is written next step).
    pending_token: Option<u32>,
    /// Position of the next token written to the KV cache.
    position: usize,
    generated: usize,
    max_tokens: usize,
    sampler: Sampler,
    /// Its tokens are chosen by the device, an argmax after this logit bias (`None`: here,
    /// from the logits). See `Backend::choose_on_device`.
    device_bias: Option<Vec<(u32, f32)>>,
    decoder: Utf8Decoder,
    stop: StopMatcher,
    constraint: Option<Constraint>,
    sink: EventSink,
    /// Index of this sequence's logits in the current batch.
    logits_at: Option<usize>,
    /// What this step's token did to it (`advance`), between the sampling threads and the
    /// engine thread ending the finished.
    outcome: Option<Outcome>,
    /// Events held back until the next pass is launched (see `Scheduler::defer_emits`).
    deferred: Vec<Event>,
    /// Its sink refused a held-back event: nobody listens; it ends at the next sampling.
    abandoned: bool,
}

/// What a free slot's KV holds, for the prompt cache.
#[derive(Debug, Clone, Default)]
struct SlotCache {
    tokens: Vec<u32>,
    /// How many of `tokens` were prompt; the rest is the reply generated after it.
    prompt_len: usize,
    /// When the slot was last released (a counter): the oldest cache is evicted first.
    released_at: u64,
}

/// A sequence paused for a high-priority one: everything it was doing, and its KV in host
/// memory (`None`: it had none yet), until a slot frees.
struct Paused<S> {
    seq: Sequence,
    snapshot: Option<S>,
}

/// Prompt tokens decoded again on a cache hit, for fresh logits. One: a tail of one is a
/// one-row pass (llama.cpp's `vec_dot` kernels) whatever runs beside it, so repeats of a
/// request are deterministic. (A tail of two is tiled when read alone but split into
/// one-row passes beside other sequences' decode tokens: same-seed requests with `n` > 1
/// then sampled differently.)
const REDECODE_TOKENS: usize = 1;

/// Longest an idle engine holds its first step for requests still being prepared: a few
/// preparations' worth (1-2 ms each for a 400-token chat on a GPU machine's host).
const GATHER_LIMIT: Duration = Duration::from_millis(5);

/// Steps a scatter of running slots may last before `pack` moves sequences together.
const PACK_AFTER_STEPS: usize = 8;

/// Caches shorter than this are not saved to host memory (the copy costs more than it saves).
const HOST_MIN_TOKENS: usize = 64;

/// A shared prefix at least this long is worth waiting a step for rather than prefilling it
/// twice.
const SHARE_PREFILL_TOKENS: usize = 16;

/// A cache shorter than this is not worth a copy to keep (a copy moves the slot's whole KV
/// buffer, whatever its length).
const KEEP_CACHE_TOKENS: usize = 16;

/// A restore from host memory copies the whole cached prefix back; it is worth it once it
/// spares prefilling at least 1/`RESTORE_GAIN_RATIO` of that prefix. Copying a token's KV
/// costs far less than computing it: SmolLM2-135M on 2 CPU threads prefills ~3 ms a token
/// and copies its 23 KB in microseconds; an 8B model on a GPU prefills ~0.2 ms a token and
/// moves 128 KB over PCIe in ~5 µs. (A flat 16 tokens left a warm burst prefilling 15.)
const RESTORE_GAIN_RATIO: usize = 32;
const RESTORE_MIN_GAIN: usize = 4;

/// On an asynchronous backend, this many sequences to sample in a step or more are spread
/// over a pool of threads kept for it, at least `SEQUENCES_PER_THREAD` each and at most one
/// per CPU up to `MAX_SAMPLING_THREADS` (sampling one sequence reads its whole vocabulary of
/// logits: ~35 µs greedy for 49k on the H200 machine's CPU, more stochastic).
const PARALLEL_SAMPLING_MIN: usize = 8;
const SEQUENCES_PER_THREAD: usize = 4;
const MAX_SAMPLING_THREADS: usize = 8;

/// The sampling threads wake this long before the pass is expected to end (as long as the
/// last one) and spin until the logits are there (`Handoff`): more than a sleep's overshoot.
/// On an H100 (8B, 32 sequences, four rounds alternating) 0.956x llama-batched-bench with
/// it, 0.944x with threads woken once the logits were there. 16 threads of 2 sequences each
/// did no better than 8 of 4.
const SPIN_LEAD: Duration = Duration::from_micros(200);

pub(crate) struct Scheduler<'v, B: Backend, V: Vocabulary> {
    vocab: &'v V,
    backend: B,
    batch: Vec<BatchEntry>,
    batch_size: usize,
    /// Reuse cached prefixes (`EngineConfig::prompt_cache`).
    prompt_cache: bool,
    /// One KV stream per slot (not `kv_unified`): running slots must be consecutive ids
    /// to decode in one pass (`pack`).
    packs: bool,
    /// Steps in a row whose running slots were not consecutive (see `pack`).
    scattered_for: usize,
    /// Longest an idle engine waits for requests still being prepared (`gather`).
    gather_limit: Duration,
    slots: Vec<SlotCache>,
    /// Counts releases, to order caches by age.
    clock: u64,
    /// Caches moved out of the slots, keyed by token blocks, bounded by `prompt_cache_ram`.
    host: HostCache<B::Snapshot>,
    /// Slots a copy was queued into or out of this round: llama.cpp moves the data at the
    /// next decode, so their KV must not be saved (a destination's is not there yet) or
    /// overwritten by a restore (a source's is still to be read) before it.
    pending: Vec<bool>,
    context_per_slot: usize,
    free_slots: Vec<usize>,
    waiting: VecDeque<Submission>,
    running: Vec<Sequence>,
    /// A waiting high-priority request may pause lower-priority sequences
    /// (`EngineConfig::preemption`).
    preemption: bool,
    /// Paused sequences, in the order they were paused.
    paused: Vec<Paused<B::Snapshot>>,
    stats: Arc<EngineStats>,
    /// Shared with each step's `Turn`, which outlives the step's borrows of the scheduler.
    cpu_gate: Option<Arc<CpuGate>>,
    /// The backend computes on its own (a GPU): a step's tokens are handed to their
    /// requests after the next pass is launched, while the device runs it, instead of
    /// before. On the CPU the pass is the host's own work, so they go out at once.
    defer_emits: bool,
    /// Threads that sample beside the engine thread on an asynchronous backend (see
    /// `PARALLEL_SAMPLING_MIN`): kept, since starting threads every step cost more than the
    /// sampling they took over. `None` on the CPU, or if they could not start.
    sampling_pool: Option<rayon::ThreadPool>,
    /// How long the last pass ran on the device after its launch returned (to the end of
    /// `synchronize`): when the sampling threads wake for the next (`SPIN_LEAD`).
    last_pass: Duration,
}

enum Outcome {
    Continue,
    Finished(FinishReason),
    /// The sink is gone: nobody to tell.
    Abandoned,
    /// An error event was sent; the sequence ends.
    Failed,
}

impl<'v, B: Backend, V: Vocabulary> Scheduler<'v, B, V> {
    pub fn new(vocab: &'v V, backend: B, config: &EngineConfig, stats: Arc<EngineStats>) -> Self {
        Scheduler {
            vocab,
            batch: Vec::with_capacity(config.batch_size as usize),
            batch_size: config.batch_size as usize,
            prompt_cache: config.prompt_cache,
            packs: !config.kv_unified,
            scattered_for: 0,
            gather_limit: GATHER_LIMIT,
            slots: vec![SlotCache::default(); config.parallel],
            clock: 0,
            host: HostCache::new(if config.prompt_cache {
                config.prompt_cache_ram
            } else {
                0
            }),
            pending: vec![false; config.parallel],
            context_per_slot: config.context_per_slot as usize,
            free_slots: (0..config.parallel).rev().collect(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemption: config.preemption,
            paused: Vec::new(),
            stats,
            cpu_gate: config.cpu_gate.as_deref().and_then(|path| {
                CpuGate::open(path)
                    .map(Arc::new)
                    .inspect_err(|e| tracing::warn!(%e, ?path, "no CPU gate"))
                    .ok()
            }),
            defer_emits: backend.asynchronous(),
            sampling_pool: backend.asynchronous().then(sampling_pool).flatten(),
            last_pass: Duration::ZERO,
            backend,
        }
    }

    pub fn run(mut self, inbox: mpsc::Receiver<Command>) {
        loop {
            // Block only when there is nothing to do; otherwise take what has arrived.
            if self.running.is_empty() && self.waiting.is_empty() && self.paused.is_empty() {
                match inbox.recv() {
                    Ok(command) => {
                        if !self.handle(command) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if !self.drain(&inbox) || !self.gather(&inbox) {
                break;
            }
            self.admit();
            // Published before the step, so a caller who sees a sequence's first token also
            // sees it counted as running.
            self.publish_stats();
            self.step();
            self.publish_stats();
        }
        self.shutdown();
    }

    /// Take every command that has arrived. False on shutdown.
    fn drain(&mut self, inbox: &mpsc::Receiver<Command>) -> bool {
        while let Ok(command) = inbox.try_recv() {
            if !self.handle(command) {
                return false;
            }
        }
        true
    }

    /// An idle engine about to start new requests while the caller still prepares others
    /// (`EngineStats::preparing`) waits for those, up to `gather_limit`, so a burst starts
    /// in one step. Otherwise its first arrival runs a step alone and the rest wait for that
    /// step: on an H100 (8 chats of 400 tokens, a 135M model) the lone step took ~5 ms and
    /// the burst's preparation ~2.5 ms. A lone request waits for nothing. False on shutdown.
    fn gather(&mut self, inbox: &mpsc::Receiver<Command>) -> bool {
        // Nothing to gain once the waiting requests fill every free slot.
        if !self.running.is_empty()
            || !self.paused.is_empty()
            || self.waiting.is_empty()
            || self.waiting.len() >= self.free_slots.len()
        {
            return true;
        }
        let deadline = Instant::now() + self.gather_limit;
        while self.stats.preparing.load(Ordering::Acquire) > 0
            && self.waiting.len() < self.free_slots.len()
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // A guard going away wakes nobody: look again every 50 µs.
            match inbox.recv_timeout(left.min(Duration::from_micros(50))) {
                Ok(command) => {
                    if !self.handle(command) {
                        return false;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
        // A request is submitted before its guard goes: the last ones may be queued still.
        self.drain(inbox)
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Submit(submission) => self.waiting.push_back(*submission),
            Command::Cancel(id) => self.cancel(id),
            Command::Shutdown => return false,
        }
        true
    }

    fn cancel(&mut self, id: RequestId) {
        if let Some(at) = self.waiting.iter().position(|s| s.id == id) {
            if let Some(mut submission) = self.waiting.remove(at) {
                let usage = Usage {
                    prompt_tokens: submission.request.prompt.len(),
                    completion_tokens: 0,
                    cached_tokens: 0,
                };
                (submission.sink)(Event::Done {
                    finish_reason: FinishReason::Cancelled,
                    usage,
                });
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(at) = self.running.iter().position(|s| s.id == id) {
            let mut seq = self.running.swap_remove(at);
            deliver(&mut seq);
            let usage = usage_of(&seq);
            (seq.sink)(Event::Done {
                finish_reason: FinishReason::Cancelled,
                usage,
            });
            self.release(seq, true);
        }
        if let Some(at) = self.paused.iter().position(|p| p.seq.id == id) {
            // Its snapshot goes with it; it holds no slot.
            let mut seq = self.paused.remove(at).seq;
            let usage = usage_of(&seq);
            (seq.sink)(Event::Done {
                finish_reason: FinishReason::Cancelled,
                usage,
            });
        }
    }

    /// Move waiting requests into free slots, first come first served. A request whose
    /// prompt shares a long prefix with one still being prefilled waits for that prefill
    /// (a step or two) and then copies it: the `n` choices of a prompt, or requests with one
    /// system prompt, read it once.
    fn admit(&mut self) {
        loop {
            // Next in line: the first waiting request of the highest priority, unless a
            // paused sequence of at least that priority is owed a slot (it came first).
            let next = (0..self.waiting.len()).min_by_key(|&i| self.waiting[i].request.priority);
            let paused = (0..self.paused.len()).min_by_key(|&i| self.paused[i].seq.priority);
            if let Some(at) = paused {
                let priority = self.paused[at].seq.priority;
                if next.is_none_or(|i| priority <= self.waiting[i].request.priority) {
                    if !self.resume(at) {
                        break;
                    }
                    continue;
                }
            }
            let Some(at) = next else {
                break;
            };
            let priority = self.waiting[at].request.priority;
            if self.free_slots.is_empty() && !self.preempt_for(priority) {
                break;
            }
            if self.prompt_cache && self.prefilling_shared(&self.waiting[at].request.prompt) {
                break;
            }
            let slot = self.choose_slot(&self.waiting[at].request.prompt);
            self.free_slots.retain(|&s| s != slot);
            let Some(submission) = self.waiting.remove(at) else {
                break;
            };
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            let Submission {
                id,
                request,
                constraint,
                sink,
            } = submission;
            let cached = self.reuse_cache(slot, &request.prompt, &request.media);
            tracing::debug!(
                id,
                slot,
                prompt = request.prompt.len(),
                cached,
                waiting = self.waiting.len(),
                "admitted"
            );
            let room = self.context_per_slot - request.prompt.len();
            let max_tokens = request.max_tokens.map_or(room, |m| m.min(room));
            let sampler = Sampler::new(request.sampling, &request.prompt, self.vocab.vocab_size());
            // Images and grammars need what only the host has (an image's own passes; the
            // grammar's mask over the logits).
            let device_bias = sampler
                .device_greedy_bias()
                .filter(|_| constraint.is_none() && request.media.is_empty());
            self.running.push(Sequence {
                id,
                priority: request.priority,
                slot,
                prompt: request.prompt,
                media: request.media,
                prefilled: cached,
                cached,
                history: Vec::new(),
                pending_token: None,
                position: cached,
                generated: 0,
                max_tokens,
                sampler,
                device_bias,
                decoder: Utf8Decoder::default(),
                stop: StopMatcher::new(request.stop),
                constraint,
                sink,
                logits_at: None,
                outcome: None,
                deferred: Vec::new(),
                abandoned: false,
            });
        }
    }

    /// Make a slot free for a waiting `priority` request by pausing the newest sequence of
    /// the lowest priority below it (only `high` requests pre-empt). The paused sequence's
    /// KV is saved to host memory — a copy of the cells, so it resumes exactly where it
    /// was; recomputing them instead would cost a prefill (seconds on a CPU for what the
    /// copy does in milliseconds) and could change its tokens. False if nothing may be
    /// paused now.
    fn preempt_for(&mut self, priority: Priority) -> bool {
        if !self.preemption || priority != Priority::High {
            return false;
        }
        let victim = (0..self.running.len())
            .filter(|&i| {
                let seq = &self.running[i];
                seq.priority > priority && !self.pending[seq.slot]
            })
            .max_by_key(|&i| (self.running[i].priority, self.running[i].id));
        let Some(at) = victim else {
            return false;
        };
        // Its client sees the tokens it has so far, then a pause — or, gone, frees the slot
        // without one.
        deliver(&mut self.running[at]);
        if self.running[at].abandoned {
            let seq = self.running.swap_remove(at);
            self.release(seq, true);
            return true;
        }
        let slot = self.running[at].slot;
        let started = std::time::Instant::now();
        let snapshot = if self.running[at].position == 0 {
            None
        } else {
            match self.backend.save(slot) {
                Some(snapshot) => Some(snapshot),
                None => return false,
            }
        };
        let seq = self.running.swap_remove(at);
        tracing::debug!(
            id = seq.id,
            slot,
            tokens = seq.position,
            bytes = snapshot.as_ref().map_or(0, B::snapshot_bytes),
            save_us = started.elapsed().as_micros() as u64,
            "paused for a high-priority request"
        );
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        // The slot keeps the paused sequence's cells as a cache until it is reused.
        self.keep_cache(&seq, true);
        self.free(seq.slot);
        self.paused.push(Paused { seq, snapshot });
        true
    }

    /// Put the `at`-th paused sequence back into a free slot, its KV restored. False if no
    /// slot can take it now.
    fn resume(&mut self, at: usize) -> bool {
        let bounds = self.running_bounds();
        let Some(slot) = self
            .free_slots
            .iter()
            .copied()
            .filter(|&s| !self.pending[s])
            .max_by_key(|&s| (Self::placement(s, bounds), std::cmp::Reverse(s)))
        else {
            return false;
        };
        let started = std::time::Instant::now();
        let Paused { mut seq, snapshot } = self.paused.remove(at);
        self.free_slots.retain(|&s| s != slot);
        // Whatever the slot held is worth keeping in host memory if it is long.
        self.save_to_host(slot);
        self.backend.remove(slot, 0);
        self.slots[slot] = SlotCache {
            released_at: self.slots[slot].released_at,
            ..SlotCache::default()
        };
        if let Some(snapshot) = &snapshot {
            if !self.backend.restore(slot, snapshot) {
                self.backend.remove(slot, 0);
                self.free(slot);
                tracing::error!(id = seq.id, "a paused sequence could not be restored");
                report(
                    &mut seq,
                    "the sequence was paused for a high-priority request and could not be resumed",
                );
                return true;
            }
        }
        tracing::debug!(
            id = seq.id,
            slot,
            tokens = seq.position,
            restore_us = started.elapsed().as_micros() as u64,
            "resumed"
        );
        seq.slot = slot;
        self.running.push(seq);
        true
    }

    /// The free slot a new request takes: the one whose cache holds most of `prompt` (no
    /// copy, nothing displaced: streams resending their prompts each find their own slot).
    /// Ties go to a slot next to the running ones (they must end up one run of
    /// consecutive ids, which `pack` otherwise restores with a copy), then to an empty
    /// slot, then to the least recently used cache, then to the lowest. Slots with a copy
    /// in flight are taken last.
    fn choose_slot(&self, prompt: &[u32]) -> usize {
        let limit = prompt.len().saturating_sub(REDECODE_TOKENS);
        let held = |s: usize| {
            if self.prompt_cache {
                common_prefix(&self.slots[s].tokens, prompt).min(limit)
            } else {
                0
            }
        };
        let bounds = self.running_bounds();
        self.free_slots
            .iter()
            .copied()
            .max_by_key(|&s| {
                let slot = &self.slots[s];
                (
                    !self.pending[s],
                    held(s),
                    Self::placement(s, bounds),
                    slot.tokens.is_empty(),
                    std::cmp::Reverse(slot.released_at),
                    std::cmp::Reverse(s),
                )
            })
            .expect("a slot is free")
    }

    /// How well a free slot keeps the running slots consecutive: 2 inside a gap between them
    /// (it closes one), 1 next to them or with none running, 0 elsewhere (`pack` will move
    /// the sequence).
    fn placement(s: usize, running: Option<(usize, usize)>) -> u8 {
        match running {
            Some((low, high)) if low < s && s < high => 2,
            Some((low, high)) if s + 1 == low || s == high + 1 => 1,
            Some(_) => 0,
            None => 1,
        }
    }

    /// The lowest and highest running slots.
    fn running_bounds(&self) -> Option<(usize, usize)> {
        let low = self.running.iter().map(|seq| seq.slot).min()?;
        let high = self.running.iter().map(|seq| seq.slot).max()?;
        Some((low, high))
    }

    /// With one KV stream per slot, llama.cpp puts only sequences with consecutive ids in
    /// one ubatch (`split_equal(sequential)`): running slots with gaps between them cost a
    /// full pass over the weights per run of consecutive ids, every step until one ends.
    /// Measured on an H100 (8B, 32 streams coming back to their cached slots): one run
    /// decoded 2,750 tok/s, eight runs ~1,000; on this CPU 137 → 200 ms a step. So the
    /// sequences outside the window of consecutive slots that holds most of them move into
    /// its free slots: one whole-sequence copy each, which llama.cpp carries out at the
    /// next decode, before the pass (and after any copy queued earlier, so a chain of
    /// copies reads what the one before wrote). The slot a sequence leaves keeps its
    /// tokens as a free slot's cache; a cache the move overwrites is saved to host memory
    /// first when that is worth it (`save_to_host`). A sequence with nothing in its KV yet
    /// just changes slot.
    ///
    /// Only once the gaps have lasted `PACK_AFTER_STEPS` steps: a burst of clients coming
    /// back to their cached slots fills the gaps itself within a few steps, and packing its
    /// first arrivals displaced the caches of those still to come — on an H100 (8 streams
    /// of a 135M model, 2 ms steps) each such move or restore took ~10 ms of the engine
    /// thread, and the burst's time to first token went from ~20 to ~50 ms.
    fn pack(&mut self) {
        let n = self.running.len();
        if !self.packs || n < 2 {
            self.scattered_for = 0;
            return;
        }
        let mut busy = vec![false; self.slots.len()];
        for seq in &self.running {
            busy[seq.slot] = true;
        }
        let (low, high) = (self.running[0].slot, self.running[n - 1].slot);
        if high - low + 1 == n {
            self.scattered_for = 0;
            return;
        }
        self.scattered_for += 1;
        if self.scattered_for <= PACK_AFTER_STEPS {
            return;
        }
        self.scattered_for = 0;
        // The window holding most running sequences; ties: the one with the fewest free
        // slots that have a copy in flight (a cache being kept there would be lost), then
        // the fewest cached tokens displaced (other conversations' caches), then the lowest.
        let window = (0..=self.slots.len() - n)
            .max_by_key(|&w| {
                let inside = (w..w + n).filter(|&s| busy[s]).count();
                let in_flight = (w..w + n).filter(|&s| !busy[s] && self.pending[s]).count();
                let displaced: usize = (w..w + n)
                    .filter(|&s| !busy[s])
                    .map(|s| self.slots[s].tokens.len())
                    .sum();
                (
                    inside,
                    std::cmp::Reverse(in_flight),
                    std::cmp::Reverse(displaced),
                    std::cmp::Reverse(w),
                )
            })
            .expect("n is at most the slot count");
        // Each sequence outside the window, in slot order, takes the next free slot inside.
        let mut targets = (window..window + n).filter(|&s| !busy[s]);
        let moves: Vec<(usize, usize)> = (0..n)
            .filter(|&at| !(window..window + n).contains(&self.running[at].slot))
            .map(|at| {
                let to = targets
                    .next()
                    .expect("as many free slots inside as running outside");
                (at, to)
            })
            .collect();
        // Taken out from the back, so the indices still to come stay valid.
        for &(at, to) in moves.iter().rev() {
            let mut seq = self.running.swap_remove(at);
            let from = seq.slot;
            self.save_to_host(to);
            if seq.position == 0 {
                // Nothing to carry: an empty destination is all it needs.
                self.backend.remove(to, 0);
            } else {
                self.backend.copy(from, to);
                self.pending[from] = true;
                self.pending[to] = true;
            }
            self.free_slots.retain(|&s| s != to);
            self.slots[to] = self.slots[from].clone();
            // What `from` holds now is the sequence so far: a cache like any released one.
            self.keep_cache(&seq, true);
            self.free(from);
            seq.slot = to;
            self.stats.slot_moves.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(id = seq.id, from, to, "moved next to the running slots");
            self.running.push(seq);
        }
        self.running.sort_unstable_by_key(|seq| seq.slot);
    }

    /// A running sequence is still reading a prefix of at least `SHARE_PREFILL_TOKENS` that
    /// `prompt` shares, beyond what any slot already holds.
    fn prefilling_shared(&self, prompt: &[u32]) -> bool {
        let held = self
            .slots
            .iter()
            .map(|slot| common_prefix(&slot.tokens, prompt))
            .chain(self.running.iter().map(|seq| decoded_prefix(seq, prompt)))
            .max()
            .unwrap_or(0);
        self.running.iter().any(|seq| {
            let shared = common_prefix(&seq.prompt, prompt)
                .min(prompt.len().saturating_sub(REDECODE_TOKENS));
            seq.prefilled < shared && shared >= held + SHARE_PREFILL_TOKENS
        })
    }

    /// Start `slot` from the longest prefix of `prompt` held by any slot — a free slot's
    /// cache, `slot`'s own, or what a running sequence has decoded so far — copying it in
    /// when it lives elsewhere.
    /// At least the last prompt token is decoded again, for fresh logits. Returns the
    /// number of prompt tokens reused.
    fn reuse_cache(&mut self, slot: usize, prompt: &[u32], media: &[PromptMedia]) -> usize {
        let limit = prompt.len().saturating_sub(REDECODE_TOKENS);
        let mut best = (0, slot);
        if self.prompt_cache {
            best.0 = common_prefix(&self.slots[slot].tokens, prompt).min(limit);
            for &free in &self.free_slots {
                let n = common_prefix(&self.slots[free].tokens, prompt).min(limit);
                if n > best.0 {
                    best = (n, free);
                }
            }
            for seq in &self.running {
                let n = decoded_prefix(seq, prompt).min(limit);
                if n > best.0 {
                    best = (n, seq.slot);
                }
            }
        }
        let (reused, source) = best;
        // An image is in the KV whole or not at all.
        let reused = media_floor(media, reused);
        if let Some(restored) = self.restore_from_host(slot, prompt, media, reused) {
            return restored;
        }
        // Most of the slot's own cache is not what this request needs: keep it in an empty
        // free slot, or else in host memory — never over another free slot's cache, which
        // is some other conversation's own (8 streams resending their prompts at once each
        // lost theirs to the one before when it was moved into "the oldest" slot).
        // A prompt that repeats or extends the slot's own last prompt supersedes the reply
        // cached after it (a retry, or a client resending the same turn): nothing to keep.
        // Saving it anyway cost ~6 ms per request of a warm burst here, on the critical path.
        let own = &self.slots[slot];
        let retry = own.prompt_len > 0 && common_prefix(&own.tokens, prompt) >= own.prompt_len;
        if self.prompt_cache && !retry && own.tokens.len() >= reused + KEEP_CACHE_TOKENS {
            let empty = self
                .free_slots
                .iter()
                .copied()
                .filter(|&v| v != source && !self.pending[v] && self.slots[v].tokens.is_empty())
                .min();
            match empty {
                Some(victim) => {
                    self.backend.copy(slot, victim);
                    self.pending[slot] = true;
                    self.pending[victim] = true;
                    self.slots[victim] = self.slots[slot].clone();
                }
                None => self.save_to_host(slot),
            }
        }
        if reused > 0 && source != slot {
            self.backend.copy(source, slot);
            self.pending[source] = true;
            self.pending[slot] = true;
        }
        self.backend.remove(slot, reused);
        let cache = &mut self.slots[slot];
        cache.tokens.clear();
        cache.tokens.extend_from_slice(&prompt[..reused]);
        cache.prompt_len = reused;
        reused
    }

    /// Save a free slot's cache to host memory (evicting the least recently used entries to
    /// make room), unless it is short, already held there, or has a copy in flight.
    fn save_to_host(&mut self, slot: usize) {
        let tokens = &self.slots[slot].tokens;
        if !self.host.enabled() || self.pending[slot] || tokens.len() < HOST_MIN_TOKENS {
            return;
        }
        if self.host.holds(tokens) {
            return;
        }
        let Some(snapshot) = self.backend.save(slot) else {
            return;
        };
        let bytes = B::snapshot_bytes(&snapshot);
        self.host.insert(tokens.clone(), snapshot, bytes);
    }

    /// When host memory holds a longer prefix of `prompt` than any slot (by enough to be
    /// worth a restore), put it into `slot` — keeping the slot's own cache in host memory
    /// first — and return how many prompt tokens it covers.
    fn restore_from_host(
        &mut self,
        slot: usize,
        prompt: &[u32],
        media: &[PromptMedia],
        in_slots: usize,
    ) -> Option<usize> {
        if !self.host.enabled() || self.pending[slot] {
            return None;
        }
        let limit = prompt.len().saturating_sub(REDECODE_TOKENS);
        let (entry, covered) = self.host.longest(prompt)?;
        let covered = media_floor(media, covered.min(limit));
        // The whole entry is copied back (and cut after), so the gain is weighed against
        // its length, with a floor: a 1-token gain never pays for a copy.
        let copied = self.host.tokens(entry);
        let worth = (copied / RESTORE_GAIN_RATIO).max(RESTORE_MIN_GAIN);
        if covered <= in_slots || covered - in_slots < worth {
            return None;
        }
        // Used now: saving the slot's own cache must not evict it.
        self.host.touch(entry);
        self.save_to_host(slot);
        // Saving may still have evicted it when memory is tight.
        self.host.get(entry)?;
        self.backend.remove(slot, 0);
        let snapshot = self.host.get(entry).expect("checked above");
        if !self.backend.restore(slot, snapshot) {
            self.backend.remove(slot, 0);
            self.slots[slot] = SlotCache {
                released_at: self.slots[slot].released_at,
                ..SlotCache::default()
            };
            return None;
        }
        self.host.touch(entry);
        self.backend.remove(slot, covered);
        let cache = &mut self.slots[slot];
        cache.tokens.clear();
        cache.tokens.extend_from_slice(&prompt[..covered]);
        cache.prompt_len = covered;
        Some(covered)
    }

    /// One decode: a token for every running sequence, then prompt chunks up to the batch
    /// size — after at most one image, whose encode and decode are passes of their own.
    fn step(&mut self) {
        // With one KV stream per slot, llama.cpp puts only sequences with consecutive ids in
        // one ubatch (`split_equal(sequential)`): a batch in any other order is decoded as
        // several ubatches, each a full pass over the weights. Ascending slot order, over
        // slots `pack` makes consecutive (after `PACK_AFTER_STEPS`), keeps a step to one pass
        // (1.8x at 8 sequences once slots had been recycled, ~2.7x at 32 on a GPU).
        let started = Instant::now();
        self.running.sort_unstable_by_key(|seq| seq.slot);
        self.pack();
        self.decode_one_image();
        self.batch.clear();
        let mut budget = self.batch_size;
        for seq in &mut self.running {
            seq.logits_at = None;
            if let Some(token) = seq.pending_token.take() {
                let at = self.batch.len();
                self.batch.push(BatchEntry {
                    token,
                    position: seq.position,
                    slot: seq.slot,
                    logits: true,
                });
                seq.history.push(token);
                seq.position += 1;
                seq.logits_at = Some(at);
                budget -= 1;
            }
        }
        for seq in &mut self.running {
            if budget == 0 {
                break;
            }
            // Text up to the next image, which a later step evaluates.
            let text_end = seq
                .media
                .iter()
                .find(|m| m.start >= seq.prefilled)
                .map_or(seq.prompt.len(), |m| m.start);
            let remaining = text_end - seq.prefilled;
            if remaining == 0 || seq.logits_at.is_some() {
                continue;
            }
            let chunk = remaining.min(budget);
            for i in 0..chunk {
                let index = seq.prefilled + i;
                let last = index + 1 == seq.prompt.len();
                if last {
                    seq.logits_at = Some(self.batch.len());
                }
                self.batch.push(BatchEntry {
                    token: seq.prompt[index],
                    position: index,
                    slot: seq.slot,
                    logits: last,
                });
            }
            seq.prefilled += chunk;
            seq.position = seq.prefilled;
            budget -= chunk;
        }
        if self.batch.is_empty() {
            return;
        }
        // Which slots' tokens the device chooses this step (a slot keeps its choice between
        // requests: changing it costs llama.cpp a re-plan of its graph).
        for seq in &mut self.running {
            if seq.logits_at.is_some()
                && !self
                    .backend
                    .choose_on_device(seq.slot, seq.device_bias.as_deref())
            {
                seq.device_bias = None;
            }
        }
        let gate = self.cpu_gate.clone();
        let turn = gate.as_deref().and_then(CpuGate::turn);
        let clock = &self.stats.step_clock;
        let built = Instant::now();
        clock.add(Phase::Build, built - started);
        let decoded = self.backend.decode(&self.batch);
        let launched = Instant::now();
        clock.add(Phase::Decode, launched - built);
        // Queued copies have been carried out. (A decode that failed may have failed before
        // them: they stay queued for the next one, and their slots stay marked.)
        if decoded.is_ok() {
            self.pending.fill(false);
        }
        // The last step's tokens go out while the device runs this one.
        for seq in &mut self.running {
            deliver(seq);
        }
        let delivered = Instant::now();
        clock.add(Phase::Emit, delivered - launched);
        if let Err(e) = decoded {
            drop(turn);
            self.fail_batch(&format!("llama.cpp decode failed: {e}"));
            return;
        }
        self.sync_and_sample(launched, delivered, turn);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(
            tokens = self.batch.len(),
            sequences = self.running.len(),
            step_us = started.elapsed().as_micros() as u64,
            "step"
        );
    }

    /// Evaluate the image the first sequence (in slot order) has reached in its prefill.
    /// One per step: every stream waits for it, so no longer than one image's encode. A
    /// failed image ends its sequence alone (its cells past the image's start are dropped).
    fn decode_one_image(&mut self) {
        let Some(at) = self.running.iter().position(|seq| {
            seq.pending_token.is_none() && seq.media.iter().any(|m| m.start == seq.prefilled)
        }) else {
            return;
        };
        // An encode can take long: held-back tokens go out before it, not after.
        for seq in &mut self.running {
            deliver(seq);
        }
        let seq = &mut self.running[at];
        let media = seq
            .media
            .iter()
            .find(|m| m.start == seq.prefilled)
            .expect("found above")
            .clone();
        let turn = self.cpu_gate.as_deref().and_then(CpuGate::turn);
        let started = std::time::Instant::now();
        let decoded =
            self.backend
                .decode_media(seq.slot, &media, &seq.prompt[media.start..media.end()]);
        drop(turn);
        tracing::debug!(
            id = seq.id,
            tokens = media.len,
            image_us = started.elapsed().as_micros() as u64,
            "image"
        );
        match decoded {
            Ok(()) => {
                seq.prefilled = media.end();
                seq.position = seq.prefilled;
            }
            Err(e) => {
                report(seq, &format!("evaluating an image failed: {e}"));
                let seq = self.running.remove(at);
                self.backend.remove(seq.slot, seq.prefilled);
                self.release(seq, true);
            }
        }
    }

    /// Wait for the pass, then give every sequence with logits this step its token — sampled
    /// and taken (`advance`: detokenized, stop strings, the limit) — and end those that
    /// finished. On a GPU the host's work here is all that stands between two passes, so
    /// it is spread over the sampling threads: handed out before the wait, to threads that
    /// wake shortly before the pass is expected to end (`Handoff`) and take their share the
    /// moment the logits land. (On the CPU llama.cpp's own threads are the bottleneck and
    /// this is a sliver.) The CPU gate's `turn` (if any) is given back once the pass is over.
    fn sync_and_sample(&mut self, launched: Instant, delivered: Instant, turn: Option<Turn<'_>>) {
        let vocab = self.vocab;
        let defer = self.defer_emits;
        let clock = &self.stats.step_clock;
        let mut work: Vec<&mut Sequence> = Vec::with_capacity(self.running.len());
        let mut rows: Vec<usize> = Vec::with_capacity(self.running.len());
        for seq in &mut self.running {
            // Device-chosen tokens are taken below: no logits came back for them.
            if let Some(index) = seq.logits_at.filter(|_| !seq.abandoned) {
                if seq.device_bias.is_none() {
                    rows.push(index);
                    work.push(seq);
                }
            }
        }
        let pool = self
            .sampling_pool
            .as_ref()
            .filter(|_| work.len() >= PARALLEL_SAMPLING_MIN);
        let backend = &mut self.backend;
        let synchronized;
        if let Some(pool) = pool {
            let threads = (pool.current_num_threads() + 1).min(work.len() / SEQUENCES_PER_THREAD);
            let per_thread = work.len().div_ceil(threads.max(1));
            // Measured from the launch, not from `delivered`: handing over the last step's
            // tokens takes a different time every step.
            let wake_at = launched + self.last_pass.saturating_sub(SPIN_LEAD);
            let handoff: Handoff<Vec<&[f32]>> = Handoff::new();
            let handoff = &handoff;
            let mut at = Instant::now();
            pool.in_place_scope(|scope| {
                let _gives_up = PublishOnDrop(handoff);
                let mut chunks = work.chunks_mut(per_thread).enumerate();
                let own = chunks.next();
                for (chunk, seqs) in chunks {
                    scope.spawn(move |_| {
                        let Some(logits) = handoff.wait(wake_at) else {
                            return;
                        };
                        let logits = &logits[chunk * per_thread..];
                        for (seq, logits) in seqs.iter_mut().zip(logits) {
                            sample_and_advance(vocab, seq, logits, defer);
                        }
                    });
                }
                backend.synchronize();
                at = Instant::now();
                drop(turn);
                let backend: &B = backend;
                let logits: Vec<&[f32]> = rows.iter().map(|&index| backend.logits(index)).collect();
                handoff.publish(Some(logits));
                if let (Some((_, seqs)), Some(logits)) = (own, handoff.wait(at)) {
                    for (seq, logits) in seqs.iter_mut().zip(logits) {
                        sample_and_advance(vocab, seq, logits, defer);
                    }
                }
            });
            synchronized = at;
        } else {
            backend.synchronize();
            synchronized = Instant::now();
            drop(turn);
            for (seq, &index) in work.iter_mut().zip(&rows) {
                sample_and_advance(vocab, seq, backend.logits(index), defer);
            }
        }
        self.last_pass = synchronized - launched;
        clock.add(Phase::Wait, synchronized - delivered);
        let sampled = Instant::now();
        clock.add(Phase::Sample, sampled - synchronized);
        let mut on_device = 0;
        for seq in &mut self.running {
            if let Some(index) = seq
                .logits_at
                .filter(|_| !seq.abandoned && seq.device_bias.is_some())
            {
                on_device += 1;
                let chosen = self
                    .backend
                    .device_choice(index)
                    .map(|token| (token, None))
                    .ok_or_else(|| "the device chose no token".to_owned());
                seq.outcome = Some(take_token(vocab, seq, chosen, defer));
            }
        }
        self.stats
            .device_choices
            .fetch_add(on_device, Ordering::Relaxed);
        let mut index = 0;
        while index < self.running.len() {
            let seq = &mut self.running[index];
            let had_logits = seq.logits_at.take().is_some();
            let outcome = if seq.abandoned {
                Outcome::Abandoned
            } else if !had_logits {
                index += 1;
                continue;
            } else {
                seq.outcome
                    .take()
                    .unwrap_or_else(|| report(seq, "internal error: no token was sampled"))
            };
            match outcome {
                Outcome::Continue => index += 1,
                Outcome::Finished(reason) => {
                    let mut seq = self.running.swap_remove(index);
                    let usage = usage_of(&seq);
                    (seq.sink)(Event::Done {
                        finish_reason: reason,
                        usage,
                    });
                    self.release(seq, true);
                }
                Outcome::Abandoned | Outcome::Failed => {
                    let seq = self.running.swap_remove(index);
                    self.release(seq, true);
                }
            }
        }
        self.stats
            .step_clock
            .add(Phase::Emit, Instant::now() - sampled);
    }

    /// A failed decode leaves the batch's KV state unknown: end every sequence in it.
    fn fail_batch(&mut self, message: &str) {
        tracing::error!(message, "decode failed; ending the sequences of this batch");
        let running = std::mem::take(&mut self.running);
        for mut seq in running {
            deliver(&mut seq);
            (seq.sink)(Event::Error(message.to_owned()));
            self.release(seq, false);
        }
    }

    /// Free a sequence's slot. Its KV stays as the slot's prompt cache (what was decoded:
    /// the prompt so far, then the generated tokens) unless `keep` is false (a failed
    /// decode leaves the cells unknown) or the cache is off.
    fn release(&mut self, seq: Sequence, keep: bool) {
        self.keep_cache(&seq, keep);
        self.free(seq.slot);
    }

    /// Record what `seq`'s slot holds as its prompt cache (or empty it).
    fn keep_cache(&mut self, seq: &Sequence, keep: bool) {
        self.clock += 1;
        self.slots[seq.slot].released_at = self.clock;
        self.slots[seq.slot].prompt_len = if keep { seq.prefilled } else { 0 };
        let cache = &mut self.slots[seq.slot].tokens;
        cache.clear();
        if keep && self.prompt_cache {
            cache.extend_from_slice(&seq.prompt[..seq.prefilled]);
            if seq.prefilled == seq.prompt.len() {
                cache.extend_from_slice(&seq.history);
            }
            // What the cache says the slot holds is exactly what was decoded into it.
            debug_assert_eq!(cache.len(), seq.position);
        } else {
            self.backend.remove(seq.slot, 0);
        }
    }

    fn free(&mut self, slot: usize) {
        self.free_slots.push(slot);
        // Highest first: the lowest free slot is last (a resumed sequence takes it).
        self.free_slots.sort_unstable_by(|a, b| b.cmp(a));
    }

    fn publish_stats(&self) {
        self.stats
            .running
            .store(self.running.len(), Ordering::Relaxed);
        let kv: usize = self.running.iter().map(|s| s.position).sum();
        self.stats.kv_used.store(kv, Ordering::Relaxed);
        self.stats
            .paused
            .store(self.paused.len(), Ordering::Relaxed);
        self.stats
            .host_cache_bytes
            .store(self.host.bytes(), Ordering::Relaxed);
        self.stats
            .host_cache_entries
            .store(self.host.len(), Ordering::Relaxed);
        if let Ok(mut slots) = self.stats.slot_tokens.lock() {
            slots.clear();
            slots.extend(self.slots.iter().map(|s| s.tokens.len()));
            for seq in &self.running {
                slots[seq.slot] = seq.position;
            }
        }
    }

    fn shutdown(&mut self) {
        for mut seq in std::mem::take(&mut self.running) {
            deliver(&mut seq);
            (seq.sink)(Event::Error("the engine is shutting down".into()));
        }
        for mut submission in std::mem::take(&mut self.waiting) {
            (submission.sink)(Event::Error("the engine is shutting down".into()));
        }
        for mut paused in std::mem::take(&mut self.paused) {
            (paused.seq.sink)(Event::Error("the engine is shutting down".into()));
        }
        self.stats.running.store(0, Ordering::Relaxed);
        self.stats.waiting.store(0, Ordering::Relaxed);
    }
}

/// How many leading tokens two sequences share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How much of `prompt` a running sequence has already decoded into its slot.
fn decoded_prefix(seq: &Sequence, prompt: &[u32]) -> usize {
    let n = common_prefix(&seq.prompt[..seq.prefilled], prompt);
    if n < seq.prefilled || seq.prefilled < seq.prompt.len() {
        return n;
    }
    n + common_prefix(&seq.history, &prompt[n..])
}

fn usage_of(seq: &Sequence) -> Usage {
    Usage {
        prompt_tokens: seq.prompt.len(),
        completion_tokens: seq.generated,
        cached_tokens: seq.cached,
    }
}

/// One thread per CPU up to `MAX_SAMPLING_THREADS`, the engine thread included.
fn sampling_pool() -> Option<rayon::ThreadPool> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_SAMPLING_THREADS);
    if threads < 2 {
        return None;
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads - 1)
        .thread_name(|i| format!("hearth-sample-{i}"))
        .build()
        .inspect_err(|e| tracing::warn!(%e, "no sampling threads; sampling on the engine thread"))
        .ok()
}

/// Choose a sequence's next token from its logits, and take it (`take_token`), leaving
/// what became of the sequence in `seq.outcome`. Runs on the sampling threads.
fn sample_and_advance(vocab: &impl Vocabulary, seq: &mut Sequence, logits: &[f32], defer: bool) {
    let sampled = sample_one(seq, logits);
    seq.outcome = Some(take_token(vocab, seq, sampled, defer));
}

/// A sequence's next token from its logits. A panic while sampling one sequence (a bug in a
/// mask or a sampler) ends that sequence with an error; the others, and the worker, go on.
fn sample_one(seq: &mut Sequence, logits: &[f32]) -> Result<(u32, Option<TokenLogprobs>), String> {
    let sampled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match seq.constraint.as_mut() {
            None => Ok(seq.sampler.sample(logits, None)),
            // A lazy grammar before its trigger: free text, watched for the trigger.
            Some(constraint) if constraint.is_dormant() => {
                let (token, logprobs) = seq.sampler.sample(logits, None);
                constraint.accept(token).map(|()| (token, logprobs))
            }
            Some(constraint) => constraint.compute_mask().and_then(|()| {
                let (token, logprobs) = seq.sampler.sample(logits, Some(&*constraint));
                constraint.accept(token).map(|()| (token, logprobs))
            }),
        }
    }));
    match sampled {
        Ok(Ok(token)) => Ok(token),
        Ok(Err(error)) => Err(format!("structured output failed: {error}")),
        Err(_) => {
            tracing::error!(id = seq.id, "sampling panicked; ending this sequence");
            Err("internal error while generating this sequence".to_owned())
        }
    }
}

/// Take a sequence's token (or end it with the error that stands for one). A panic in a
/// detokenizer or a stop matcher ends only this sequence, as one in `sample_one` does.
fn take_token(
    vocab: &impl Vocabulary,
    seq: &mut Sequence,
    sampled: Result<(u32, Option<TokenLogprobs>), String>,
    defer: bool,
) -> Outcome {
    match sampled {
        Ok((token, logprobs)) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            advance(vocab, seq, token, logprobs, defer)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(id = seq.id, "emitting panicked; ending this sequence");
            report(seq, "internal error while generating this sequence")
        }),
        Err(message) => report(seq, &message),
    }
}

/// Take a sampled token: stop on end-of-turn, emit its text (held back while a stop string
/// may still match), and end the sequence at a stop string or its token limit.
fn advance(
    model: &impl Vocabulary,
    seq: &mut Sequence,
    token: u32,
    logprobs: Option<TokenLogprobs>,
    defer: bool,
) -> Outcome {
    seq.sampler.accept(token);
    let generated = GeneratedToken {
        id: token,
        logprobs,
    };
    // The end-of-turn token is not part of the reply: it is neither shown nor counted.
    if model.is_eog(token) {
        let tail = seq.decoder.finish() + &seq.stop.finish();
        let delivered = emit(seq, tail, vec![]);
        return if delivered {
            Outcome::Finished(FinishReason::Stop)
        } else {
            Outcome::Abandoned
        };
    }
    seq.generated += 1;
    let text = seq.decoder.push(model.token_bytes(token));
    let (text, stopped) = match seq.stop.push(&text) {
        StopOutcome::Continue(text) => (text, None),
        StopOutcome::Stopped(text, which) => (text, Some(which)),
    };
    if let Some(which) = stopped {
        return if emit(seq, text, vec![generated]) {
            Outcome::Finished(FinishReason::StopString(which))
        } else {
            Outcome::Abandoned
        };
    }
    if seq.generated >= seq.max_tokens {
        let text = text + &seq.decoder.finish() + &seq.stop.finish();
        return if emit(seq, text, vec![generated]) {
            Outcome::Finished(FinishReason::Length)
        } else {
            Outcome::Abandoned
        };
    }
    if defer {
        // Handed over once the next pass is launched (`deliver`).
        seq.deferred.push(Event::Delta {
            text,
            tokens: vec![generated],
        });
    } else if !emit(seq, text, vec![generated]) {
        return Outcome::Abandoned;
    }
    seq.pending_token = Some(token);
    Outcome::Continue
}

/// Hand over a sequence's held-back events; a refused one marks it abandoned.
fn deliver(seq: &mut Sequence) {
    for event in std::mem::take(&mut seq.deferred) {
        if !seq.abandoned && !(seq.sink)(event) {
            seq.abandoned = true;
        }
    }
}

/// End a sequence with an error event.
fn report(seq: &mut Sequence, message: &str) -> Outcome {
    if (seq.sink)(Event::Error(message.to_owned())) {
        Outcome::Failed
    } else {
        Outcome::Abandoned
    }
}

/// Send a delta unless it carries nothing; false when the receiver is gone.
fn emit(seq: &mut Sequence, text: String, tokens: Vec<GeneratedToken>) -> bool {
    if text.is_empty() && tokens.is_empty() {
        return true;
    }
    (seq.sink)(Event::Delta { text, tokens })
}

/// Policy tests against the scripted backend: each slot's KV is a token list and the next
/// token is a hash of it, so a wrong reuse changes the output and a hole fails the decode.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::exec::mock::{ScriptedBackend, ScriptedVocabulary};
    use crate::sampling::SamplingParams;

    const VOCAB: usize = 64;

    #[derive(Debug, Default)]
    struct Run {
        tokens: Vec<u32>,
        usage: Option<Usage>,
        error: Option<String>,
        /// The thread that sent the last delta (or had it refused).
        last_delta_on: Option<String>,
    }

    type Shared = Arc<Mutex<Run>>;

    struct Harness {
        scheduler: Scheduler<'static, ScriptedBackend, ScriptedVocabulary>,
        next_id: RequestId,
        /// How the next submissions sample (greedy unless a test says otherwise).
        sampling: SamplingParams,
        /// Steps in a row decoded in several passes.
        scattered: usize,
    }

    fn vocab() -> &'static ScriptedVocabulary {
        static VOCABULARY: std::sync::OnceLock<ScriptedVocabulary> = std::sync::OnceLock::new();
        VOCABULARY.get_or_init(|| ScriptedVocabulary::new(VOCAB))
    }

    impl Harness {
        fn new(parallel: usize, prompt_cache: bool) -> Harness {
            Harness::with_host(parallel, prompt_cache, 0)
        }

        fn with_host(parallel: usize, prompt_cache: bool, host_bytes: usize) -> Harness {
            Harness::with_backend(parallel, prompt_cache, host_bytes, false)
        }

        /// Over a backend that says it computes on its own (a GPU): tokens are held back
        /// until the next pass is launched.
        fn asynchronous(parallel: usize) -> Harness {
            Harness::with_backend(parallel, true, 0, true)
        }

        fn with_backend(
            parallel: usize,
            prompt_cache: bool,
            host_bytes: usize,
            asynchronous: bool,
        ) -> Harness {
            let config = EngineConfig {
                parallel,
                context_per_slot: 512,
                batch_size: 64,
                threads: 1,
                prompt_cache,
                prompt_cache_ram: host_bytes,
                ..EngineConfig::default()
            };
            let mut backend = ScriptedBackend::new(parallel, VOCAB);
            backend.asynchronous = asynchronous;
            Harness {
                scheduler: Scheduler::new(vocab(), backend, &config, Arc::default()),
                next_id: 1,
                sampling: SamplingParams::greedy(),
                scattered: 0,
            }
        }

        fn submit(&mut self, prompt: &[u32], max_tokens: usize) -> (RequestId, Shared) {
            self.submit_with(prompt, max_tokens, Priority::Normal)
        }

        fn submit_with(
            &mut self,
            prompt: &[u32],
            max_tokens: usize,
            priority: Priority,
        ) -> (RequestId, Shared) {
            self.submit_media(prompt, Vec::new(), max_tokens, priority)
        }

        fn submit_media(
            &mut self,
            prompt: &[u32],
            media: Vec<PromptMedia>,
            max_tokens: usize,
            priority: Priority,
        ) -> (RequestId, Shared) {
            self.submit_listening(prompt, media, max_tokens, priority, usize::MAX)
        }

        /// As `submit_media`, with a client that goes away after `listens` deltas (its sink
        /// refuses the next one).
        fn submit_listening(
            &mut self,
            prompt: &[u32],
            media: Vec<PromptMedia>,
            max_tokens: usize,
            priority: Priority,
            listens: usize,
        ) -> (RequestId, Shared) {
            let (submission, run) = self.submission(prompt, media, max_tokens, priority, listens);
            let id = submission.id;
            self.scheduler.handle(Command::Submit(Box::new(submission)));
            (id, run)
        }

        /// `parallel` slots with the prompt cache, `gather` waiting up to `limit`, and the
        /// inbox it reads.
        fn gathering(
            parallel: usize,
            limit: Duration,
        ) -> (Harness, mpsc::Sender<Command>, mpsc::Receiver<Command>) {
            let mut h = Harness::new(parallel, true);
            h.scheduler.gather_limit = limit;
            let (tx, inbox) = mpsc::channel();
            (h, tx, inbox)
        }

        /// A plain request a caller is still preparing (for `gather`): not yet submitted.
        fn on_its_way(&mut self, prompt: &[u32], max_tokens: usize) -> (Submission, Shared) {
            self.submission(prompt, vec![], max_tokens, Priority::Normal, usize::MAX)
        }

        /// A request as `submit_listening` would submit it, and where its output goes.
        fn submission(
            &mut self,
            prompt: &[u32],
            media: Vec<PromptMedia>,
            max_tokens: usize,
            priority: Priority,
            listens: usize,
        ) -> (Submission, Shared) {
            let run: Shared = Arc::default();
            let out = run.clone();
            let mut deltas = 0;
            let sink: EventSink = Box::new(move |event| {
                let mut run = out.lock().unwrap();
                match event {
                    Event::Delta { tokens, .. } => {
                        deltas += 1;
                        run.last_delta_on = std::thread::current().name().map(str::to_owned);
                        if deltas > listens {
                            return false;
                        }
                        run.tokens.extend(tokens.iter().map(|t| t.id))
                    }
                    Event::Done { usage, .. } => run.usage = Some(usage),
                    Event::Error(e) => run.error = Some(e),
                }
                true
            });
            let id = self.next_id;
            self.next_id += 1;
            let submission = Submission {
                id,
                request: GenerationRequest {
                    prompt: prompt.to_vec(),
                    media,
                    sampling: self.sampling.clone(),
                    max_tokens: Some(max_tokens),
                    stop: vec![],
                    format: None,
                    priority,
                },
                constraint: None,
                sink,
            };
            (submission, run)
        }

        /// One admission and step; a step in several passes over the weights must be one
        /// of at most `PACK_AFTER_STEPS` in a row (`pack`).
        fn step(&mut self) {
            self.scheduler.admit();
            let decodes = self.scheduler.backend.runs.len();
            self.scheduler.step();
            for (at, &runs) in self.scheduler.backend.runs.iter().enumerate().skip(decodes) {
                let slots: Vec<usize> = self.scheduler.backend.decoded[at]
                    .iter()
                    .map(|e| e.slot)
                    .collect();
                self.scattered = if runs > 1 { self.scattered + 1 } else { 0 };
                assert!(
                    self.scattered <= PACK_AFTER_STEPS,
                    "{} steps in a row in several passes: slots {slots:?}",
                    self.scattered
                );
            }
        }

        fn run_until_idle(&mut self) {
            for _ in 0..10_000 {
                if self.scheduler.running.is_empty()
                    && self.scheduler.waiting.is_empty()
                    && self.scheduler.paused.is_empty()
                {
                    return;
                }
                self.step();
            }
            panic!("the scheduler never went idle");
        }

        /// Generate alone to completion: (tokens, cached prompt tokens).
        fn generate(&mut self, prompt: &[u32], max_tokens: usize) -> (Vec<u32>, usize) {
            let (_, run) = self.submit(prompt, max_tokens);
            self.run_until_idle();
            let run = run.lock().unwrap();
            assert_eq!(run.error, None);
            (
                run.tokens.clone(),
                run.usage.expect("finished").cached_tokens,
            )
        }

        /// Prompt tokens decoded so far (entries without logits are prompt tokens; each
        /// prompt's last token has logits, so count positions below the prompt's length).
        fn decoded(&self) -> usize {
            self.scheduler.backend.tokens_decoded()
        }

        fn kv(&self, slot: usize) -> &[u32] {
            &self.scheduler.backend.kv[slot]
        }
    }

    fn prompt(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32)
            .map(|i| 1 + (seed * 31 + i * 7) % 60)
            .collect()
    }

    /// Eight slots, after a first round of eight 30-token prompts (one 20-token system
    /// prompt, then each its own question; 12 tokens each): the harness, the prompts and
    /// the first round's runs.
    fn first_round_of_eight(seed: u32) -> (Harness, Vec<Vec<u32>>, Vec<Shared>) {
        let mut h = Harness::new(8, true);
        let system = prompt(seed, 20);
        let prompts: Vec<Vec<u32>> = (0..8)
            .map(|i| {
                let mut p = system.clone();
                p.extend(prompt(seed + 1 + i, 10));
                p
            })
            .collect();
        let firsts = prompts.iter().map(|p| h.submit(p, 12).1).collect();
        h.run_until_idle();
        (h, prompts, firsts)
    }

    /// Each of `runs` (of `first_round_of_eight`'s prompts `which`) read all of its prompt
    /// but the last token from a cache and answered as its first run (`firsts`) did.
    fn assert_cached_and_unchanged(runs: &[Shared], which: &[usize], firsts: &[Shared]) {
        for (run, &i) in runs.iter().zip(which) {
            let run = run.lock().unwrap();
            assert_eq!(run.error, None);
            assert_eq!(run.usage.unwrap().cached_tokens, 30 - REDECODE_TOKENS);
            assert_eq!(run.tokens, firsts[i].lock().unwrap().tokens);
        }
    }

    fn cold(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
        Harness::new(1, false).generate(prompt, max_tokens).0
    }

    #[test]
    fn a_repeated_prompt_decodes_only_its_tail_again() {
        let mut h = Harness::new(2, true);
        let p = prompt(1, 100);
        let (first, cached) = h.generate(&p, 6);
        assert_eq!(cached, 0);
        let before = h.decoded();
        let (second, cached) = h.generate(&p, 6);
        assert_eq!(
            cached,
            100 - REDECODE_TOKENS,
            "all but the last prompt tokens"
        );
        assert_eq!(second, first);
        // The tail of the prompt, then the generated ones (the last sampled is never decoded).
        assert_eq!(h.decoded() - before, REDECODE_TOKENS + 5);
    }

    #[test]
    fn a_conversation_continues_from_its_cache_and_matches_a_cold_run() {
        let mut h = Harness::new(2, true);
        let turn1 = prompt(2, 80);
        let (reply, _) = h.generate(&turn1, 8);
        let mut turn2 = turn1.clone();
        turn2.extend(&reply);
        turn2.extend(prompt(3, 20));
        let (warm, cached) = h.generate(&turn2, 10);
        // The prompt and the reply's decoded tokens (all but its last, never decoded).
        assert_eq!(cached, 80 + 7);
        assert_eq!(warm, cold(&turn2, 10));
    }

    #[test]
    fn a_sequence_moves_next_to_the_running_slots_and_other_caches_are_left_alone() {
        let mut h = Harness::new(4, true);
        let (x, y, z) = (prompt(4, 60), prompt(5, 60), prompt(6, 30));
        h.generate(&x, 4); // slot 0
        h.generate(&y, 4); // an empty slot rather than x's: slot 1
        assert!(h.kv(0).starts_with(&x) && h.kv(1).starts_with(&y));
        let (_, z_run) = h.submit(&z, 40);
        h.step(); // z runs in slot 2
                  // x again: it starts in its own slot 0, not next to z's, and once that has
                  // lasted `PACK_AFTER_STEPS` steps it moves to 3 (empty) rather than over y's
                  // cache in 1.
        let copies = h.scheduler.backend.copies;
        let x_tokens = PACK_AFTER_STEPS + 6;
        let (again, cached) = h.generate(&x, x_tokens);
        assert_eq!((again, cached), (cold(&x, x_tokens), 60 - REDECODE_TOKENS));
        assert!(h.kv(3).starts_with(&x));
        assert_eq!(h.scheduler.backend.copies, copies + 1);
        // y again: its own slot is next to z's, so no copy.
        let (again, cached) = h.generate(&y, 4);
        assert_eq!((again, cached), (cold(&y, 4), 60 - REDECODE_TOKENS));
        assert_eq!(h.scheduler.backend.copies, copies + 1);
        assert!(
            h.kv(0).starts_with(&x),
            "x's conversation up to its move was left where it was as a cache"
        );
        assert!(z_run.lock().unwrap().error.is_none());
    }

    #[test]
    fn streams_resending_their_prompts_at_once_each_find_their_own_slot() {
        let mut h = Harness::new(4, true);
        let prompts: Vec<Vec<u32>> = (0..4).map(|i| prompt(10 + i, 50)).collect();
        let runs: Vec<_> = prompts.iter().map(|p| h.submit(p, 4).1).collect();
        h.run_until_idle();
        drop(runs);
        // The same four again, in another order: each starts in the slot holding its prompt.
        let copies_before = h.scheduler.backend.copies;
        let runs: Vec<_> = prompts.iter().rev().map(|p| h.submit(p, 4).1).collect();
        h.run_until_idle();
        for run in &runs {
            let cached = run.lock().unwrap().usage.unwrap().cached_tokens;
            assert_eq!(cached, 50 - REDECODE_TOKENS);
        }
        assert_eq!(
            h.scheduler.backend.copies, copies_before,
            "a cache was copied"
        );
    }

    #[test]
    fn a_burst_coming_back_to_its_slots_fills_its_own_gaps_and_moves_nothing() {
        // Eight streams, then the same eight again arriving over three steps in an order
        // that leaves gaps at first: each takes its own cached slot, the gaps close as the
        // rest arrive, and nothing is moved, copied or saved.
        let (mut h, prompts, firsts) = first_round_of_eight(60);
        let (copies, saves) = (h.scheduler.backend.copies, h.scheduler.backend.saves);
        let mut again = Vec::new();
        let waves: [&[usize]; 3] = [&[7, 2, 4], &[0, 5, 1], &[3, 6]];
        for wave in waves {
            for &i in wave {
                again.push((i, h.submit(&prompts[i], 12).1));
            }
            h.step();
        }
        h.run_until_idle();
        assert_eq!(h.scheduler.stats.slot_moves.load(Ordering::Relaxed), 0);
        assert_eq!(
            (h.scheduler.backend.copies, h.scheduler.backend.saves),
            (copies, saves)
        );
        let (which, runs): (Vec<usize>, Vec<Shared>) = again.into_iter().unzip();
        assert_cached_and_unchanged(&runs, &which, &firsts);
    }

    #[test]
    fn streams_coming_back_to_scattered_slots_are_moved_next_to_each_other() {
        // Round 1 fills all eight slots; in round 2 four of the streams come back, to their
        // own caches in slots 0, 3, 5 and 7. Decoded there, every step would be four passes
        // over the weights: the sequences move into one run of slots (a copy each) and keep
        // their whole prompts and their tokens; the slots they left keep them as caches.
        let (mut h, prompts, firsts) = first_round_of_eight(50);
        let back = [0, 3, 5, 7];
        let decodes = h.scheduler.backend.runs.len();
        let runs: Vec<Shared> = back.iter().map(|&i| h.submit(&prompts[i], 12).1).collect();
        h.run_until_idle();
        // Scattered for `PACK_AFTER_STEPS` steps (the harness checks no longer), then one
        // pass a step.
        let passes = &h.scheduler.backend.runs[decodes..];
        assert!(
            passes[..PACK_AFTER_STEPS].iter().all(|&p| p > 1),
            "{passes:?}"
        );
        assert!(
            passes[PACK_AFTER_STEPS..].iter().all(|&p| p == 1),
            "{passes:?}"
        );
        assert!(h.scheduler.stats.slot_moves.load(Ordering::Relaxed) >= 2);
        assert_cached_and_unchanged(&runs, &back, &firsts);
        // A third time, all of each prompt is still cached somewhere.
        let runs: Vec<Shared> = back.iter().map(|&i| h.submit(&prompts[i], 12).1).collect();
        h.run_until_idle();
        assert_cached_and_unchanged(&runs, &back, &firsts);
    }

    #[test]
    fn a_warm_burst_arriving_over_several_steps_reads_only_its_tails() {
        // Eight streams share a system prompt; round 1 fills every slot. In round 2 the same
        // prompts come back a few at a time (as HTTP clients send them): each must still find
        // its whole prompt — own slot, a copy or host memory — and resending a prompt must
        // not save the reply cached after it.
        let mut h = Harness::with_host(8, true, 1 << 20);
        let system = prompt(40, 64);
        let prompts: Vec<Vec<u32>> = (0..8)
            .map(|i| {
                let mut p = system.clone();
                p.extend(prompt(41 + i, 12 + i as usize));
                p
            })
            .collect();
        let firsts: Vec<Shared> = prompts.iter().map(|p| h.submit(p, 20).1).collect();
        h.run_until_idle();
        let saves = h.scheduler.backend.saves;
        let mut runs = vec![h.submit(&prompts[0], 20).1];
        h.step();
        runs.push(h.submit(&prompts[1], 20).1);
        runs.push(h.submit(&prompts[2], 20).1);
        h.step();
        runs.extend(prompts[3..].iter().map(|p| h.submit(p, 20).1));
        h.run_until_idle();
        for ((run, first), p) in runs.iter().zip(&firsts).zip(&prompts) {
            let run = run.lock().unwrap();
            assert_eq!(run.error, None);
            assert_eq!(run.usage.unwrap().cached_tokens, p.len() - REDECODE_TOKENS);
            assert_eq!(run.tokens, first.lock().unwrap().tokens);
        }
        assert_eq!(
            h.scheduler.backend.saves, saves,
            "a resent prompt's old reply was saved to host memory"
        );
    }

    #[test]
    fn a_running_sequence_shares_its_decoded_prefix() {
        let mut h = Harness::new(2, true);
        let system = prompt(6, 64);
        let mut a = system.clone();
        a.extend(prompt(7, 10));
        let mut b = system.clone();
        b.extend(prompt(8, 10));
        let (_, run_a) = h.submit(&a, 30);
        h.step();
        h.step(); // a's prompt (74 tokens, batch 64) is in and it is generating
        let (_, run_b) = h.submit(&b, 5);
        h.run_until_idle();
        let b_usage = run_b.lock().unwrap().usage.unwrap();
        assert_eq!(b_usage.cached_tokens, 64, "the shared system prompt");
        assert_eq!(run_b.lock().unwrap().tokens, cold(&b, 5));
        assert_eq!(run_a.lock().unwrap().tokens, cold(&a, 30));
    }

    #[test]
    fn a_conversation_pushed_out_of_every_slot_comes_back_from_host_memory() {
        let mut h = Harness::with_host(2, true, 1 << 20);
        let a = prompt(20, 100);
        let (first, _) = h.generate(&a, 5);
        for seed in 21..25 {
            h.generate(&prompt(seed, 100), 5);
        }
        assert!(
            (0..2).all(|s| !h.kv(s).starts_with(&a)),
            "a is in no slot any more"
        );
        assert!(h.scheduler.backend.saves > 0);
        let (again, cached) = h.generate(&a, 5);
        assert_eq!(h.scheduler.backend.restores, 1);
        assert_eq!(cached, 100 - REDECODE_TOKENS);
        assert_eq!(again, first);
        assert_eq!(again, cold(&a, 5));
    }

    #[test]
    fn host_memory_keeps_within_its_bound_least_recently_used_out() {
        // Room for two saved conversations of 104 tokens (4 bytes a token in the mock).
        let mut h = Harness::with_host(1, true, 2 * 104 * 4 + 10);
        let conversations: Vec<Vec<u32>> = (30..35).map(|seed| prompt(seed, 100)).collect();
        for c in &conversations {
            h.generate(c, 5);
        }
        assert!(h.scheduler.host.bytes() <= 2 * 104 * 4 + 10);
        assert_eq!(h.scheduler.host.len(), 2);
        // The oldest were evicted; the one before the last (saved last) comes back.
        assert!(h.generate(&conversations[0], 5).1 < 64);
        assert_eq!(h.generate(&conversations[3], 5).1, 100 - REDECODE_TOKENS);
    }

    #[test]
    fn choices_of_one_prompt_prefill_it_once() {
        let mut h = Harness::new(4, true);
        let p = prompt(11, 100);
        let runs: Vec<Shared> = (0..4).map(|_| h.submit(&p, 6).1).collect();
        h.run_until_idle();
        let prompt_entries: usize = h
            .scheduler
            .backend
            .decoded
            .iter()
            .flatten()
            .filter(|e| e.position < p.len())
            .count();
        // One full prefill, then the tail for each of the three copies.
        assert_eq!(prompt_entries, 100 + 3 * REDECODE_TOKENS);
        let expected = cold(&p, 6);
        for run in runs {
            assert_eq!(run.lock().unwrap().tokens, expected);
        }
    }

    #[test]
    fn a_sequence_cancelled_mid_prefill_leaves_a_usable_cache() {
        let mut h = Harness::new(1, true);
        let long = prompt(9, 150);
        let (id, _) = h.submit(&long, 5);
        h.step(); // 64 of 150 prompt tokens decoded
        h.scheduler.cancel(id);
        assert_eq!(h.kv(0).len(), 64);
        let (tokens, cached) = h.generate(&long, 5);
        assert_eq!(cached, 64);
        assert_eq!(tokens, cold(&long, 5));
    }

    #[test]
    fn a_failed_decode_forgets_the_cache_and_the_cache_can_be_off() {
        let mut h = Harness::new(1, true);
        let p = prompt(10, 40);
        h.generate(&p, 3);
        h.scheduler.backend.fail_next = true;
        let (_, run) = h.submit(&p, 3);
        h.run_until_idle();
        assert!(run.lock().unwrap().error.is_some());
        assert!(
            h.kv(0).is_empty(),
            "cells of a failed batch are not trusted"
        );
        let (tokens, cached) = h.generate(&p, 3);
        assert_eq!((cached, tokens), (0, cold(&p, 3)));

        let mut off = Harness::new(1, false);
        off.generate(&p, 3);
        assert!(off.kv(0).is_empty());
        assert_eq!(off.generate(&p, 3).1, 0);
    }

    fn tokens(run: &Shared) -> Vec<u32> {
        run.lock().unwrap().tokens.clone()
    }

    fn running_ids(h: &Harness) -> Vec<RequestId> {
        let mut ids: Vec<_> = h.scheduler.running.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn on_an_asynchronous_backend_tokens_go_out_after_the_next_launch_unchanged() {
        // Both prompts fit one step's batch of 64.
        let (a, b) = (prompt(1, 40), prompt(2, 20));
        let mut h = Harness::asynchronous(2);
        let (_, run_a) = h.submit(&a, 20);
        let (_, run_b) = h.submit(&b, 12);
        // The first step reads both prompts and samples each a first token: held back.
        h.step();
        assert!(tokens(&run_a).is_empty() && tokens(&run_b).is_empty());
        assert_eq!(h.scheduler.running[0].deferred.len(), 1);
        // The next launch hands them over (and holds back the next ones).
        h.step();
        assert_eq!(tokens(&run_a).len(), 1);
        assert_eq!(tokens(&run_b).len(), 1);
        h.run_until_idle();
        assert_eq!(tokens(&run_a), cold(&a, 20));
        assert_eq!(tokens(&run_b), cold(&b, 12));
        for run in [&run_a, &run_b] {
            let run = run.lock().unwrap();
            assert_eq!(run.error, None);
            assert_eq!(run.usage.expect("done").completion_tokens, run.tokens.len());
        }
        // Each slot's cache is what was decoded into it: a repeat reads only its tail.
        let before = h.decoded();
        assert_eq!(h.generate(&a, 20).0, cold(&a, 20));
        assert_eq!(h.decoded() - before, 1 + 19);
    }

    #[test]
    fn on_an_asynchronous_backend_many_sequences_sample_on_several_threads_unchanged() {
        let prompts: Vec<Vec<u32>> = (0..10).map(|i| prompt(i, 20 + i as usize)).collect();
        let mut h = Harness::asynchronous(10);
        let runs: Vec<Shared> = prompts.iter().map(|p| h.submit(p, 16).1).collect();
        h.run_until_idle();
        for (p, run) in prompts.iter().zip(&runs) {
            assert_eq!(tokens(run), cold(p, 16));
        }
        // Sequences ending on those threads (the engine thread samples the lowest slots:
        // the highest end first, while 8 or more still run), one of them refused its last
        // delta by a client gone: each ends as it would alone.
        let runs: Vec<(usize, Shared)> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let max = 20 - i;
                let listens = if i == 8 { max - 1 } else { usize::MAX };
                (
                    max,
                    h.submit_listening(p, Vec::new(), max, Priority::Normal, listens)
                        .1,
                )
            })
            .collect();
        h.run_until_idle();
        for (i, (p, (max, run))) in prompts.iter().zip(&runs).enumerate() {
            let run = run.lock().unwrap();
            if i == 8 {
                assert_eq!(run.tokens, cold(p, *max)[..*max - 1]);
                assert_eq!(run.usage, None, "nobody to tell");
            } else {
                assert_eq!(run.tokens, cold(p, *max));
                assert!(run.usage.is_some());
            }
        }
        // (A machine of one CPU has no sampling threads.)
        for i in [8, 9]
            .into_iter()
            .filter(|_| h.scheduler.sampling_pool.is_some())
        {
            let on = runs[i].1.lock().unwrap().last_delta_on.clone();
            assert!(
                on.as_deref()
                    .is_some_and(|name| name.starts_with("hearth-sample")),
                "sequence {i} ended on {on:?}"
            );
        }
        assert_eq!(h.scheduler.free_slots.len(), 10);
    }

    #[test]
    fn on_an_asynchronous_backend_a_client_gone_mid_stream_ends_only_its_sequence() {
        let (a, b) = (prompt(1, 30), prompt(2, 30));
        let mut h = Harness::asynchronous(2);
        let (_, run_a) = h.submit_listening(&a, Vec::new(), 40, Priority::Normal, 5);
        let (_, run_b) = h.submit(&b, 40);
        h.run_until_idle();
        assert_eq!(tokens(&run_a), cold(&a, 40)[..5]);
        assert_eq!(run_a.lock().unwrap().usage, None, "nobody to tell");
        assert_eq!(tokens(&run_b), cold(&b, 40));
        assert_eq!(h.scheduler.free_slots.len(), 2);
        // The abandoned slot's cache holds what was decoded, the held-back token included.
        let slot_a = h
            .scheduler
            .slots
            .iter()
            .position(|c| c.tokens.starts_with(&a));
        let cache = &h.scheduler.slots[slot_a.expect("a's cache is kept")].tokens;
        assert_eq!(cache.len(), h.kv(slot_a.unwrap()).len());
        assert_eq!(h.generate(&a, 40).0, cold(&a, 40));
    }

    #[test]
    fn on_an_asynchronous_backend_a_paused_sequence_has_all_its_tokens_and_resumes_exactly() {
        let (a, b, urgent) = (prompt(1, 30), prompt(2, 30), prompt(3, 30));
        let mut h = Harness::asynchronous(2);
        let (_, run_a) = h.submit_with(&a, 24, Priority::Low);
        let (b_id, run_b) = h.submit_with(&b, 24, Priority::Low);
        for _ in 0..5 {
            h.step();
        }
        let (_, run_high) = h.submit_with(&urgent, 8, Priority::High);
        h.step();
        assert_eq!(h.scheduler.paused[0].seq.id, b_id);
        assert!(h.scheduler.paused[0].seq.deferred.is_empty());
        // 5 steps sampled 5 tokens; the pause handed over the one held back.
        assert_eq!(tokens(&run_b).len(), 5);
        h.run_until_idle();
        assert_eq!(tokens(&run_b), cold(&b, 24));
        assert_eq!(tokens(&run_a), cold(&a, 24));
        assert_eq!(tokens(&run_high), cold(&urgent, 8));
    }

    #[test]
    fn on_an_asynchronous_backend_a_sequence_whose_client_left_is_released_not_paused() {
        let (a, b, urgent) = (prompt(1, 30), prompt(2, 30), prompt(3, 30));
        let mut h = Harness::asynchronous(2);
        let (_, run_a) = h.submit_with(&a, 24, Priority::Low);
        // After 5 steps b has had 4 tokens handed over and holds a fifth back, which its
        // client (gone by then) refuses when the pause hands it over.
        let (_, run_b) = h.submit_listening(&b, Vec::new(), 24, Priority::Low, 4);
        for _ in 0..5 {
            h.step();
        }
        let (high_id, run_high) = h.submit_with(&urgent, 8, Priority::High);
        h.step();
        assert!(
            h.scheduler.paused.is_empty(),
            "nothing to resume for nobody"
        );
        assert!(running_ids(&h).contains(&high_id));
        assert_eq!(tokens(&run_b), cold(&b, 24)[..4]);
        h.run_until_idle();
        assert_eq!(tokens(&run_a), cold(&a, 24));
        assert_eq!(tokens(&run_high), cold(&urgent, 8));
        assert_eq!(h.scheduler.free_slots.len(), 2);
        assert_eq!(h.scheduler.stats.preemptions.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_high_request_pauses_the_newest_low_one_which_resumes_exactly() {
        let (a, b, urgent) = (prompt(1, 40), prompt(2, 40), prompt(3, 30));
        let mut h = Harness::new(2, true);
        let (a_id, run_a) = h.submit_with(&a, 24, Priority::Low);
        let (b_id, run_b) = h.submit_with(&b, 24, Priority::Low);
        for _ in 0..5 {
            h.step();
        }
        let (high_id, run_high) = h.submit_with(&urgent, 8, Priority::High);
        h.step();
        assert_eq!(running_ids(&h), vec![a_id, high_id]);
        assert_eq!(h.scheduler.paused.len(), 1);
        assert_eq!(
            h.scheduler.paused[0].seq.id, b_id,
            "the newer low sequence is paused"
        );
        let so_far = tokens(&run_b).len();
        assert!(so_far > 0);
        for _ in 0..3 {
            h.step();
        }
        assert_eq!(
            tokens(&run_b).len(),
            so_far,
            "a paused sequence produces nothing"
        );
        h.run_until_idle();
        // Every sequence's tokens are those of an uninterrupted run (the scripted model's
        // next token is a hash of the slot's whole KV: a wrong restore changes them).
        assert_eq!(tokens(&run_b), cold(&b, 24));
        assert_eq!(tokens(&run_a), cold(&a, 24));
        assert_eq!(tokens(&run_high), cold(&urgent, 8));
        assert!(run_b.lock().unwrap().usage.is_some());
        assert_eq!(h.scheduler.free_slots.len(), 2);
        assert_eq!(h.scheduler.stats.preemptions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_paused_sequence_resumes_before_later_arrivals_of_its_priority() {
        let mut h = Harness::new(1, true);
        let (_, run_low) = h.submit_with(&prompt(1, 20), 12, Priority::Low);
        h.step();
        h.step();
        let (_, run_high) = h.submit_with(&prompt(2, 20), 4, Priority::High);
        let (late_id, run_late) = h.submit_with(&prompt(3, 20), 4, Priority::Low);
        h.step();
        assert_eq!(h.scheduler.paused.len(), 1);
        while run_high.lock().unwrap().usage.is_none() {
            h.step();
        }
        h.step();
        assert!(
            !running_ids(&h).contains(&late_id),
            "the later low request went first"
        );
        h.run_until_idle();
        assert_eq!(tokens(&run_low), cold(&prompt(1, 20), 12));
        assert_eq!(tokens(&run_late), cold(&prompt(3, 20), 4));
    }

    #[test]
    fn only_high_requests_preempt_and_only_lower_priorities() {
        // Normal does not pause low; high does not pause high.
        let mut h = Harness::new(1, true);
        let (low_id, _) = h.submit_with(&prompt(1, 10), 30, Priority::Low);
        h.step();
        h.submit_with(&prompt(2, 10), 4, Priority::Normal);
        h.step();
        assert_eq!(running_ids(&h), vec![low_id]);
        assert!(h.scheduler.paused.is_empty());

        let mut h = Harness::new(1, true);
        let (first, _) = h.submit_with(&prompt(1, 10), 30, Priority::High);
        h.step();
        h.submit_with(&prompt(2, 10), 4, Priority::High);
        h.step();
        assert_eq!(running_ids(&h), vec![first]);

        // The lowest priority goes first, however new the others are.
        let mut h = Harness::new(2, true);
        let (low_id, _) = h.submit_with(&prompt(1, 10), 30, Priority::Low);
        let (normal_id, _) = h.submit_with(&prompt(2, 10), 30, Priority::Normal);
        h.step();
        let (high_id, _) = h.submit_with(&prompt(3, 10), 4, Priority::High);
        h.step();
        assert_eq!(running_ids(&h), vec![normal_id, high_id]);
        assert_eq!(h.scheduler.paused[0].seq.id, low_id);

        // Off: the high request waits.
        let mut h = Harness::new(1, true);
        h.scheduler.preemption = false;
        let (low_id, _) = h.submit_with(&prompt(1, 10), 30, Priority::Low);
        h.step();
        h.submit_with(&prompt(2, 10), 4, Priority::High);
        h.step();
        assert_eq!(running_ids(&h), vec![low_id]);
        assert!(h.scheduler.paused.is_empty());
    }

    #[test]
    fn a_sequence_cancelled_while_paused_ends_and_leaks_nothing() {
        let mut h = Harness::new(1, true);
        let (low_id, run_low) = h.submit_with(&prompt(1, 20), 30, Priority::Low);
        h.step();
        h.step();
        let (_, run_high) = h.submit_with(&prompt(2, 20), 6, Priority::High);
        h.step();
        assert_eq!(h.scheduler.paused.len(), 1);
        h.scheduler.handle(Command::Cancel(low_id));
        assert!(h.scheduler.paused.is_empty());
        let usage = run_low.lock().unwrap().usage.expect("a Done event");
        assert_eq!(usage.completion_tokens, tokens(&run_low).len());
        h.run_until_idle();
        assert_eq!(tokens(&run_high), cold(&prompt(2, 20), 6));
        assert_eq!(h.scheduler.free_slots.len(), 1);
        h.scheduler.publish_stats();
        assert_eq!(h.scheduler.stats.paused.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_sequence_paused_mid_prefill_finishes_its_prompt_after() {
        // A 200-token prompt takes several 64-token steps; pause it in the middle.
        let long = prompt(1, 200);
        let mut h = Harness::new(1, true);
        let (_, run_low) = h.submit_with(&long, 10, Priority::Low);
        h.step();
        assert!(h.scheduler.running[0].prefilled < long.len());
        let (_, run_high) = h.submit_with(&prompt(2, 20), 5, Priority::High);
        h.run_until_idle();
        assert_eq!(tokens(&run_high), cold(&prompt(2, 20), 5));
        assert_eq!(tokens(&run_low), cold(&long, 10));
        let usage = run_low.lock().unwrap().usage.unwrap();
        assert_eq!(usage.prompt_tokens, 200);
    }

    #[test]
    fn a_conversation_hits_after_fifty_others_passed_through_its_slot() {
        let mut h = Harness::with_host(1, true, 1 << 30);
        let mut conversation = prompt(1, 80);
        let (reply, _) = h.generate(&conversation, 8);
        for other in 0..50 {
            h.generate(&prompt(100 + other, 70), 4);
        }
        conversation.extend(&reply);
        conversation.extend(prompt(2, 10));
        let (out, cached) = h.generate(&conversation, 8);
        // The prompt and the decoded reply (its last token was sampled, never decoded).
        assert_eq!(cached, 80 + 7);
        assert_eq!(out, cold(&conversation, 8));
        assert!(h.scheduler.host.len() >= 50);
    }

    /// `before` text tokens, an image of `len` placeholders named by `hash`, `after` text.
    fn image_prompt(
        seed: u32,
        before: usize,
        hash: u64,
        len: usize,
        after: usize,
    ) -> (Vec<u32>, Vec<PromptMedia>) {
        let mut tokens = prompt(seed, before);
        tokens.extend(crate::vision::placeholders(hash, len));
        tokens.extend(prompt(seed + 1, after));
        let media = vec![PromptMedia {
            start: before,
            len,
            image: None,
        }];
        (tokens, media)
    }

    fn generate_media(
        h: &mut Harness,
        (tokens, media): &(Vec<u32>, Vec<PromptMedia>),
        max: usize,
    ) -> (Vec<u32>, usize) {
        let (_, run) = h.submit_media(tokens, media.clone(), max, Priority::Normal);
        h.run_until_idle();
        let run = run.lock().unwrap();
        assert_eq!(run.error, None);
        (
            run.tokens.clone(),
            run.usage.expect("finished").cached_tokens,
        )
    }

    #[test]
    fn an_image_is_evaluated_whole_in_its_own_pass_beside_running_streams() {
        let image = image_prompt(1, 5, 7, 12, 6);
        let text = prompt(40, 30);
        let (solo_image, _) = generate_media(&mut Harness::new(2, false), &image, 20);
        let solo_text = cold(&text, 20);
        let mut h = Harness::new(2, false);
        let (_, t) = h.submit(&text, 20);
        h.step();
        let (_, i) = h.submit_media(&image.0, image.1.clone(), 20, Priority::Normal);
        h.run_until_idle();
        assert_eq!(h.scheduler.backend.media_decoded, 1);
        assert_eq!(i.lock().unwrap().tokens, solo_image);
        assert_eq!(i.lock().unwrap().usage.unwrap().prompt_tokens, 23);
        assert_eq!(t.lock().unwrap().tokens, solo_text);
    }

    #[test]
    fn a_repeated_image_comes_from_the_cache_and_another_image_does_not() {
        let mut h = Harness::new(1, true);
        let first = image_prompt(1, 5, 7, 12, 6);
        let (cold_reply, _) = generate_media(&mut h, &first, 10);
        let (again, cached) = generate_media(&mut h, &first, 10);
        assert_eq!(again, cold_reply);
        assert_eq!(cached, first.0.len() - REDECODE_TOKENS);
        assert_eq!(h.scheduler.backend.media_decoded, 1);
        // Same text, another image: only the text before it is reused.
        let other = image_prompt(1, 5, 8, 12, 6);
        let (_, cached) = generate_media(&mut h, &other, 10);
        assert_eq!(cached, 5);
        assert_eq!(h.scheduler.backend.media_decoded, 2);
    }

    #[test]
    fn a_cached_prefix_ending_inside_an_image_starts_again_at_the_image() {
        let mut h = Harness::new(1, true);
        let first = image_prompt(1, 5, 7, 12, 6);
        generate_media(&mut h, &first, 4);
        // A prompt that agrees with the cache for 3 cells into its image (a different image
        // sharing them): the image must be evaluated whole, never its tail as text.
        let mut tokens = first.0.clone();
        for t in &mut tokens[8..17] {
            *t ^= 1;
        }
        let second = (tokens, first.1.clone());
        let (reply, cached) = generate_media(&mut h, &second, 4);
        assert_eq!(cached, 5);
        assert_eq!(h.scheduler.backend.media_decoded, 2);
        let (alone, _) = generate_media(&mut Harness::new(1, false), &second, 4);
        assert_eq!(reply, alone);
    }

    #[test]
    fn a_failed_image_ends_its_sequence_alone() {
        let mut h = Harness::new(2, true);
        let text = prompt(40, 8);
        let (_, t) = h.submit(&text, 12);
        h.step();
        let image = image_prompt(1, 5, 7, 12, 6);
        let (_, i) = h.submit_media(&image.0, image.1.clone(), 12, Priority::Normal);
        // The image's text before it goes in one step; the image is evaluated (and fails)
        // at the start of the next.
        h.step();
        h.scheduler.backend.fail_next = true;
        h.run_until_idle();
        assert!(i
            .lock()
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("image"));
        assert_eq!(t.lock().unwrap().tokens, cold(&text, 12));
        // The slot's cache holds the text before the image, and serves it again.
        let (_, cached) = generate_media(&mut h, &image, 4);
        assert!(cached >= 5, "{cached}");
    }

    /// The tokens of each of `runs`, which must have finished without an error.
    fn tokens_of(runs: &[Shared]) -> Vec<Vec<u32>> {
        runs.iter()
            .map(|run| {
                let run = run.lock().unwrap();
                assert_eq!(run.error, None);
                assert!(run.usage.is_some(), "unfinished");
                run.tokens.clone()
            })
            .collect()
    }

    #[test]
    fn greedy_tokens_chosen_on_the_device_are_the_hosts_and_no_logits_are_read() {
        // Two rounds of the same three prompts (the second from the cache), greedy, with a
        // logit bias on one: the device's choices are the host's, no logits are read (the
        // mock panics if a step whose outputs were all chosen on the device is read), and
        // a slot gets its chain once, when it first serves a greedy request.
        let prompts: Vec<Vec<u32>> = (0..3).map(|i| prompt(i, 20)).collect();
        let generate = |device: bool| {
            let mut h = Harness::asynchronous(4);
            h.scheduler.backend.device = device;
            let mut runs = Vec::new();
            for _ in 0..2 {
                for (i, p) in prompts.iter().enumerate() {
                    h.sampling = SamplingParams::greedy();
                    if i == 1 {
                        // Ban what it would say first: the bias travels with the chain.
                        let first = ScriptedBackend::next_token(VOCAB, p);
                        h.sampling.logit_bias.insert(first, -100.0);
                    }
                    runs.push(h.submit(p, 12).1);
                }
                h.run_until_idle();
            }
            let backend = &h.scheduler.backend;
            let attached = backend.chains.iter().flatten().count();
            (tokens_of(&runs), backend.chain_changes, attached)
        };
        let (host, host_changes, _) = generate(false);
        let (device, changes, attached) = generate(true);
        assert_eq!(device, host);
        assert_eq!(host_changes, 0);
        assert!(attached >= 3, "{attached}");
        // Slot 1's bias changed hands at most as often as its requests did.
        assert!(
            changes <= attached + 2,
            "{changes} changes, {attached} chains"
        );
    }

    #[test]
    fn sampled_and_greedy_sequences_share_a_step_each_chosen_where_it_must_be() {
        // A sampled sequence (temperature, a seed) beside two greedy ones: its slot keeps no
        // chain and its logits are read (llama.cpp hands them all out then); every token is
        // what the host alone chooses.
        let generate = |device: bool| {
            let mut h = Harness::asynchronous(3);
            h.scheduler.backend.device = device;
            let mut runs = Vec::new();
            for i in 0..3 {
                h.sampling = SamplingParams::greedy();
                if i == 1 {
                    h.sampling.temperature = 0.8;
                    h.sampling.seed = Some(7);
                }
                runs.push(h.submit(&prompt(i, 16), 10).1);
            }
            h.run_until_idle();
            let chains: Vec<bool> = h
                .scheduler
                .backend
                .chains
                .iter()
                .map(Option::is_some)
                .collect();
            (tokens_of(&runs), chains)
        };
        let (host, _) = generate(false);
        let (device, chains) = generate(true);
        assert_eq!(device, host);
        assert_eq!(chains.iter().filter(|&&c| c).count(), 2, "{chains:?}");
    }

    #[test]
    fn a_slot_changes_its_chain_only_when_the_kind_of_request_changes() {
        // One slot: greedy, greedy, sampled, greedy. The chain goes on once, comes off for
        // the sampled request (whose logits must come back), and goes on again.
        let mut h = Harness::asynchronous(1);
        h.scheduler.backend.device = true;
        let p = prompt(3, 12);
        let mut runs = Vec::new();
        for temperature in [0.0, 0.0, 0.9, 0.0] {
            h.sampling = SamplingParams::greedy();
            h.sampling.temperature = temperature;
            h.sampling.seed = Some(1);
            runs.push(h.submit(&p, 6).1);
            h.run_until_idle();
        }
        tokens_of(&runs);
        assert_eq!(h.scheduler.backend.chain_changes, 3);
        assert!(h.scheduler.backend.chains[0].is_some());
    }

    #[test]
    fn an_idle_engine_starts_a_burst_still_being_prepared_in_one_step() {
        // No time limit here: the test must not depend on how fast a thread runs.
        let (mut h, tx, inbox) = Harness::gathering(4, Duration::from_secs(3600));
        let first = h.submit(&prompt(20, 12), 4).1;
        // Nothing else on its way: no wait (with the limit above, a wait would hang).
        assert!(h.scheduler.gather(&inbox));
        assert_eq!(h.scheduler.waiting.len(), 1);
        // Two more on their way: the caller submits each, then drops its guard.
        h.scheduler.stats.preparing.store(2, Ordering::Relaxed);
        let (a, a_run) = h.on_its_way(&prompt(21, 12), 4);
        let (b, b_run) = h.on_its_way(&prompt(22, 12), 4);
        let stats = h.scheduler.stats.clone();
        let caller = std::thread::spawn(move || {
            for submission in [a, b] {
                tx.send(Command::Submit(Box::new(submission))).unwrap();
                stats.preparing.fetch_sub(1, Ordering::Relaxed);
            }
            tx
        });
        assert!(h.scheduler.gather(&inbox));
        let _tx = caller.join().unwrap();
        assert_eq!(h.scheduler.waiting.len(), 3);
        // All three start in the first step.
        h.step();
        assert_eq!(h.scheduler.running.len(), 3);
        let mut slots: Vec<usize> = h.scheduler.backend.decoded[0]
            .iter()
            .map(|e| e.slot)
            .collect();
        slots.dedup();
        assert_eq!(slots.len(), 3);
        // Once something runs, nothing waits: its tokens would stall.
        h.scheduler.stats.preparing.store(1, Ordering::Relaxed);
        let _late = h.submit(&prompt(23, 12), 4).1;
        assert!(h.scheduler.gather(&inbox));
        h.scheduler.stats.preparing.store(0, Ordering::Relaxed);
        h.run_until_idle();
        tokens_of(&[first, a_run, b_run]);
    }

    #[test]
    fn gathering_stops_once_the_waiting_requests_fill_the_free_slots() {
        // Two slots, one request waiting, one more on its way whose caller has not let go
        // of its guard yet: once it arrives every free slot has a request, and the step
        // goes without waiting out the limit.
        let (mut h, tx, inbox) = Harness::gathering(2, Duration::from_secs(20));
        let first = h.submit(&prompt(30, 12), 4).1;
        h.scheduler.stats.preparing.store(1, Ordering::Relaxed);
        let (second, second_run) = h.on_its_way(&prompt(31, 12), 4);
        tx.send(Command::Submit(Box::new(second))).unwrap();
        let started = Instant::now();
        assert!(h.scheduler.gather(&inbox));
        assert!(
            started.elapsed() < h.scheduler.gather_limit,
            "waited out the limit"
        );
        assert_eq!(h.scheduler.waiting.len(), 2);
        h.scheduler.stats.preparing.store(0, Ordering::Relaxed);
        h.run_until_idle();
        tokens_of(&[first, second_run]);
    }
}

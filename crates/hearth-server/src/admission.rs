//! Per-model admission: when every slot of a model's worker is busy, requests wait here, in
//! priority order and first-come within a priority, and are let in as slots free. The queue
//! lives where requests really wait, so its depth limit and timeouts are the real ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use hearth_api::Priority;

/// How long and how many requests may wait.
#[derive(Debug, Clone)]
pub struct QueueLimits {
    /// Most requests waiting for one model, all priorities together.
    pub max_depth: usize,
    /// Most requests waiting per priority (high, normal, low).
    pub max_depth_per_priority: [usize; 3],
    /// Longest wait per priority (high, normal, low).
    pub timeouts: [Duration; 3],
    /// A `high` request needs free slots only among those high requests hold: the worker
    /// pauses lower-priority sequences to make room (`--preemption`).
    pub preemption: bool,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_depth: 256,
            max_depth_per_priority: [usize::MAX; 3],
            timeouts: [
                Duration::from_secs(300),
                Duration::from_secs(120),
                Duration::from_secs(60),
            ],
            preemption: false,
        }
    }
}

impl QueueLimits {
    pub fn timeout(&self, priority: Priority) -> Duration {
        self.timeouts[priority.index()]
    }
}

#[derive(Debug)]
pub enum AdmitError {
    /// The queue is at its depth limit; try again after about this long.
    QueueFull {
        retry_after: Duration,
        which: &'static str,
    },
    /// Waited the priority's whole timeout without getting a slot.
    Timeout { waited: Duration },
}

struct Waiter {
    need: usize,
    wake: oneshot::Sender<()>,
}

struct Inner {
    /// Slots held by admitted requests (more than the capacity while high requests have
    /// paused others).
    in_use: usize,
    /// Of those, slots held by high-priority requests.
    in_use_high: usize,
    /// Admitted requests.
    running: usize,
    next_seq: u64,
    waiting: BTreeMap<(Priority, u64), Waiter>,
    /// Moving average of how long an admitted request holds its slots (seconds).
    mean_service_secs: f64,
    /// When a request last arrived or finished: idle unload and LRU eviction go by it.
    last_used: Instant,
}

pub struct Admission {
    capacity: usize,
    limits: QueueLimits,
    inner: Mutex<Inner>,
}

/// A snapshot for health and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueSnapshot {
    pub running: usize,
    pub waiting: [usize; 3],
}

impl Admission {
    /// `capacity`: the worker's sequence slots.
    pub fn new(capacity: usize, limits: QueueLimits) -> Arc<Admission> {
        Arc::new(Admission {
            capacity: capacity.max(1),
            limits,
            inner: Mutex::new(Inner {
                in_use: 0,
                in_use_high: 0,
                running: 0,
                next_seq: 0,
                waiting: BTreeMap::new(),
                mean_service_secs: 1.0,
                last_used: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let inner = self.lock();
        let mut waiting = [0; 3];
        for (priority, _) in inner.waiting.keys() {
            waiting[priority.index()] += 1;
        }
        QueueSnapshot {
            running: inner.running,
            waiting,
        }
    }

    /// Whether a request for `slots` slots would wait now (others wait, or too few are free).
    pub fn would_wait(&self, slots: usize) -> bool {
        let inner = self.lock();
        !inner.waiting.is_empty() || inner.in_use + slots.min(self.capacity) > self.capacity
    }

    /// Requests admitted and not yet finished.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// When the model last had work, if it has none now (nothing running or waiting).
    pub fn idle_since(&self) -> Option<Instant> {
        let inner = self.lock();
        (inner.running == 0 && inner.waiting.is_empty()).then_some(inner.last_used)
    }

    /// Wait for `slots` free slots (one per choice; more than the worker has counts as all
    /// of them). Dropping the future leaves the queue at once.
    pub async fn admit(
        self: &Arc<Self>,
        priority: Priority,
        slots: usize,
    ) -> Result<Permit, AdmitError> {
        let need = slots.clamp(1, self.capacity);
        let (key, woken) = {
            let mut inner = self.lock();
            inner.last_used = Instant::now();
            // Straight in if it fits and would be first in line (only lower priorities wait):
            // nobody is overtaken. Queueing it instead would leave it waiting for the next
            // release although it is the head and fits.
            let first_in_line = inner
                .waiting
                .first_key_value()
                .is_none_or(|((waiting, _), _)| *waiting > priority);
            if first_in_line && self.fits(&inner, priority, need) {
                Self::take(&mut inner, priority, need);
                return Ok(self.permit(priority, need));
            }
            if let Some(which) = self.over_depth(&inner, priority) {
                let ahead = inner.waiting.len() + inner.running;
                let secs = inner.mean_service_secs * ahead as f64 / self.capacity as f64;
                return Err(AdmitError::QueueFull {
                    retry_after: Duration::from_secs_f64(secs.clamp(1.0, 60.0)),
                    which,
                });
            }
            let key = (priority, inner.next_seq);
            inner.next_seq += 1;
            let (wake, woken) = oneshot::channel();
            inner.waiting.insert(key, Waiter { need, wake });
            (key, woken)
        };
        let mut queued = Queued {
            admission: self.clone(),
            key,
            need,
            armed: true,
        };
        // tokio's clock (as the timeout's), so a paused test clock governs both.
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.limits.timeout(priority), woken).await {
            Ok(Ok(())) => {
                queued.armed = false;
                Ok(self.permit(priority, need))
            }
            // Timed out (or, impossibly, the sender vanished): `queued` leaves the queue as
            // it drops, and lets in whoever fits behind it.
            _ => Err(AdmitError::Timeout {
                waited: started.elapsed(),
            }),
        }
    }

    fn over_depth(&self, inner: &Inner, priority: Priority) -> Option<&'static str> {
        if inner.waiting.len() >= self.limits.max_depth {
            return Some("the queue");
        }
        let same = inner.waiting.keys().filter(|(p, _)| *p == priority).count();
        (same >= self.limits.max_depth_per_priority[priority.index()]).then_some(match priority {
            Priority::High => "the high-priority queue",
            Priority::Normal => "the normal-priority queue",
            Priority::Low => "the low-priority queue",
        })
    }

    /// Whether `need` more slots for a `priority` request are free: with pre-emption a high
    /// request counts only the slots other high requests hold.
    fn fits(&self, inner: &Inner, priority: Priority, need: usize) -> bool {
        if self.limits.preemption && priority == Priority::High {
            inner.in_use_high + need <= self.capacity
        } else {
            inner.in_use + need <= self.capacity
        }
    }

    fn take(inner: &mut Inner, priority: Priority, need: usize) {
        inner.in_use += need;
        if priority == Priority::High {
            inner.in_use_high += need;
        }
        inner.running += 1;
    }

    fn permit(self: &Arc<Self>, priority: Priority, need: usize) -> Permit {
        Permit {
            admission: self.clone(),
            priority,
            need,
            since: tokio::time::Instant::now(),
        }
    }

    /// Let waiters in, in order, while the first in line fits. Strict order: a big request
    /// at the head is not overtaken by smaller ones behind it. Runs after every change that
    /// can make the head fit: slots freed, or a waiter gone (left or timed out).
    fn dispatch(&self, inner: &mut Inner) {
        while let Some((&key, head)) = inner.waiting.first_key_value() {
            let priority = key.0;
            if !self.fits(inner, priority, head.need) {
                break;
            }
            let waiter = inner.waiting.remove(&key).expect("just seen");
            // Counted even if the waiter no longer listens (its future is being dropped):
            // its `Queued` guard then finds itself granted and gives the slots back, which
            // re-runs this loop. Not counting them would make that give-back free slots
            // that were never taken.
            Self::take(inner, priority, waiter.need);
            let _ = waiter.wake.send(());
        }
    }

    fn release(&self, priority: Priority, need: usize, held: Option<Duration>) {
        let mut inner = self.lock();
        inner.in_use = inner.in_use.saturating_sub(need);
        if priority == Priority::High {
            inner.in_use_high = inner.in_use_high.saturating_sub(need);
        }
        inner.running = inner.running.saturating_sub(1);
        inner.last_used = Instant::now();
        if let Some(held) = held {
            inner.mean_service_secs = 0.8 * inner.mean_service_secs + 0.2 * held.as_secs_f64();
        }
        self.dispatch(&mut inner);
    }

    /// A waiter leaves (client gone, timeout): out of the queue, and whoever was behind it
    /// may now be first in line and fit. If it was granted in the same instant, its slots
    /// go back instead.
    fn leave(&self, key: (Priority, u64), need: usize) {
        let mut inner = self.lock();
        if inner.waiting.remove(&key).is_some() {
            self.dispatch(&mut inner);
        } else {
            drop(inner);
            self.release(key.0, need, None);
        }
    }
}

/// A place in the queue; leaving it (timeout, client gone) removes it, or gives back the
/// slots if they were granted in the same instant.
struct Queued {
    admission: Arc<Admission>,
    key: (Priority, u64),
    need: usize,
    armed: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.armed {
            self.admission.leave(self.key, self.need);
        }
    }
}

/// Slots held by one admitted request; dropping it frees them for the next in line.
pub struct Permit {
    admission: Arc<Admission>,
    priority: Priority,
    need: usize,
    since: tokio::time::Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission
            .release(self.priority, self.need, Some(self.since.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_depth: usize, timeout_ms: u64) -> QueueLimits {
        QueueLimits {
            max_depth,
            max_depth_per_priority: [usize::MAX; 3],
            timeouts: [Duration::from_millis(timeout_ms); 3],
            preemption: false,
        }
    }

    #[test]
    fn priorities_parse_case_insensitively() {
        assert_eq!(Priority::parse("HIGH"), Some(Priority::High));
        assert_eq!(Priority::parse("Normal"), Some(Priority::Normal));
        assert_eq!(Priority::parse("low"), Some(Priority::Low));
        assert_eq!(Priority::parse("urgent"), None);
    }

    /// With pre-emption, high requests get in past lower-priority work (the worker pauses
    /// it) but not past each other; everyone else waits until the slots really are free.
    #[tokio::test(start_paused = true)]
    async fn with_preemption_high_requests_count_only_high_slots() {
        let admission = Admission::new(
            2,
            QueueLimits {
                preemption: true,
                ..limits(10, 5_000)
            },
        );
        let low = admission.admit(Priority::Low, 2).await.unwrap();
        let high_1 = admission.admit(Priority::High, 1).await.unwrap();
        let high_2 = admission.admit(Priority::High, 1).await.unwrap();
        assert_eq!(admission.lock().in_use, 4);
        let mut high_3 = Box::pin(admission.admit(Priority::High, 1));
        let mut normal = Box::pin(admission.admit(Priority::Normal, 1));
        for pending in [futures_poll(&mut high_3), futures_poll(&mut normal)] {
            assert!(pending, "admitted past the slots");
        }
        drop(high_1);
        let high_3 = high_3.await.unwrap();
        assert!(
            futures_poll(&mut normal),
            "normal got in while low and high hold all"
        );
        drop((low, high_2));
        // One high slot in use: the normal request fits the real capacity again.
        let _normal = normal.await.unwrap();
        assert_eq!(admission.lock().in_use, 2);
        drop(high_3);
        assert_eq!(admission.lock().in_use, 1);
        assert_eq!(admission.lock().in_use_high, 0);
    }

    /// Polls a future once; true while it is still pending.
    fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        std::pin::Pin::new(future).poll(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn waiters_are_let_in_by_priority_then_arrival() {
        let admission = Admission::new(1, limits(10, 5_000));
        let first = admission.admit(Priority::Low, 1).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in [
            ("low", Priority::Low),
            ("normal", Priority::Normal),
            ("high-1", Priority::High),
            ("high-2", Priority::High),
        ] {
            let (admission, order) = (admission.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = admission.admit(priority, 1).await.unwrap();
                order.lock().unwrap().push(name);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(admission.snapshot().waiting, [2, 1, 1]);
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["high-1", "high-2", "normal", "low"]
        );
        assert_eq!(admission.snapshot().running, 0);
    }

    #[tokio::test]
    async fn a_full_queue_rejects_and_a_long_wait_times_out() {
        let admission = Admission::new(1, limits(1, 100));
        let _held = admission.admit(Priority::Normal, 1).await.unwrap();
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(Priority::Normal, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            admission.admit(Priority::High, 1).await,
            Err(AdmitError::QueueFull { .. })
        ));
        assert!(matches!(
            waiting.await.unwrap(),
            Err(AdmitError::Timeout { .. })
        ));
        assert_eq!(admission.snapshot().waiting, [0, 0, 0]);
    }

    #[tokio::test]
    async fn leaving_the_queue_frees_its_place_and_slots_return() {
        let admission = Admission::new(2, limits(10, 5_000));
        let held = admission.admit(Priority::Normal, 2).await.unwrap();
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(Priority::Normal, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(admission.snapshot().waiting[1], 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(admission.snapshot().waiting[1], 0);
        drop(held);
        // Both slots are free again: a two-slot request gets in at once.
        let _both = admission.admit(Priority::Low, 5).await.unwrap();
        assert_eq!(admission.snapshot().running, 1);
    }

    /// Issue #10: a 1-slot request waited behind a 4-slot head that left, with a slot free.
    #[tokio::test(start_paused = true)]
    async fn the_next_in_line_gets_in_when_the_head_leaves_or_times_out() {
        for head_times_out in [false, true] {
            let mut limits = limits(10, 60_000);
            limits.timeouts[Priority::High.index()] = Duration::from_secs(5);
            let admission = Admission::new(4, limits);
            let _three = admission.admit(Priority::Normal, 3).await.unwrap();
            let head = {
                let admission = admission.clone();
                tokio::spawn(async move { admission.admit(Priority::High, 4).await })
            };
            tokio::task::yield_now().await;
            let next = {
                let admission = admission.clone();
                tokio::spawn(async move { admission.admit(Priority::Normal, 1).await })
            };
            tokio::task::yield_now().await;
            assert_eq!(admission.snapshot().waiting, [1, 1, 0]);
            let started = tokio::time::Instant::now();
            if head_times_out {
                assert!(matches!(
                    head.await.unwrap(),
                    Err(AdmitError::Timeout { .. })
                ));
            } else {
                head.abort();
                let _ = head.await;
            }
            // In at once (well before its own 60 s timeout), on the free fourth slot.
            let permit = tokio::time::timeout(Duration::from_millis(1), next)
                .await
                .expect("the request behind the departed head stalled")
                .unwrap()
                .expect("admitted");
            let expected = if head_times_out { 5 } else { 0 };
            assert_eq!(started.elapsed().as_secs(), expected);
            assert_eq!(admission.snapshot().running, 2);
            assert_eq!(admission.lock().in_use, 4);
            drop(permit);
            assert_eq!(admission.lock().in_use, 3);
        }
    }

    /// A higher-priority arrival that fits goes straight in, though bigger requests wait.
    #[tokio::test(start_paused = true)]
    async fn a_fitting_arrival_ahead_of_all_waiters_is_not_queued() {
        let admission = Admission::new(4, limits(10, 60_000));
        let _three = admission.admit(Priority::Normal, 3).await.unwrap();
        let big = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(Priority::Normal, 2).await })
        };
        tokio::task::yield_now().await;
        let high =
            tokio::time::timeout(Duration::from_millis(1), admission.admit(Priority::High, 1))
                .await
                .expect("queued although first in line with a free slot")
                .unwrap();
        // A same-priority arrival is behind the waiting one: it must not overtake.
        let same = admission.clone();
        let same = tokio::spawn(async move { same.admit(Priority::Normal, 1).await });
        tokio::task::yield_now().await;
        assert_eq!(admission.snapshot().waiting, [0, 2, 0]);
        drop(high);
        assert_eq!(admission.snapshot().waiting, [0, 2, 0]);
        big.abort();
        let _ = big.await;
        assert!(same.await.unwrap().is_ok());
    }

    /// The wake-up of a granted waiter whose future is already half dropped (receiver gone,
    /// `Queued` guard not yet) fails; its slots must still be accounted for exactly once.
    #[tokio::test(start_paused = true)]
    async fn a_failed_wake_keeps_the_slot_count_right() {
        let admission = Admission::new(2, limits(10, 60_000));
        let held = admission.admit(Priority::Normal, 2).await.unwrap();
        let key = (Priority::Normal, 1_000);
        let (wake, woken) = oneshot::channel();
        admission
            .lock()
            .waiting
            .insert(key, Waiter { need: 1, wake });
        let queued = Queued {
            admission: admission.clone(),
            key,
            need: 1,
            armed: true,
        };
        drop(woken);
        drop(held); // dispatch: the waiter fits, but nobody hears the wake-up
        assert_eq!(admission.lock().in_use, 1);
        drop(queued); // finds itself granted: gives the slot back
        assert_eq!(admission.lock().in_use, 0);
        assert_eq!(admission.snapshot().running, 0);
        let _both = admission.admit(Priority::Low, 2).await.unwrap();
        assert_eq!(admission.lock().in_use, 2);
        let full =
            tokio::time::timeout(Duration::from_millis(1), admission.admit(Priority::High, 1));
        assert!(full.await.is_err(), "admitted beyond capacity");
    }
}

/// The queue against a reference model: random arrivals, departures, releases and timeouts
/// under tokio's paused clock, every admit future polled by hand so that what happens in
/// which order is deterministic.
#[cfg(test)]
mod model_tests {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Arrive(Priority, usize),
        /// A waiting request's client hangs up.
        Leave(Index),
        /// A running request finishes.
        Release(Index),
        /// A release and, in the same instant (no poll between), a waiter's hang-up: the one
        /// let in by that release may be the one leaving.
        ReleaseAndLeave(Index, Index),
        /// Milliseconds pass (a multiple of 10; timeouts end in 5, so never exactly then).
        Advance(u64),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Admitted,
        Rejected,
        TimedOut,
    }

    #[derive(Debug, Clone, Copy)]
    enum Status {
        Waiting { key: (Priority, u64), deadline: u64 },
        Granted,
        Rejected,
    }

    /// What the queue should do: strict order by (priority, arrival), the head let in as soon
    /// as it fits.
    struct Model {
        capacity: usize,
        max_depth: usize,
        timeouts: [u64; 3],
        now: u64,
        in_use: usize,
        waiting: BTreeMap<(Priority, u64), usize>,
        /// Futures not yet resolved, by arrival id.
        pending: BTreeMap<u64, (usize, Status)>,
        permits: BTreeMap<u64, usize>,
    }

    impl Model {
        fn arrive(&mut self, id: u64, priority: Priority, size: usize) {
            let need = size.clamp(1, self.capacity);
            let first = self
                .waiting
                .keys()
                .next()
                .is_none_or(|(waiting, _)| *waiting > priority);
            let status = if first && self.in_use + need <= self.capacity {
                self.in_use += need;
                Status::Granted
            } else if self.waiting.len() >= self.max_depth {
                Status::Rejected
            } else {
                let key = (priority, id);
                self.waiting.insert(key, need);
                let deadline = self.now + self.timeouts[priority.index()];
                Status::Waiting { key, deadline }
            };
            self.pending.insert(id, (need, status));
        }

        fn dispatch(&mut self) {
            while let Some((&key, &need)) = self.waiting.first_key_value() {
                if self.in_use + need > self.capacity {
                    break;
                }
                self.waiting.remove(&key);
                self.in_use += need;
                self.pending.get_mut(&key.1).unwrap().1 = Status::Granted;
            }
        }

        /// The future is dropped unresolved.
        fn leave(&mut self, id: u64) {
            match self.pending.remove(&id).unwrap() {
                (_, Status::Waiting { key, .. }) => {
                    self.waiting.remove(&key);
                }
                (need, Status::Granted) => self.in_use -= need,
                (_, Status::Rejected) => unreachable!("resolved at its first poll"),
            }
            self.dispatch();
        }

        fn release(&mut self, id: u64) {
            self.in_use -= self.permits.remove(&id).unwrap();
            self.dispatch();
        }

        /// One pass over the unresolved futures in arrival order, as `Real::poll_pass`.
        fn poll_pass(&mut self, outcomes: &mut Vec<(u64, Outcome)>) -> bool {
            let before = outcomes.len();
            let ids: Vec<u64> = self.pending.keys().copied().collect();
            for id in ids {
                let (need, status) = self.pending[&id];
                match status {
                    Status::Granted => {
                        self.pending.remove(&id);
                        self.permits.insert(id, need);
                        outcomes.push((id, Outcome::Admitted));
                    }
                    Status::Rejected => {
                        self.pending.remove(&id);
                        outcomes.push((id, Outcome::Rejected));
                    }
                    Status::Waiting { key, deadline } if deadline < self.now => {
                        self.pending.remove(&id);
                        self.waiting.remove(&key);
                        self.dispatch();
                        outcomes.push((id, Outcome::TimedOut));
                    }
                    Status::Waiting { .. } => {}
                }
            }
            outcomes.len() > before
        }
    }

    type AdmitFuture = Pin<Box<dyn Future<Output = Result<Permit, AdmitError>>>>;

    /// The real queue, with the caller side of every request.
    struct Real {
        admission: Arc<Admission>,
        timeouts: [u64; 3],
        priorities: BTreeMap<u64, Priority>,
        pending: BTreeMap<u64, AdmitFuture>,
        permits: BTreeMap<u64, Permit>,
    }

    impl Real {
        fn poll_pass(&mut self, cx: &mut Context<'_>, outcomes: &mut Vec<(u64, Outcome)>) -> bool {
            let before = outcomes.len();
            let ids: Vec<u64> = self.pending.keys().copied().collect();
            for id in ids {
                let Poll::Ready(result) = self.pending.get_mut(&id).unwrap().as_mut().poll(cx)
                else {
                    continue;
                };
                self.pending.remove(&id);
                let outcome = match result {
                    Ok(permit) => {
                        self.permits.insert(id, permit);
                        Outcome::Admitted
                    }
                    Err(AdmitError::QueueFull { .. }) => Outcome::Rejected,
                    Err(AdmitError::Timeout { waited }) => {
                        let timeout = self.timeouts[self.priorities[&id].index()];
                        assert!(waited >= Duration::from_millis(timeout), "{waited:?}");
                        Outcome::TimedOut
                    }
                };
                outcomes.push((id, outcome));
            }
            outcomes.len() > before
        }
    }

    /// Poll both sides until nothing more resolves, then compare.
    async fn settle(real: &mut Real, model: &mut Model, step: usize) {
        let mut real_outcomes = Vec::new();
        std::future::poll_fn(|cx| {
            while real.poll_pass(cx, &mut real_outcomes) {}
            Poll::Ready(())
        })
        .await;
        let mut model_outcomes = Vec::new();
        while model.poll_pass(&mut model_outcomes) {}
        assert_eq!(real_outcomes, model_outcomes, "step {step}: outcomes");

        let inner = real.admission.lock();
        // (c) slots in use are exactly the live permits' and never exceed capacity.
        let held: usize = real.permits.values().map(|p| p.need).sum();
        assert_eq!(inner.in_use, held, "step {step}: slots vs permits");
        assert_eq!(inner.in_use, model.in_use, "step {step}: slots vs model");
        assert!(inner.in_use <= model.capacity, "step {step}: over capacity");
        // (a) no stall: the head of the line does not fit, or nobody waits.
        if let Some(head) = inner.waiting.values().next() {
            assert!(
                inner.in_use + head.need > model.capacity,
                "step {step}: a slot is free for the head of the line"
            );
        }
        drop(inner);
        // (b) order: whoever got in this step was ahead of everyone still waiting.
        let rank = |id: &u64| (real.priorities[id], *id);
        for (id, outcome) in &real_outcomes {
            if *outcome == Outcome::Admitted {
                for waiting in real.pending.keys() {
                    assert!(
                        rank(id) < rank(waiting),
                        "step {step}: {id} overtook {waiting}"
                    );
                }
            }
        }
        assert!(
            real.pending.keys().eq(model.pending.keys()),
            "step {step}: waiting"
        );
        // (d) the snapshot counts.
        let snapshot = real.admission.snapshot();
        assert_eq!(snapshot.running, real.permits.len(), "step {step}: running");
        let mut waiting = [0; 3];
        for id in real.pending.keys() {
            waiting[real.priorities[id].index()] += 1;
        }
        assert_eq!(snapshot.waiting, waiting, "step {step}: waiting counts");
    }

    fn nth<T>(map: &BTreeMap<u64, T>, index: &Index) -> Option<u64> {
        (!map.is_empty()).then(|| *map.keys().nth(index.index(map.len())).unwrap())
    }

    async fn run(capacity: usize, max_depth: usize, timeouts: [u64; 3], ops: Vec<Op>) {
        let limits = QueueLimits {
            preemption: false,
            max_depth,
            max_depth_per_priority: [usize::MAX; 3],
            timeouts: timeouts.map(Duration::from_millis),
        };
        let mut real = Real {
            admission: Admission::new(capacity, limits),
            timeouts,
            priorities: BTreeMap::new(),
            pending: BTreeMap::new(),
            permits: BTreeMap::new(),
        };
        let mut model = Model {
            capacity,
            max_depth,
            timeouts,
            now: 0,
            in_use: 0,
            waiting: BTreeMap::new(),
            pending: BTreeMap::new(),
            permits: BTreeMap::new(),
        };
        let start = tokio::time::Instant::now();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Arrive(priority, size) => {
                    let id = step as u64;
                    let admission = real.admission.clone();
                    real.priorities.insert(id, priority);
                    real.pending.insert(
                        id,
                        Box::pin(async move { admission.admit(priority, size).await }),
                    );
                    model.arrive(id, priority, size);
                }
                Op::Leave(which) => {
                    if let Some(id) = nth(&real.pending, &which) {
                        real.pending.remove(&id);
                        model.leave(id);
                    }
                }
                Op::Release(which) => {
                    if let Some(id) = nth(&real.permits, &which) {
                        real.permits.remove(&id);
                        model.release(id);
                    }
                }
                Op::ReleaseAndLeave(release, leave) => {
                    if let Some(id) = nth(&real.permits, &release) {
                        real.permits.remove(&id);
                        model.release(id);
                    }
                    if let Some(id) = nth(&real.pending, &leave) {
                        real.pending.remove(&id);
                        model.leave(id);
                    }
                }
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    model.now += ms;
                    assert_eq!(start.elapsed(), Duration::from_millis(model.now));
                }
            }
            settle(&mut real, &mut model, step).await;
        }
        // Everyone finishing empties the queue.
        real.permits.clear();
        real.pending.clear();
        let inner = real.admission.lock();
        assert_eq!(
            (inner.in_use, inner.running, inner.waiting.len()),
            (0, 0, 0)
        );
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop::sample::select(Priority::ALL.to_vec())
    }

    fn scenario() -> impl Strategy<Value = (usize, usize, [u64; 3], Vec<Op>)> {
        let timeout = (1..=12u64).prop_map(|tens| tens * 10 + 5);
        (1..=4usize, 1..=8usize, [timeout.clone(), timeout.clone(), timeout]).prop_flat_map(
            |(capacity, max_depth, timeouts)| {
                let op = prop_oneof![
                    4 => (priority(), 1..=capacity + 1).prop_map(|(p, n)| Op::Arrive(p, n)),
                    1 => any::<Index>().prop_map(Op::Leave),
                    3 => any::<Index>().prop_map(Op::Release),
                    1 => (any::<Index>(), any::<Index>()).prop_map(|(r, l)| Op::ReleaseAndLeave(r, l)),
                    2 => (1..=6u64).prop_map(|tens| Op::Advance(tens * 10)),
                ];
                (
                    Just(capacity),
                    Just(max_depth),
                    Just(timeouts),
                    prop::collection::vec(op, 1..60),
                )
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn the_queue_follows_the_reference_model(
            (capacity, max_depth, timeouts, ops) in scenario()
        ) {
            // What `#[tokio::test(start_paused = true)]` builds, once per case.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(run(capacity, max_depth, timeouts, ops));
        }
    }
}

//! Per-model admission: when every slot of a model's worker is busy, requests wait here, in
//! priority order and first-come within a priority, and are let in as slots free. The queue
//! lives where requests really wait, so its depth limit and timeouts are the real ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// `X-Priority`: high overtakes normal overtakes low. Ordered so that `High` sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Case-insensitive `high|normal|low`.
    pub fn parse(text: &str) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text.trim()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How long and how many requests may wait.
#[derive(Debug, Clone)]
pub struct QueueLimits {
    /// Most requests waiting for one model, all priorities together.
    pub max_depth: usize,
    /// Most requests waiting per priority (high, normal, low).
    pub max_depth_per_priority: [usize; 3],
    /// Longest wait per priority (high, normal, low).
    pub timeouts: [Duration; 3],
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
    /// Slots held by admitted requests.
    in_use: usize,
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
            if inner.waiting.is_empty() && inner.in_use + need <= self.capacity {
                inner.in_use += need;
                inner.running += 1;
                return Ok(self.permit(need));
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
        let started = Instant::now();
        match tokio::time::timeout(self.limits.timeout(priority), woken).await {
            Ok(Ok(())) => {
                queued.armed = false;
                Ok(self.permit(need))
            }
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

    fn permit(self: &Arc<Self>, need: usize) -> Permit {
        Permit {
            admission: self.clone(),
            need,
            since: Instant::now(),
        }
    }

    /// Let waiters in, in order, while the first in line fits. Strict order: a big request
    /// at the head is not overtaken by smaller ones behind it.
    fn dispatch(inner: &mut Inner, capacity: usize) {
        while let Some(entry) = inner.waiting.first_entry() {
            if inner.in_use + entry.get().need > capacity {
                break;
            }
            let waiter = entry.remove();
            if waiter.wake.send(()).is_ok() {
                inner.in_use += waiter.need;
                inner.running += 1;
            }
        }
    }

    fn release(&self, need: usize, held: Option<Duration>) {
        let mut inner = self.lock();
        inner.in_use = inner.in_use.saturating_sub(need);
        inner.running = inner.running.saturating_sub(1);
        inner.last_used = Instant::now();
        if let Some(held) = held {
            inner.mean_service_secs = 0.8 * inner.mean_service_secs + 0.2 * held.as_secs_f64();
        }
        Self::dispatch(&mut inner, self.capacity);
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
        if !self.armed {
            return;
        }
        let granted = self.admission.lock().waiting.remove(&self.key).is_none();
        if granted {
            self.admission.release(self.need, None);
        }
    }
}

/// Slots held by one admitted request; dropping it frees them for the next in line.
pub struct Permit {
    admission: Arc<Admission>,
    need: usize,
    since: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission
            .release(self.need, Some(self.since.elapsed()));
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
        }
    }

    #[test]
    fn priorities_parse_case_insensitively() {
        assert_eq!(Priority::parse("HIGH"), Some(Priority::High));
        assert_eq!(Priority::parse("Normal"), Some(Priority::Normal));
        assert_eq!(Priority::parse("low"), Some(Priority::Low));
        assert_eq!(Priority::parse("urgent"), None);
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
}

//! A value handed from the engine thread to sampling threads already waiting for it.
//!
//! On a GPU the logits of a step land when the device finishes its pass, and every moment
//! between that and the next pass's launch is the device idling. Threads woken only then
//! (a futex wake each) start late; threads that spin the whole pass burn CPUs for nothing.
//! So a waiting thread sleeps until shortly before the value is expected (`wake_at`, from
//! the last pass's length), then spins: one published about when expected is taken at once,
//! one published early wakes the sleepers (no later than a plain wake-up would).

use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Longest a waiter spins before it sleeps again until the value is published.
const MAX_SPIN: Duration = Duration::from_millis(1);

pub(crate) struct Handoff<T> {
    /// `None` once published: the publisher gave up (the waiters do nothing).
    value: OnceLock<Option<T>>,
    published: Mutex<bool>,
    woken: Condvar,
}

impl<T> Handoff<T> {
    pub fn new() -> Self {
        Handoff {
            value: OnceLock::new(),
            published: Mutex::new(false),
            woken: Condvar::new(),
        }
    }

    /// Hand `value` to the waiters (`None`: there is nothing for them). Only the first call
    /// counts.
    pub fn publish(&self, value: Option<T>) {
        if self.value.set(value).is_err() {
            return;
        }
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.woken.notify_all();
    }

    /// The published value: asleep until it is published or `wake_at` comes, then
    /// spinning until it is published — for at most `MAX_SPIN`, then asleep again (a pass
    /// far longer than expected, or a stalled device, costs no CPUs).
    pub fn wait(&self, wake_at: Instant) -> Option<&T> {
        self.sleep_until(Some(wake_at));
        let give_up = Instant::now() + MAX_SPIN;
        loop {
            if let Some(value) = self.value.get() {
                return value.as_ref();
            }
            if Instant::now() >= give_up {
                self.sleep_until(None);
            }
            std::hint::spin_loop();
        }
    }

    /// Asleep until the value is published or `until` comes (`None`: no limit).
    fn sleep_until(&self, until: Option<Instant>) {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*published {
            published = match until {
                None => self
                    .woken
                    .wait(published)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    self.woken
                        .wait_timeout(published, until - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// Publishes `None` when dropped unless a value was published: waiters never spin forever
/// on a publisher that unwound.
pub(crate) struct PublishOnDrop<'a, T>(pub &'a Handoff<T>);

impl<T> Drop for PublishOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.publish(None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sleepers_and_spinners_all_get_the_value() {
        let handoff = Handoff::new();
        let now = Instant::now();
        std::thread::scope(|scope| {
            let waiters: Vec<_> = [now + Duration::from_secs(60), now]
                .into_iter()
                .map(|wake_at| {
                    let handoff = &handoff;
                    scope.spawn(move || handoff.wait(wake_at).copied())
                })
                .collect();
            std::thread::sleep(Duration::from_millis(5));
            handoff.publish(Some(7));
            handoff.publish(Some(8));
            for waiter in waiters {
                // The sleeper would sleep a minute: publishing woke it.
                assert_eq!(waiter.join().unwrap(), Some(7));
            }
        });
        assert_eq!(handoff.wait(now), Some(&7));
    }

    #[test]
    fn a_publisher_that_gives_up_releases_its_waiters() {
        let handoff = Handoff::<u32>::new();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| handoff.wait(Instant::now()).copied());
            drop(PublishOnDrop(&handoff));
            assert_eq!(waiter.join().unwrap(), None);
        });
    }
}

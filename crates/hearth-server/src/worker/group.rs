//! The sequences of one HTTP request (its `n` choices) on one worker. Dropping the group
//! cancels whatever has not finished: that is how a client disconnect reaches the worker.

use std::sync::Arc;

use hearth_api::ApiError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Worker, WorkerEvent};

pub struct RequestGroup {
    worker: Arc<Worker>,
    ids: Vec<u64>,
    finished: Vec<bool>,
    events: mpsc::UnboundedReceiver<(usize, WorkerEvent)>,
}

pub enum GroupError {
    /// The deadline passed with no event.
    Timeout,
}

impl RequestGroup {
    pub(super) fn new(
        worker: Arc<Worker>,
        ids: Vec<u64>,
        events: mpsc::UnboundedReceiver<(usize, WorkerEvent)>,
    ) -> Self {
        let finished = vec![false; ids.len()];
        RequestGroup {
            worker,
            ids,
            finished,
            events,
        }
    }

    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn all_finished(&self) -> bool {
        self.finished.iter().all(|&f| f)
    }

    /// The next event of any choice; `Ok(None)` once every choice has finished.
    pub async fn next(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<(usize, WorkerEvent)>, GroupError> {
        if self.all_finished() {
            return Ok(None);
        }
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Err(_) => Err(GroupError::Timeout),
            Ok(Some((index, event))) => {
                if event.is_final() {
                    self.finished[index] = true;
                }
                Ok(Some((index, event)))
            }
            // Every route was dropped without a final event: the worker is gone.
            Ok(None) => {
                let index = self.finished.iter().position(|f| !f).unwrap_or(0);
                self.finished[index] = true;
                Ok(Some((
                    index,
                    WorkerEvent::Lost(ApiError::worker_failed("the worker went away")),
                )))
            }
        }
    }

    /// Cancel every unfinished choice now.
    pub fn cancel(&mut self) {
        for (id, finished) in self.ids.iter().zip(self.finished.iter_mut()) {
            if !*finished {
                self.worker.cancel(*id);
                *finished = true;
            }
        }
    }
}

impl Drop for RequestGroup {
    fn drop(&mut self) {
        self.cancel();
    }
}

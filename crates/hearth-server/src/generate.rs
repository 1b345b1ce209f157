//! Running one HTTP request's choices on a worker: start them, surface validation errors
//! before any response is sent, then hand out events until every choice has finished.

use std::collections::VecDeque;

use hearth_api::{ApiError, GenerationParams};
use hearth_ipc::PromptSpec;
use tokio::time::Instant;

use crate::admission::{AdmitError, Permit, Priority};
use crate::extract::RequestMeta;
use crate::observe::RequestObserver;
use crate::state::AppState;
use crate::worker::{GroupError, RequestGroup, WorkerEvent};

/// A request whose choices were all accepted by the worker.
pub struct Started {
    group: RequestGroup,
    deadline: Instant,
    /// Events that arrived while waiting for the last acceptance.
    early: VecDeque<(usize, WorkerEvent)>,
    /// Prompt length of each choice.
    pub prompt_tokens: Vec<usize>,
    /// Choices per prompt (`n`): usage counts each prompt once.
    pub per_prompt: usize,
    observer: RequestObserver,
    /// The worker slots this request holds; dropped with it, letting the next one in.
    _permit: Permit,
}

pub async fn start(
    state: &AppState,
    model: &str,
    choices: Vec<(PromptSpec, GenerationParams)>,
    per_prompt: usize,
    meta: &RequestMeta,
) -> Result<Started, ApiError> {
    meta.record.fields().model = Some(model.to_owned());
    let admission = state.models.admission(model)?;
    let queued = Instant::now();
    let permit = admission
        .admit(meta.priority, choices.len())
        .await
        .map_err(|e| admit_error(e, meta.priority))?;
    let queue_time = queued.elapsed();
    meta.record.fields().queue_time = Some(queue_time);
    state
        .metrics
        .request_queue_time
        .with_label_values(&[model, meta.priority.as_str()])
        .observe(queue_time.as_secs_f64());

    let worker = state.models.worker(model).await?;
    let deadline = Instant::now() + state.request_timeout;
    let mut group = worker.generate(choices)?;
    let mut prompt_tokens = vec![0; group.len()];
    let mut accepted = 0;
    let mut early = VecDeque::new();
    while accepted < group.len() {
        match group.next(deadline).await {
            Ok(Some((index, WorkerEvent::Accepted { prompt_tokens: n }))) => {
                prompt_tokens[index] = n;
                accepted += 1;
            }
            Ok(Some((_, WorkerEvent::Failed(error)))) => return Err(error),
            Ok(Some(other)) => early.push_back(other),
            Ok(None) => break,
            Err(GroupError::Timeout) => return Err(timed_out(&group).await),
        }
    }
    let mut observer = RequestObserver::new(
        state.metrics.clone(),
        model,
        meta.record.clone(),
        group.len(),
    );
    let per_prompt = per_prompt.max(1);
    observer.prompt_tokens(prompt_tokens.iter().step_by(per_prompt).sum());
    for (index, event) in &early {
        observer.event(*index, event);
    }
    Ok(Started {
        group,
        deadline,
        early,
        prompt_tokens,
        per_prompt,
        observer,
        _permit: permit,
    })
}

fn admit_error(error: AdmitError, priority: Priority) -> ApiError {
    match error {
        AdmitError::QueueFull { retry_after, which } => ApiError::queue_full(
            format!("The server is busy: {which} for this model is full. Retry later."),
            retry_after.as_secs_f64().ceil() as u64,
        ),
        AdmitError::Timeout { waited } => ApiError::queue_timeout(format!(
            "The request waited {:.1} s in the {} priority queue without a free slot \
             and gave up. Retry later, or with a higher X-Priority.",
            waited.as_secs_f64(),
            priority.as_str()
        )),
    }
}

impl Started {
    pub fn choices(&self) -> usize {
        self.prompt_tokens.len()
    }

    /// Prompt tokens as billed: each distinct prompt once.
    pub fn usage_prompt_tokens(&self) -> usize {
        self.prompt_tokens.iter().step_by(self.per_prompt).sum()
    }

    /// The next event of any choice; `Ok(None)` when all have finished.
    pub async fn next(&mut self) -> Result<Option<(usize, WorkerEvent)>, ApiError> {
        if let Some(event) = self.early.pop_front() {
            return Ok(Some(event));
        }
        match self.group.next(self.deadline).await {
            Ok(Some((index, event))) => {
                self.observer.event(index, &event);
                Ok(Some((index, event)))
            }
            Ok(None) => {
                self.observer.finished();
                Ok(None)
            }
            Err(GroupError::Timeout) => {
                let error = timed_out(&self.group).await;
                self.group.cancel();
                self.observer.event(0, &WorkerEvent::Failed(error.clone()));
                Err(error)
            }
        }
    }
}

/// The request ran past its deadline. If the worker also stopped answering pings it is
/// killed (its other requests fail too) rather than waited on again.
async fn timed_out(group: &RequestGroup) -> ApiError {
    let worker = group.worker();
    let killed = worker.kill_if_hung().await;
    let mut message = "the request did not finish within the server's request timeout".to_owned();
    if killed {
        message.push_str("; the model's worker stopped responding and was restarted");
    }
    ApiError::timeout(message)
}

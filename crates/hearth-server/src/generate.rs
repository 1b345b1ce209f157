//! Running one HTTP request's choices on a worker: start them, surface validation errors
//! before any response is sent, then hand out events until every choice has finished.

use std::collections::VecDeque;
use std::sync::Arc;

use hearth_api::chat::Usage;
use hearth_api::{ApiError, GenerationParams};
use hearth_ipc::PromptSpec;
use tokio::time::Instant;

use crate::admission::{Admission, AdmitError, Permit, Priority};
use crate::extract::RequestMeta;
use crate::observe::RequestObserver;
use crate::state::AppState;
use crate::worker::{GroupError, RequestGroup, WorkerEvent};

/// Every prompt of one request with its choices' parameters. Prompts are shared, not
/// copied, between the request (which keeps them for a retry) and the frames to the worker.
pub type Prompts = Vec<(Arc<PromptSpec>, Vec<GenerationParams>)>;

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
    /// What launching it takes, kept for a transparent retry.
    job: Job,
    /// A retry is still allowed: none used yet and nothing beyond acceptance has reached the
    /// caller (a retry would repeat it).
    retry_left: bool,
    /// The worker slots this request holds; dropped with it, letting the next one in.
    _permit: Permit,
}

/// A request on its model: what `launch` needs, again if the first worker is lost.
struct Job {
    state: AppState,
    model: String,
    prompts: Prompts,
    /// Travels to the worker, whose scheduler may pause lower-priority sequences for it.
    priority: Priority,
}

pub async fn start(
    state: &AppState,
    model: &str,
    prompts: Prompts,
    meta: &RequestMeta,
) -> Result<Started, ApiError> {
    meta.record.fields().model = Some(model.to_owned());
    let sequences: usize = prompts.iter().map(|(_, choices)| choices.len()).sum();
    let per_prompt = prompts.first().map_or(1, |(_, c)| c.len()).max(1);
    let admission = state.models.admission(model)?;
    crate::fit::refuse_what_cannot_fit(state, model, &prompts, &admission).await?;
    let permit = admit(state, &admission, model, meta, sequences).await?;

    let deadline = Instant::now() + state.request_timeout;
    let job = Job {
        state: state.clone(),
        model: model.to_owned(),
        prompts,
        priority: meta.priority,
    };
    let mut retry_left = true;
    let launched = launch_retrying(&job, &mut retry_left, deadline).await?;
    let (group, prompt_tokens, early) = launched;
    let mut observer = RequestObserver::new(
        state.metrics.clone(),
        model,
        meta.record.clone(),
        group.len(),
    );
    observer.prompt_tokens(prompt_tokens.iter().step_by(per_prompt).sum());
    observer.accepted(&prompt_tokens);
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
        job,
        retry_left,
        _permit: permit,
    })
}

enum Launch {
    /// The worker went away: worth one more try on a new one.
    Lost(ApiError),
    Failed(ApiError),
}

type Launched = (RequestGroup, Vec<usize>, VecDeque<(usize, WorkerEvent)>);

/// `launch`, and once more on a new worker if the first is lost while `retry_left` (which
/// the retry uses up).
async fn launch_retrying(
    job: &Job,
    retry_left: &mut bool,
    deadline: Instant,
) -> Result<Launched, ApiError> {
    loop {
        match launch(job, deadline).await {
            Ok(launched) => return Ok(launched),
            Err(Launch::Lost(_)) if *retry_left => {
                *retry_left = false;
                tracing::warn!(model = %job.model, "worker lost before the request produced output; retrying once");
            }
            Err(Launch::Lost(error) | Launch::Failed(error)) => return Err(error),
        }
    }
}

/// Get a worker, start every sequence and wait until the worker has accepted them all.
async fn launch(job: &Job, deadline: Instant) -> Result<Launched, Launch> {
    let worker = job
        .state
        .models
        .worker(&job.model)
        .await
        .map_err(Launch::Failed)?;
    let mut group = worker
        .generate(job.prompts.clone(), job.priority)
        .map_err(Launch::Lost)?;
    let mut prompt_tokens = vec![0; group.len()];
    let mut accepted = 0;
    let mut early = VecDeque::new();
    while accepted < group.len() {
        match group.next(deadline).await {
            Ok(Some((index, WorkerEvent::Accepted { prompt_tokens: n }))) => {
                prompt_tokens[index] = n;
                accepted += 1;
            }
            Ok(Some((_, WorkerEvent::Failed(error)))) => return Err(Launch::Failed(error)),
            Ok(Some((_, WorkerEvent::Lost(error)))) => return Err(Launch::Lost(error)),
            Ok(Some(other)) => early.push_back(other),
            Ok(None) => break,
            Err(GroupError::Timeout) => return Err(Launch::Failed(timed_out(&group).await)),
        }
    }
    Ok((group, prompt_tokens, early))
}

/// Wait for `slots` of the model's slots in its queue (by the request's priority), and
/// record how long that took.
pub(crate) async fn admit(
    state: &AppState,
    admission: &Arc<Admission>,
    model: &str,
    meta: &RequestMeta,
    slots: usize,
) -> Result<Permit, ApiError> {
    let queued = Instant::now();
    let permit = admission
        .admit(meta.priority, slots)
        .await
        .map_err(|e| admit_error(e, meta.priority))?;
    let queue_time = queued.elapsed();
    meta.record.fields().queue_time = Some(queue_time);
    state
        .metrics
        .request_queue_time
        .with_label_values(&[model, meta.priority.as_str()])
        .observe(queue_time.as_secs_f64());
    Ok(permit)
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

    /// The usage of the whole request: each distinct prompt once (its first choice's cache
    /// hit counts as the prompt's), every choice's completion.
    pub fn usage(&self, completion_tokens: usize, cached_per_choice: &[usize]) -> Usage {
        let cached = cached_per_choice.iter().step_by(self.per_prompt).sum();
        Usage::new(self.usage_prompt_tokens(), completion_tokens).with_cached(cached)
    }

    /// The next event of any choice; `Ok(None)` when all have finished. A worker lost
    /// before any output reached the caller is replaced once, transparently.
    pub async fn next(&mut self) -> Result<Option<(usize, WorkerEvent)>, ApiError> {
        loop {
            let event = match self.early.pop_front() {
                Some(event) => Ok(Some(event)),
                None => self.group.next(self.deadline).await,
            };
            match event {
                Ok(Some((_, WorkerEvent::Lost(_)))) if self.retry_left => {
                    match launch_retrying(&self.job, &mut self.retry_left, self.deadline).await {
                        Ok((group, prompt_tokens, early)) => {
                            self.group = group;
                            self.observer.accepted(&prompt_tokens);
                            self.prompt_tokens = prompt_tokens;
                            self.early = early;
                        }
                        Err(error) => return self.fail(error),
                    }
                }
                Ok(Some((index, WorkerEvent::Lost(error) | WorkerEvent::Failed(error)))) => {
                    let event = WorkerEvent::Failed(error);
                    self.observer.event(index, &event);
                    self.retry_left = false;
                    return Ok(Some((index, event)));
                }
                Ok(Some((index, event))) => {
                    self.observer.event(index, &event);
                    if !matches!(event, WorkerEvent::Accepted { .. }) {
                        self.retry_left = false;
                    }
                    return Ok(Some((index, event)));
                }
                Ok(None) => {
                    self.observer.finished();
                    return Ok(None);
                }
                Err(GroupError::Timeout) => {
                    let error = timed_out(&self.group).await;
                    self.group.cancel();
                    return self.fail(error);
                }
            }
        }
    }

    fn fail(&mut self, error: ApiError) -> Result<Option<(usize, WorkerEvent)>, ApiError> {
        self.observer.event(0, &WorkerEvent::Failed(error.clone()));
        Err(error)
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

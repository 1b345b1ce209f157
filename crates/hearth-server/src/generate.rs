//! Running one HTTP request's choices on a worker: start them, surface validation errors
//! before any response is sent, then hand out events until every choice has finished.

use std::collections::VecDeque;

use hearth_api::{ApiError, GenerationParams};
use hearth_ipc::PromptSpec;
use tokio::time::Instant;

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
}

pub async fn start(
    state: &AppState,
    model: &str,
    choices: Vec<(PromptSpec, GenerationParams)>,
    per_prompt: usize,
) -> Result<Started, ApiError> {
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
    Ok(Started {
        group,
        deadline,
        early,
        prompt_tokens,
        per_prompt: per_prompt.max(1),
    })
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
            Ok(event) => Ok(event),
            Err(GroupError::Timeout) => {
                let error = timed_out(&self.group).await;
                self.group.cancel();
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

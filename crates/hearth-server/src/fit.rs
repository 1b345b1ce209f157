//! Refusing a prompt that cannot fit the model's context before it queues or wakes a
//! worker. A model whose worker is up with a slot free refuses such a prompt at once
//! itself; otherwise the prompt is counted here first — by the model's worker, or by a
//! vocabulary-only worker when the model is not loaded (`ModelManager::counter`), with the
//! model's own template and tokenizer, so the count is the one a generation would see.

use hearth_api::ApiError;

use crate::admission::Admission;
use crate::generate::Prompts;
use crate::state::AppState;

pub async fn refuse_what_cannot_fit(
    state: &AppState,
    model: &str,
    prompts: &Prompts,
    admission: &Admission,
) -> Result<(), ApiError> {
    match check(state, model, prompts, admission).await {
        // Counting could not be done (the model's file does not load, a worker went away):
        // the request goes on, and loading the model reports the cause — with its backoff.
        Err(error) if error.status >= 500 => Ok(()),
        other => other,
    }
}

async fn check(
    state: &AppState,
    model: &str,
    prompts: &Prompts,
    admission: &Admission,
) -> Result<(), ApiError> {
    let sequences: usize = prompts.iter().map(|(_, choices)| choices.len()).sum();
    if state.models.loaded_worker(model).is_some() && !admission.would_wait(sequences) {
        return Ok(());
    }
    if !state.models.can_generate(model).await? {
        return Err(ApiError::embedding_model_only());
    }
    let context = state.models.context_per_slot(model)?;
    for (prompt, choices) in prompts {
        // An image's tokens are known only to the model's projector: the worker checks.
        if !prompt.images().is_empty() {
            continue;
        }
        // Text prompts with the model's BOS, as a completion reads them.
        let (tokens, _) = state
            .models
            .count(model, (**prompt).clone(), true, false)
            .await?;
        let prompt_tokens = tokens.len();
        if prompt_tokens >= context {
            return Err(ApiError::context_length_exceeded(prompt_tokens, context));
        }
        for max_tokens in choices.iter().filter_map(|c| c.max_tokens) {
            if prompt_tokens + max_tokens > context {
                return Err(ApiError::completion_exceeds_context(
                    prompt_tokens,
                    max_tokens,
                    context,
                ));
            }
        }
    }
    Ok(())
}

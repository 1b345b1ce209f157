//! `X-Priority`: the orchestrator queues by it and the worker's scheduler runs by it (a
//! `high` request may pause lower-priority sequences), so one type travels between them.

use serde::{Deserialize, Serialize};

/// High overtakes normal overtakes low. Ordered so that `High` sorts first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
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

    /// Position in `ALL` (for per-priority arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}

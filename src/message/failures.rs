//! What went wrong with a task, and what that did to its account: the
//! failure classes every non-completed `task_result` carries
//! (`error_kind`), the reasons an account is held, and an account's state
//! as `status` and `health` report it. Wire names are snake_case and a
//! contract.

use serde::{Deserialize, Serialize};

/// Why a task did not complete. A kind this version does not know (from a
/// newer daemon) reads as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not logged in, an expired token, a refused key, a billing block:
    /// a person must act.
    Auth,
    /// A usage limit or an API rate limit: wait for the reset.
    RateLimited,
    /// The API is overloaded (HTTP 529).
    Overloaded,
    /// Another API failure (5xx, a broken stream).
    ApiError,
    /// The task's own `--max-turns` was reached.
    MaxTurns,
    /// The task's own `--max-budget-usd` was reached.
    MaxBudget,
    /// The prompt (with its context) is larger than the model takes.
    PromptTooLong,
    /// The agent died mid-task.
    Crashed,
    /// The watchdog found the agent busy and silent.
    Hung,
    /// The task's `timeout_ms` passed.
    Timeout,
    /// Stopped before or while it ran (a stop, a shutdown).
    Cancelled,
    /// The account reached its `daily_budget_usd`.
    BudgetExhausted,
    /// Delivered as often as the stream allows, never answered.
    Undeliverable,
    #[serde(other)]
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Auth,
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::ApiError,
        ErrorKind::MaxTurns,
        ErrorKind::MaxBudget,
        ErrorKind::PromptTooLong,
        ErrorKind::Crashed,
        ErrorKind::Hung,
        ErrorKind::Timeout,
        ErrorKind::Cancelled,
        ErrorKind::BudgetExhausted,
        ErrorKind::Undeliverable,
        ErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ApiError => "api_error",
            ErrorKind::MaxTurns => "max_turns",
            ErrorKind::MaxBudget => "max_budget",
            ErrorKind::PromptTooLong => "prompt_too_long",
            ErrorKind::Crashed => "crashed",
            ErrorKind::Hung => "hung",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::BudgetExhausted => "budget_exhausted",
            ErrorKind::Undeliverable => "undeliverable",
            ErrorKind::Other => "other",
        }
    }

    /// Whether a task that failed this way is run again while its retry
    /// budget lasts: failures of the moment, not of the task.
    pub fn is_retried(self) -> bool {
        matches!(
            self,
            ErrorKind::Overloaded | ErrorKind::ApiError | ErrorKind::Crashed | ErrorKind::Hung
        )
    }

    /// Whether the failure says the API answered for the account (so a
    /// half-open account works again): the task's own limits did.
    pub fn account_answered(self) -> bool {
        matches!(
            self,
            ErrorKind::MaxTurns
                | ErrorKind::MaxBudget
                | ErrorKind::PromptTooLong
                | ErrorKind::Other
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an account is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    Auth,
    RateLimited,
    Overloaded,
    BudgetExhausted,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        self.kind().as_str()
    }

    /// The `error_kind` of a task that timed out waiting behind this hold.
    pub fn kind(self) -> ErrorKind {
        match self {
            HoldReason::Auth => ErrorKind::Auth,
            HoldReason::RateLimited => ErrorKind::RateLimited,
            HoldReason::Overloaded => ErrorKind::Overloaded,
            HoldReason::BudgetExhausted => ErrorKind::BudgetExhausted,
        }
    }

    /// A small number for lock-free boards (0 is "not held").
    pub fn code(self) -> u8 {
        match self {
            HoldReason::Auth => 1,
            HoldReason::RateLimited => 2,
            HoldReason::Overloaded => 3,
            HoldReason::BudgetExhausted => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<HoldReason> {
        match code {
            1 => Some(HoldReason::Auth),
            2 => Some(HoldReason::RateLimited),
            3 => Some(HoldReason::Overloaded),
            4 => Some(HoldReason::BudgetExhausted),
            _ => None,
        }
    }
}

impl std::fmt::Display for HoldReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an account's agents take tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    Open,
    /// No agent of the account takes a task until `until`.
    Held,
    /// Past `until`: one task probes whether the account works again.
    HalfOpen,
}

impl AccountState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Open => "open",
            AccountState::Held => "held",
            AccountState::HalfOpen => "half_open",
        }
    }
}

/// An account as `status` and `health` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountView {
    pub name: String,
    pub state: AccountState,
    /// Why it is held (or was, while half-open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<HoldReason>,
    /// When the hold ends (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The sum of its results' `total_cost_usd` since 00:00 UTC.
    #[serde(default)]
    pub spent_today_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_wire_names() {
        for k in ErrorKind::ALL {
            let text = serde_json::to_string(&k).unwrap();
            assert_eq!(text, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&text).unwrap(), k);
        }
        let newer: ErrorKind = serde_json::from_str("\"brand_new\"").unwrap();
        assert_eq!(newer, ErrorKind::Other);
        for r in [
            HoldReason::Auth,
            HoldReason::RateLimited,
            HoldReason::Overloaded,
            HoldReason::BudgetExhausted,
        ] {
            assert_eq!(HoldReason::from_code(r.code()), Some(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert_eq!(HoldReason::from_code(0), None);
    }
}

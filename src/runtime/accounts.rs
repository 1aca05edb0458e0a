//! Accounts and their holds: agents that share credentials share limits,
//! so one agent's `auth` or `rate_limited` failure stops every agent of its
//! account from taking tasks until the hold ends, instead of burning the
//! queue into instant failures.
//!
//! An account is open, held (with a reason and an end), or half-open: past
//! the end, one agent takes one task, and its outcome opens the account or
//! holds it again for twice as long. A rate limit with a reset time from
//! claude ends then; without one, holds last `hold_initial_ms`, doubling per
//! consecutive hold up to `hold_max_ms`. `overload_threshold` overloads or
//! API errors in a row hold the account too. A daily budget holds it until
//! the next 00:00 UTC.
//!
//! Pure: time comes in as arguments (the monotonic instant for timers, the
//! wall clock in milliseconds for reset times and days), and the supervisor
//! acts on the [`Change`]s it gets back, so every path is unit-tested
//! without a process or a sleep.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::AccountSpec;
use crate::message::failures::{AccountState, AccountView, ErrorKind, HoldReason};
use crate::message::router::AgentIx;

const DAY_MS: i64 = 86_400_000;

/// The longest a reset time from claude may hold an account.
const MAX_RESET: Duration = Duration::from_secs(24 * 3600);

/// What the supervisor must do after the accounts changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// Account `account` is held until `until`: take its idle agents back,
    /// and call [`Accounts::hold_ended`] with `generation` then. `fresh`:
    /// it was open (or half-open) before, which is worth an alert;
    /// otherwise an existing hold was extended.
    Held {
        account: usize,
        reason: HoldReason,
        until: Instant,
        until_ms: i64,
        generation: u64,
        fresh: bool,
    },
    /// The hold's time is up: one idle agent may probe the account.
    HalfOpen { account: usize },
    /// The account works again (or an operator said so): its idle agents
    /// take tasks.
    Recovered { account: usize, by_operator: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Open,
    Held {
        reason: HoldReason,
        until: Instant,
        until_ms: i64,
    },
    HalfOpen {
        reason: HoldReason,
    },
}

#[derive(Debug)]
struct Account {
    name: String,
    spec: AccountSpec,
    phase: Phase,
    /// Holds since the account last worked, for the doubling.
    holds_in_row: u32,
    /// `overloaded`/`api_error` failures since the last other outcome.
    overloads_in_row: u32,
    /// The agent running the half-open probe.
    probe: Option<AgentIx>,
    /// Bumped at every hold, so an older hold's end is stale.
    generation: u64,
    /// Today's spend (UTC day `day`).
    spent: f64,
    day: i64,
}

impl Account {
    fn new(name: String, spec: AccountSpec, spent: f64, day: i64) -> Account {
        Account {
            name,
            spec,
            phase: Phase::Open,
            holds_in_row: 0,
            overloads_in_row: 0,
            probe: None,
            generation: 0,
            spent,
            day,
        }
    }
}

/// The spend kept in the run directory, so a restart does not reset a
/// daily budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SpendBook {
    /// Days since the epoch, UTC.
    pub day: i64,
    pub spent: BTreeMap<String, f64>,
}

/// Every account the daemon's agents draw on.
#[derive(Debug)]
pub(crate) struct Accounts {
    list: Vec<Account>,
    /// The account of each agent (by index).
    of_agent: Vec<usize>,
}

/// Why an account is held, per agent, for the threads that answer tasks
/// without asking the supervisor (a task that expires in the queue is
/// answered with its agent's hold as its `error_kind`).
#[derive(Debug)]
pub(crate) struct HoldBoard(std::sync::RwLock<Vec<AtomicU8>>);

impl HoldBoard {
    pub(crate) fn new(agents: usize) -> HoldBoard {
        HoldBoard(std::sync::RwLock::new(
            (0..agents).map(|_| AtomicU8::new(0)).collect(),
        ))
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<AtomicU8>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, i: AgentIx) -> Option<HoldReason> {
        HoldReason::from_code(self.slots().get(i.0)?.load(Ordering::Relaxed))
    }

    fn set(&self, i: usize, reason: Option<HoldReason>) {
        if let Some(slot) = self.slots().get(i) {
            slot.store(reason.map_or(0, HoldReason::code), Ordering::Relaxed);
        }
    }

    /// Room for `agents` agents (a reload added some), the new ones not
    /// held.
    pub(crate) fn grow(&self, agents: usize) {
        let mut slots = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots.len() < agents {
            slots.resize_with(agents, || AtomicU8::new(0));
        }
    }
}

/// The UTC day of a wall-clock time in milliseconds.
fn day_of(wall_ms: i64) -> i64 {
    wall_ms.div_euclid(DAY_MS)
}

/// RFC 3339 of a wall-clock time in milliseconds.
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Accounts {
    /// `accounts`: each used account with its settings; `agents`: each
    /// agent's account name; `book`: the spend kept from an earlier run.
    pub(crate) fn new(
        accounts: Vec<(String, AccountSpec)>,
        agents: &[String],
        book: Option<SpendBook>,
        wall_ms: i64,
    ) -> Accounts {
        let today = day_of(wall_ms);
        let book = book.filter(|b| b.day == today).unwrap_or_default();
        let mut list: Vec<Account> = accounts
            .into_iter()
            .map(|(name, spec)| {
                // Only a spend that could have been summed is kept.
                let spent = book
                    .spent
                    .get(&name)
                    .copied()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .unwrap_or(0.0);
                Account::new(name, spec, spent, today)
            })
            .collect();
        let of_agent = agents
            .iter()
            .map(|name| match list.iter().position(|a| a.name == *name) {
                Some(n) => n,
                None => {
                    // Plain processes draw on no account, but every agent
                    // has a row: give theirs the defaults.
                    list.push(Account::new(
                        name.clone(),
                        AccountSpec::default(),
                        0.0,
                        today,
                    ));
                    list.len() - 1
                }
            })
            .collect();
        Accounts { list, of_agent }
    }

    /// At start: accounts whose kept spend already reached their budget
    /// are held until the next 00:00 UTC, as they were before the restart.
    pub(crate) fn at_start(&mut self, now: Instant, wall_ms: i64) -> Vec<Change> {
        let midnight = (day_of(wall_ms) + 1) * DAY_MS;
        let spent: Vec<usize> = (0..self.list.len())
            .filter(|&n| {
                let a = &self.list[n];
                a.spec.daily_budget_usd.is_some_and(|b| reached(a.spent, b))
            })
            .collect();
        spent
            .into_iter()
            .filter_map(|n| self.hold(n, HoldReason::BudgetExhausted, Some(midnight), now, wall_ms))
            .collect()
    }

    /// Whether agent `i`'s account has a daily budget.
    pub(crate) fn has_budget(&self, i: AgentIx) -> bool {
        self.list[self.account_of(i)]
            .spec
            .daily_budget_usd
            .is_some()
    }

    /// Agent `i` (added by a reload, or its spec changed) draws on account
    /// `name`; an account not known yet starts with `spec` and no spend.
    /// Returns the account.
    pub(crate) fn set_agent(
        &mut self,
        i: AgentIx,
        name: &str,
        spec: AccountSpec,
        wall_ms: i64,
    ) -> usize {
        let n = self.find(name).unwrap_or_else(|| {
            self.list
                .push(Account::new(name.to_string(), spec, 0.0, day_of(wall_ms)));
            self.list.len() - 1
        });
        if self.of_agent.len() <= i.0 {
            self.of_agent.resize(i.0 + 1, n);
        }
        self.of_agent[i.0] = n;
        n
    }

    pub(crate) fn account_of(&self, i: AgentIx) -> usize {
        self.of_agent.get(i.0).copied().unwrap_or(0)
    }

    pub(crate) fn name(&self, account: usize) -> &str {
        self.list.get(account).map_or("", |a| a.name.as_str())
    }

    /// The agents of `account`.
    pub(crate) fn agents_of(&self, account: usize) -> impl Iterator<Item = AgentIx> + '_ {
        self.of_agent
            .iter()
            .enumerate()
            .filter(move |(_, a)| **a == account)
            .map(|(i, _)| AgentIx(i))
    }

    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|a| a.name == name)
    }

    /// Whether idle agent `i` may be lent to the dispatcher now: not while
    /// its account is held. A half-open account lends every idle agent, so
    /// the probe is whichever task comes first, whatever agent it names.
    pub(crate) fn admit(&self, i: AgentIx) -> bool {
        !matches!(self.list[self.of_agent[i.0]].phase, Phase::Held { .. })
    }

    /// Whether agent `i` may start the task it was handed: not while its
    /// account is held, and in a half-open account only the first task
    /// (the probe) until its outcome is known.
    pub(crate) fn start(&mut self, i: AgentIx) -> bool {
        let a = &mut self.list[self.of_agent[i.0]];
        match a.phase {
            Phase::Open => true,
            Phase::Held { .. } => false,
            Phase::HalfOpen { .. } if a.probe.is_none() => {
                a.probe = Some(i);
                true
            }
            Phase::HalfOpen { .. } => false,
        }
    }

    /// The task agent `i` was allowed to start did not run after all (its
    /// process could not take it): if it was the probe, another task may
    /// be.
    pub(crate) fn unstart(&mut self, i: AgentIx) -> Option<Change> {
        let account = self.of_agent[i.0];
        let a = &mut self.list[account];
        if a.probe == Some(i) && matches!(a.phase, Phase::HalfOpen { .. }) {
            a.probe = None;
            return Some(Change::HalfOpen { account });
        }
        None
    }

    /// Agent `i`'s task ended: `kind` is its failure (`None` completed),
    /// `resets_at` when claude said a limit resets (epoch seconds), `cost`
    /// what it cost.
    pub(crate) fn on_result(
        &mut self,
        i: AgentIx,
        kind: Option<ErrorKind>,
        resets_at: Option<i64>,
        cost: f64,
        now: Instant,
        wall_ms: i64,
    ) -> Vec<Change> {
        let account = self.of_agent[i.0];
        let a = &mut self.list[account];
        let mut out = Vec::new();
        let today = day_of(wall_ms);
        if a.day != today {
            a.day = today;
            a.spent = 0.0;
        }
        if cost.is_finite() && cost > 0.0 {
            // Bounded, so the sum stays a number whatever agents report.
            a.spent = (a.spent + cost).min(1e12);
        }
        let was_probe = a.probe == Some(i);
        if was_probe {
            a.probe = None;
        }
        let half_open = matches!(a.phase, Phase::HalfOpen { .. });
        match kind {
            // It completed, or failed on its own limits: the API answered.
            k if k.is_none_or(ErrorKind::account_answered) => {
                a.overloads_in_row = 0;
                // A task that began before a hold and ends so proves
                // nothing about it: the doubling goes on.
                if !matches!(a.phase, Phase::Held { .. }) {
                    a.holds_in_row = 0;
                }
                if half_open {
                    a.phase = Phase::Open;
                    out.push(Change::Recovered {
                        account,
                        by_operator: false,
                    });
                }
            }
            Some(ErrorKind::Auth) => {
                out.extend(self.hold(account, HoldReason::Auth, None, now, wall_ms))
            }
            Some(ErrorKind::RateLimited) => {
                let until_ms = resets_at.map(|s| s.saturating_mul(1000));
                out.extend(self.hold(account, HoldReason::RateLimited, until_ms, now, wall_ms));
            }
            Some(ErrorKind::Overloaded | ErrorKind::ApiError) => {
                a.overloads_in_row += 1;
                if half_open || a.overloads_in_row >= a.spec.overload_threshold {
                    out.extend(self.hold(account, HoldReason::Overloaded, None, now, wall_ms));
                }
            }
            _ => {
                // Crashed, hung, timed out, cancelled: nothing about the
                // account. A probe that ended so leaves room for another.
                if was_probe && half_open {
                    out.push(Change::HalfOpen { account });
                }
            }
        }
        let a = &self.list[account];
        if let Some(budget) = a.spec.daily_budget_usd {
            let already = matches!(
                a.phase,
                Phase::Held {
                    reason: HoldReason::BudgetExhausted,
                    ..
                }
            );
            if reached(a.spent, budget) && !already {
                let midnight = (today + 1) * DAY_MS;
                out.extend(self.hold(
                    account,
                    HoldReason::BudgetExhausted,
                    Some(midnight),
                    now,
                    wall_ms,
                ));
            }
        }
        out
    }

    /// Holds `account` for `reason`, until `until_ms` (wall clock) when
    /// given, else for its backoff. A hold already in place is extended,
    /// never shortened, and takes the graver reason.
    fn hold(
        &mut self,
        account: usize,
        reason: HoldReason,
        until_ms: Option<i64>,
        now: Instant,
        wall_ms: i64,
    ) -> Option<Change> {
        let a = &mut self.list[account];
        a.overloads_in_row = 0;
        let fresh = !matches!(a.phase, Phase::Held { .. });
        if fresh {
            a.holds_in_row = a.holds_in_row.saturating_add(1);
        }
        // A reset time already past (a skewed clock, a stale event) says
        // nothing of when the limit ends: the backoff decides, not a probe a
        // second.
        let delay = match until_ms.filter(|t| *t > wall_ms) {
            Some(t) => {
                let ms = u64::try_from(t.saturating_sub(wall_ms)).unwrap_or(0);
                Duration::from_millis(ms).clamp(Duration::from_secs(1), MAX_RESET)
            }
            None => {
                let doublings = a.holds_in_row.saturating_sub(1).min(30);
                a.spec
                    .hold_initial
                    .saturating_mul(1u32 << doublings)
                    .min(a.spec.hold_max)
            }
        };
        let mut until = now + delay;
        let mut until_wall = wall_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(0));
        let mut reason = reason;
        if let Phase::Held {
            reason: old,
            until: old_until,
            until_ms: old_ms,
        } = a.phase
        {
            if old_until >= until {
                if gravity(reason) <= gravity(old) {
                    return None;
                }
                until = old_until;
                until_wall = old_ms;
            }
            if gravity(old) > gravity(reason) {
                reason = old;
            }
        }
        a.generation += 1;
        a.probe = None;
        a.phase = Phase::Held {
            reason,
            until,
            until_ms: until_wall,
        };
        Some(Change::Held {
            account,
            reason,
            until,
            until_ms: until_wall,
            generation: a.generation,
            fresh,
        })
    }

    /// The hold of `generation` on `account` has run out.
    pub(crate) fn hold_ended(
        &mut self,
        account: usize,
        generation: u64,
        now: Instant,
        wall_ms: i64,
    ) -> Option<Change> {
        let a = self.list.get_mut(account)?;
        let Phase::Held { reason, .. } = a.phase else {
            return None;
        };
        if a.generation != generation {
            return None;
        }
        if reason == HoldReason::BudgetExhausted {
            let today = day_of(wall_ms);
            if a.day != today {
                a.day = today;
                a.spent = 0.0;
            }
            if a.spec.daily_budget_usd.is_some_and(|b| reached(a.spent, b)) {
                // The clock says it is still the same day: wait for it.
                let midnight = (today + 1) * DAY_MS;
                a.phase = Phase::Open;
                return self.hold(account, reason, Some(midnight), now, wall_ms);
            }
            a.phase = Phase::Open;
            a.holds_in_row = 0;
            return Some(Change::Recovered {
                account,
                by_operator: false,
            });
        }
        a.phase = Phase::HalfOpen { reason };
        a.probe = None;
        Some(Change::HalfOpen { account })
    }

    /// `resume --account NAME`: lifts the hold at once. `Ok(None)` when it
    /// was not held.
    pub(crate) fn resume(&mut self, name: &str) -> Result<Option<Change>, ()> {
        let account = self.find(name).ok_or(())?;
        let a = &mut self.list[account];
        a.holds_in_row = 0;
        a.overloads_in_row = 0;
        if a.phase == Phase::Open {
            return Ok(None);
        }
        a.phase = Phase::Open;
        a.probe = None;
        a.generation += 1;
        Ok(Some(Change::Recovered {
            account,
            by_operator: true,
        }))
    }

    /// Why agent `i`'s account is held (or was, while half-open).
    pub(crate) fn hold_reason(&self, account: usize) -> Option<HoldReason> {
        match self.list.get(account)?.phase {
            Phase::Open => None,
            Phase::Held { reason, .. } | Phase::HalfOpen { reason } => Some(reason),
        }
    }

    /// Brings `board` up to date for `account`'s agents.
    pub(crate) fn mark(&self, board: &HoldBoard, account: usize) {
        let reason = self.hold_reason(account);
        for i in self.agents_of(account) {
            board.set(i.0, reason);
        }
    }

    /// Account `account` as `status` shows it.
    pub(crate) fn view(&self, account: usize, wall_ms: i64) -> Option<AccountView> {
        let a = self.list.get(account)?;
        let (state, reason, until) = match a.phase {
            Phase::Open => (AccountState::Open, None, None),
            Phase::Held {
                reason, until_ms, ..
            } => (AccountState::Held, Some(reason), Some(rfc3339_ms(until_ms))),
            Phase::HalfOpen { reason } => (AccountState::HalfOpen, Some(reason), None),
        };
        Some(AccountView {
            name: a.name.clone(),
            state,
            reason,
            until,
            spent_today_usd: if a.day == day_of(wall_ms) {
                a.spent
            } else {
                0.0
            },
            daily_budget_usd: a.spec.daily_budget_usd,
        })
    }

    /// Every account that has an agent taking tasks, as `status` shows it.
    pub(crate) fn views(&self, takes_tasks: &[bool], wall_ms: i64) -> Vec<AccountView> {
        (0..self.list.len())
            .filter(|n| {
                self.of_agent
                    .iter()
                    .zip(takes_tasks)
                    .any(|(a, t)| *a == *n && *t)
            })
            .filter_map(|n| self.view(n, wall_ms))
            .collect()
    }

    /// Today's spend, to keep in the run directory.
    pub(crate) fn book(&self, wall_ms: i64) -> SpendBook {
        let day = day_of(wall_ms);
        SpendBook {
            day,
            spent: self
                .list
                .iter()
                .filter(|a| a.day == day && a.spent > 0.0)
                .map(|a| (a.name.clone(), a.spent))
                .collect(),
        }
    }
}

/// Whether `spent` reaches `budget`. Spend is a sum of floats: ten tasks
/// of $0.10 add up to 0.9999999999999999, which must count as $1.00.
fn reached(spent: f64, budget: f64) -> bool {
    spent + 1e-9 >= budget
}

/// Which reason wins when two hold one account: the one a person must fix.
fn gravity(r: HoldReason) -> u8 {
    match r {
        HoldReason::Overloaded => 0,
        HoldReason::RateLimited => 1,
        HoldReason::BudgetExhausted => 2,
        HoldReason::Auth => 3,
    }
}

#[cfg(test)]
#[path = "accounts_tests.rs"]
mod tests;

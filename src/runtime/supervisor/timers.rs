//! The supervisor's one timer map and its clock.
//!
//! Backoff restarts, stop escalation, startup deadlines, task deadlines,
//! the output watchdog and the shutdown deadline are all entries here; the
//! supervisor's loop waits on `at(earliest)` (or `never()`), so nothing
//! polls and nothing sleeps. A timer that is no longer wanted is either
//! removed or, when cheaper, left to fire and found stale by its handler
//! (every timer names the run, task or watchdog generation it was set for).
//!
//! Time comes from a [`Clock`], so the state machine's tests move time by
//! hand instead of sleeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::message::router::AgentIx;

/// Where the supervisor reads the time.
pub(crate) trait Clock {
    fn now(&self) -> Instant;
    /// The wall clock, in milliseconds since the epoch: for reset times
    /// and days, never for timers.
    fn wall_ms(&self) -> i64;
}

/// The system's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_ms(&self) -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// Start an agent again after its backoff.
    Restart(AgentIx),
    /// SIGTERM an agent that did not exit after its stdin was closed.
    Term { agent: AgentIx, run: u64 },
    /// SIGKILL an agent still running at its stop timeout.
    Kill { agent: AgentIx, run: u64 },
    /// No answer to `initialize` within `startup_timeout_ms`.
    Startup { agent: AgentIx, run: u64 },
    /// Check a busy agent's silence against `idle_timeout_ms`.
    Watchdog { agent: AgentIx, generation: u64 },
    /// A running task's deadline.
    Deadline { agent: AgentIx, seq: u64 },
    /// A timed-out task still running after its interrupt: kill.
    InterruptGrace { agent: AgentIx, seq: u64 },
    /// A one-shot process still running after its result: stop it.
    Linger { agent: AgentIx, run: u64 },
    /// Past every stop timeout at shutdown: kill what is left.
    ShutdownDeadline,
    /// Refresh the clashes with other daemons: announce ours again, forget
    /// theirs that went quiet.
    Claims,
    /// An account's hold of this generation runs out.
    HoldEnds { account: usize, generation: u64 },
    /// A task waiting to be retried goes back to the queue.
    Retry { seq: u64 },
    /// Hand today's spend to the tracker to keep.
    SaveSpend,
}

/// Pending timers, earliest first (equal times in the order set).
#[derive(Debug, Default)]
pub(super) struct Timers {
    map: BTreeMap<(Instant, u64), Timer>,
    seq: u64,
}

impl Timers {
    pub(super) fn at(&mut self, when: Instant, timer: Timer) {
        self.seq += 1;
        self.map.insert((when, self.seq), timer);
    }

    pub(super) fn after(&mut self, now: Instant, delay: Duration, timer: Timer) {
        self.at(now + delay, timer);
    }

    /// When the earliest timer is due.
    pub(super) fn next(&self) -> Option<Instant> {
        self.map.keys().next().map(|&(when, _)| when)
    }

    /// The earliest timer due at or before `now`, removed.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let entry = self.map.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }

    /// Removes every timer for which `drop` says so.
    pub(super) fn cancel(&mut self, mut drop: impl FnMut(&Timer) -> bool) {
        self.map.retain(|_, t| !drop(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_come_due_in_time_order_then_set_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.after(t0, Duration::from_millis(20), Timer::ShutdownDeadline);
        t.after(t0, Duration::from_millis(10), Timer::Restart(AgentIx(1)));
        t.after(t0, Duration::from_millis(10), Timer::Restart(AgentIx(2)));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(9)), None);
        let now = t0 + Duration::from_millis(15);
        assert_eq!(t.pop_due(now), Some(Timer::Restart(AgentIx(1))));
        assert_eq!(t.pop_due(now), Some(Timer::Restart(AgentIx(2))));
        assert_eq!(t.pop_due(now), None);
        t.cancel(|x| *x == Timer::ShutdownDeadline);
        assert_eq!(t.next(), None);
    }
}

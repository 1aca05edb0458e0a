//! Restart decisions: the policy, the delay arithmetic and the restart budget.
//!
//! Pure bookkeeping with the clock passed in, so every rule is unit-tested
//! without processes or sleeps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{PolicyKind, RestartPolicy};

/// The most jitter added to an exponential delay, as a fraction of it.
pub(crate) const JITTER: f64 = 0.1;

/// What to do about an agent whose process ended on its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Start it again after this delay.
    Restart { delay: Duration, attempt: u32 },
    /// The policy does not restart this exit.
    Stay,
    /// More than `max_restarts` restarts inside `window`: give up.
    GiveUp { restarts: usize },
}

/// The restart history of one agent.
#[derive(Debug, Default, Clone)]
pub(crate) struct RestartBook {
    /// Restarts since the agent last stayed up for `reset_after`.
    consecutive: u32,
    /// When each recent restart was decided, oldest first.
    recent: VecDeque<Instant>,
}

impl RestartBook {
    /// Decides what follows an exit. `failed` is false only for a clean exit
    /// (status 0) that nobody forced; `uptime` is how long the run lasted;
    /// `jitter` is a number in `[0, 1)`.
    pub(crate) fn decide(
        &mut self,
        policy: &RestartPolicy,
        failed: bool,
        uptime: Duration,
        now: Instant,
        jitter: f64,
    ) -> Decision {
        if uptime >= policy.reset_after {
            self.consecutive = 0;
        }
        let restart = match policy.policy {
            PolicyKind::Never => false,
            PolicyKind::OnFailure => failed,
            PolicyKind::Always | PolicyKind::ExponentialBackoff => true,
        };
        if !restart {
            return Decision::Stay;
        }
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= policy.max_restarts as usize {
            return Decision::GiveUp {
                restarts: self.recent.len(),
            };
        }
        let delay = delay_for(policy, self.consecutive, jitter);
        self.consecutive = self.consecutive.saturating_add(1);
        self.recent.push_back(now);
        Decision::Restart {
            delay,
            attempt: self.consecutive,
        }
    }

    /// Forgets the history (a start by hand gets a fresh budget).
    pub(crate) fn reset(&mut self) {
        *self = RestartBook::default();
    }
}

/// The delay before restart number `consecutive + 1`.
///
/// Every restarting policy waits `initial_delay`; `exponential_backoff`
/// multiplies it by `multiplier` per consecutive restart, adds up to 10 %
/// jitter so a fleet that crashed together does not restart in lockstep, and
/// caps the result at `max_delay`.
pub(crate) fn delay_for(policy: &RestartPolicy, consecutive: u32, jitter: f64) -> Duration {
    let initial = policy.initial_delay.as_secs_f64();
    match policy.policy {
        PolicyKind::ExponentialBackoff => {
            let max = policy.max_delay.as_secs_f64();
            let exp = i32::try_from(consecutive).unwrap_or(i32::MAX);
            let base = (initial * policy.multiplier.powi(exp)).min(max);
            let with_jitter = base * (1.0 + JITTER * jitter.clamp(0.0, 1.0));
            Duration::from_secs_f64(with_jitter.min(max))
        }
        _ => policy.initial_delay,
    }
}

/// A small xorshift generator for jitter: no dependency for one number.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// A generator that always gives 0, for tests that read exact delays.
    #[cfg(test)]
    pub(crate) fn zero() -> Self {
        Jitter(0)
    }

    /// The next number in `[0, 1)`.
    pub(crate) fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(kind: PolicyKind) -> RestartPolicy {
        RestartPolicy {
            policy: kind,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            multiplier: 2.0,
            max_restarts: 5,
            window: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
        }
    }

    fn delays(book: &mut RestartBook, p: &RestartPolicy, n: usize, start: Instant) -> Vec<u128> {
        (0..n)
            .map(|i| {
                match book.decide(
                    p,
                    true,
                    Duration::ZERO,
                    start + Duration::from_millis(i as u64),
                    0.0,
                ) {
                    Decision::Restart { delay, .. } => delay.as_millis(),
                    other => panic!("restart {i}: {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn exponential_delays_double_and_cap() {
        let mut p = policy(PolicyKind::ExponentialBackoff);
        p.max_restarts = 100;
        let got = delays(&mut RestartBook::default(), &p, 6, Instant::now());
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_adds_at_most_ten_percent_and_never_passes_the_cap() {
        let p = policy(PolicyKind::ExponentialBackoff);
        assert_eq!(delay_for(&p, 1, 0.999_999).as_millis(), 219);
        assert_eq!(delay_for(&p, 8, 0.999_999).as_millis(), 1000);
        let mut j = Jitter::seeded();
        for _ in 0..1000 {
            let x = j.next_unit();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn fixed_policies_wait_the_initial_delay() {
        for kind in [PolicyKind::Always, PolicyKind::OnFailure] {
            let got = delays(
                &mut RestartBook::default(),
                &policy(kind),
                4,
                Instant::now(),
            );
            assert_eq!(got, [100, 100, 100, 100]);
        }
    }

    #[test]
    fn policies_choose_which_exits_restart() {
        let now = Instant::now();
        let z = Duration::ZERO;
        let stays = |kind, failed| {
            RestartBook::default().decide(&policy(kind), failed, z, now, 0.0) == Decision::Stay
        };
        assert!(stays(PolicyKind::Never, true));
        assert!(stays(PolicyKind::Never, false));
        assert!(stays(PolicyKind::OnFailure, false));
        assert!(!stays(PolicyKind::OnFailure, true));
        assert!(!stays(PolicyKind::Always, false));
        assert!(!stays(PolicyKind::ExponentialBackoff, false));
    }

    #[test]
    fn the_budget_is_spent_inside_the_window_and_refills_after_it() {
        let p = policy(PolicyKind::Always);
        let mut book = RestartBook::default();
        let t0 = Instant::now();
        delays(&mut book, &p, 5, t0);
        assert_eq!(
            book.decide(&p, true, Duration::ZERO, t0 + Duration::from_secs(1), 0.0),
            Decision::GiveUp { restarts: 5 }
        );
        // A minute after the first restarts they no longer count.
        let later = t0 + Duration::from_secs(61);
        assert!(matches!(
            book.decide(&p, true, Duration::ZERO, later, 0.0),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let mut p = policy(PolicyKind::ExponentialBackoff);
        p.max_restarts = 100;
        let mut book = RestartBook::default();
        let t0 = Instant::now();
        assert_eq!(delays(&mut book, &p, 3, t0), [100, 200, 400]);
        match book.decide(&p, true, Duration::from_secs(31), t0, 0.0) {
            Decision::Restart { delay, attempt } => {
                assert_eq!(delay.as_millis(), 100);
                assert_eq!(attempt, 1);
            }
            other => panic!("{other:?}"),
        }
    }
}

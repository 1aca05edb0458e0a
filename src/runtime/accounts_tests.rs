//! The hold state machine, with time moved by hand.

use std::time::{Duration, Instant};

use super::*;

const T0_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn spec() -> AccountSpec {
    AccountSpec {
        daily_budget_usd: None,
        hold_initial: Duration::from_secs(30),
        hold_max: Duration::from_secs(100),
        overload_threshold: 3,
    }
}

/// Two agents on account "a", one on "b".
fn accounts() -> Accounts {
    Accounts::new(
        vec![("a".into(), spec()), ("b".into(), spec())],
        &["a".into(), "a".into(), "b".into()],
        None,
        T0_MS,
    )
}

const A0: AgentIx = AgentIx(0);
const A1: AgentIx = AgentIx(1);
const B0: AgentIx = AgentIx(2);

fn held(c: &[Change]) -> Option<(HoldReason, Duration, bool, u64)> {
    c.iter().find_map(|c| match c {
        Change::Held {
            reason,
            until,
            generation,
            fresh,
            ..
        } => Some((*reason, *until - base(), *fresh, *generation)),
        _ => None,
    })
}

fn base() -> Instant {
    thread_local!(static T: Instant = Instant::now());
    T.with(|t| *t)
}

#[test]
fn auth_holds_the_whole_account_and_nothing_else() {
    let mut acc = accounts();
    let now = base();
    assert!(acc.admit(A0) && acc.admit(A1) && acc.admit(B0));
    let c = acc.on_result(A0, Some(ErrorKind::Auth), None, 0.0, now, T0_MS);
    assert_eq!(
        held(&c),
        Some((HoldReason::Auth, Duration::from_secs(30), true, 1))
    );
    assert!(!acc.admit(A0) && !acc.admit(A1));
    assert!(!acc.start(A1));
    assert!(acc.admit(B0), "another account is not slowed");
    let board = HoldBoard::new(3);
    acc.mark(&board, 0);
    assert_eq!(board.get(A1), Some(HoldReason::Auth));
    assert_eq!(board.get(B0), None);
    let v = acc.view(0, T0_MS).unwrap();
    assert_eq!(v.state, AccountState::Held);
    assert_eq!(v.until.as_deref(), Some("2026-01-01T00:00:30Z"));
    // A second agent hitting it while held extends nothing and alerts
    // nothing.
    let c = acc.on_result(A1, Some(ErrorKind::Auth), None, 0.0, now, T0_MS);
    assert_eq!(held(&c), None);
}

#[test]
fn a_rate_limit_holds_until_its_reset_then_one_probe_decides() {
    let mut acc = accounts();
    let now = base();
    let resets = T0_MS / 1000 + 3;
    let c = acc.on_result(
        A0,
        Some(ErrorKind::RateLimited),
        Some(resets),
        0.0,
        now,
        T0_MS,
    );
    assert_eq!(
        held(&c),
        Some((HoldReason::RateLimited, Duration::from_secs(3), true, 1))
    );
    // A stale end does nothing; the real one half-opens.
    assert_eq!(acc.hold_ended(0, 0, now, T0_MS), None);
    let later = now + Duration::from_secs(3);
    assert_eq!(
        acc.hold_ended(0, 1, later, T0_MS + 3000),
        Some(Change::HalfOpen { account: 0 })
    );
    assert_eq!(acc.view(0, T0_MS).unwrap().state, AccountState::HalfOpen);
    // Every idle agent is lent, but one task only probes.
    assert!(acc.admit(A1) && acc.admit(A0));
    assert!(acc.start(A1));
    assert!(!acc.start(A0));
    // It succeeds: open for all.
    let c = acc.on_result(A1, None, None, 0.0, later, T0_MS + 3000);
    assert_eq!(
        c,
        vec![Change::Recovered {
            account: 0,
            by_operator: false
        }]
    );
    assert!(acc.admit(A0));
}

#[test]
fn a_failed_probe_holds_again_for_twice_as_long() {
    let mut acc = accounts();
    let now = base();
    acc.on_result(A0, Some(ErrorKind::Auth), None, 0.0, now, T0_MS);
    acc.hold_ended(0, 1, now, T0_MS);
    assert!(acc.admit(A0));
    let c = acc.on_result(A0, Some(ErrorKind::Auth), None, 0.0, now, T0_MS);
    assert_eq!(
        held(&c),
        Some((HoldReason::Auth, Duration::from_secs(60), true, 2))
    );
    acc.hold_ended(0, 2, now, T0_MS);
    acc.admit(A0);
    let c = acc.on_result(A0, Some(ErrorKind::Auth), None, 0.0, now, T0_MS);
    // Capped at hold_max.
    assert_eq!(
        held(&c),
        Some((HoldReason::Auth, Duration::from_secs(100), true, 3))
    );
    // A probe that crashed says nothing: another agent may probe.
    acc.hold_ended(0, 3, now, T0_MS);
    assert!(acc.start(A0));
    let c = acc.on_result(A0, Some(ErrorKind::Crashed), None, 0.0, now, T0_MS);
    assert_eq!(c, vec![Change::HalfOpen { account: 0 }]);
    assert!(acc.start(A1));
    // A probe that could not start frees the slot too.
    assert_eq!(acc.unstart(A1), Some(Change::HalfOpen { account: 0 }));
    assert_eq!(acc.unstart(A1), None);
    assert!(acc.start(A0));
    // The task's own failure proves the API answered: open.
    let c = acc.on_result(A0, Some(ErrorKind::MaxTurns), None, 0.0, now, T0_MS);
    assert!(matches!(c[..], [Change::Recovered { .. }]));
    // And the doubling starts over.
    let c = acc.on_result(A0, Some(ErrorKind::Auth), None, 0.0, now, T0_MS);
    assert_eq!(held(&c).map(|h| h.1), Some(Duration::from_secs(30)));
}

#[test]
fn overloads_hold_after_the_threshold_in_a_row() {
    let mut acc = accounts();
    let now = base();
    for _ in 0..2 {
        assert!(acc
            .on_result(A0, Some(ErrorKind::Overloaded), None, 0.0, now, T0_MS)
            .is_empty());
    }
    // Anything else between breaks the row.
    acc.on_result(A1, None, None, 0.0, now, T0_MS);
    for _ in 0..2 {
        assert!(acc
            .on_result(A0, Some(ErrorKind::ApiError), None, 0.0, now, T0_MS)
            .is_empty());
    }
    let c = acc.on_result(A1, Some(ErrorKind::Overloaded), None, 0.0, now, T0_MS);
    assert_eq!(held(&c).map(|h| h.0), Some(HoldReason::Overloaded));
    // A graver reason takes over a held account.
    let c = acc.on_result(A0, Some(ErrorKind::Auth), None, 0.0, now, T0_MS);
    assert_eq!(
        held(&c).map(|h| (h.0, h.2)),
        Some((HoldReason::Auth, false))
    );
    assert_eq!(acc.hold_reason(0), Some(HoldReason::Auth));
}

#[test]
fn resets_far_ahead_or_behind_are_clamped() {
    let mut acc = accounts();
    let now = base();
    let c = acc.on_result(
        A0,
        Some(ErrorKind::RateLimited),
        Some(T0_MS / 1000 - 50),
        0.0,
        now,
        T0_MS,
    );
    // A reset already past is no reset time: the backoff decides.
    assert_eq!(held(&c).map(|h| h.1), Some(Duration::from_secs(30)));
    let c = acc.on_result(
        A1,
        Some(ErrorKind::RateLimited),
        Some(T0_MS / 1000),
        0.0,
        now,
        T0_MS,
    );
    assert_eq!(held(&c), None, "no shorter, no new alert");
    // One a moment ahead holds at least a second.
    let mut other = accounts();
    let c = other.on_result(
        A0,
        Some(ErrorKind::RateLimited),
        Some(T0_MS / 1000 + 1),
        0.0,
        now,
        T0_MS - 900,
    );
    assert!(held(&c).is_some_and(|h| h.1 >= Duration::from_secs(1)));
    let c = acc.on_result(
        B0,
        Some(ErrorKind::RateLimited),
        Some(i64::MAX),
        0.0,
        now,
        T0_MS,
    );
    assert_eq!(held(&c).map(|h| h.1), Some(Duration::from_secs(24 * 3600)));
}

#[test]
fn an_operator_lifts_a_hold() {
    let mut acc = accounts();
    let now = base();
    assert_eq!(acc.resume("a"), Ok(None));
    assert_eq!(acc.resume("nope"), Err(()));
    acc.on_result(A0, Some(ErrorKind::Auth), None, 0.0, now, T0_MS);
    assert_eq!(
        acc.resume("a"),
        Ok(Some(Change::Recovered {
            account: 0,
            by_operator: true
        }))
    );
    assert!(acc.admit(A0) && acc.admit(A1));
    // The hold's own end is stale now.
    assert_eq!(acc.hold_ended(0, 1, now, T0_MS), None);
}

#[test]
fn a_daily_budget_holds_until_midnight_and_survives_a_restart() {
    let mut s = spec();
    s.daily_budget_usd = Some(0.01);
    let mut acc = Accounts::new(vec![("a".into(), s.clone())], &["a".into()], None, T0_MS);
    let now = base();
    let noon = T0_MS + DAY_MS / 2;
    // A kept spend that no sum gives is not trusted.
    let bad = SpendBook {
        day: day_of(noon),
        spent: [("a".to_string(), -100.0)].into(),
    };
    let odd = Accounts::new(
        vec![("a".into(), s.clone())],
        &["a".into()],
        Some(bad),
        noon,
    );
    assert_eq!(odd.view(0, noon).unwrap().spent_today_usd, 0.0);
    // Ten tasks of $0.10 reach $1.00, float sums notwithstanding.
    let mut dollar = spec();
    dollar.daily_budget_usd = Some(1.0);
    let mut ten = Accounts::new(vec![("a".into(), dollar)], &["a".into()], None, noon);
    for n in 1..=10 {
        let c = ten.on_result(A0, None, None, 0.1, now, noon);
        assert_eq!(held(&c).is_some(), n == 10, "task {n}");
    }
    assert!(acc.on_result(A0, None, None, 0.004, now, noon).is_empty());
    assert!(acc.on_result(A0, None, None, 0.004, now, noon).is_empty());
    let c = acc.on_result(A0, None, None, 0.004, now, noon);
    assert_eq!(
        held(&c).map(|h| (h.0, h.1)),
        Some((HoldReason::BudgetExhausted, Duration::from_secs(12 * 3600)))
    );
    let v = acc.view(0, noon).unwrap();
    assert!((v.spent_today_usd - 0.012).abs() < 1e-9);
    assert_eq!(v.until.as_deref(), Some("2026-01-02T00:00:00Z"));
    // Kept across a restart the same day, not the next.
    let book = acc.book(noon);
    let again = Accounts::new(
        vec![("a".into(), s.clone())],
        &["a".into()],
        Some(book.clone()),
        noon + 1000,
    );
    let mut again = again;
    assert!((again.view(0, noon).unwrap().spent_today_usd - 0.012).abs() < 1e-9);
    // ... and the account is held again from the start.
    let c = again.at_start(now, noon + 1000);
    assert_eq!(held(&c).map(|h| h.0), Some(HoldReason::BudgetExhausted));
    assert!(!again.admit(A0));
    let tomorrow = Accounts::new(
        vec![("a".into(), s)],
        &["a".into()],
        Some(book),
        T0_MS + DAY_MS + 5,
    );
    assert_eq!(
        tomorrow
            .view(0, T0_MS + DAY_MS + 5)
            .unwrap()
            .spent_today_usd,
        0.0
    );
    // At midnight the budget opens again, with a fresh day.
    let c = acc.hold_ended(0, 1, now, T0_MS + DAY_MS);
    assert_eq!(
        c,
        Some(Change::Recovered {
            account: 0,
            by_operator: false
        })
    );
    assert_eq!(acc.view(0, T0_MS + DAY_MS).unwrap().spent_today_usd, 0.0);
}

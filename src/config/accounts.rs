//! The `accounts` map of the config: the credentials agents share, and so
//! their limits (daily budget, hold lengths, overload threshold).

use std::collections::BTreeMap;

use serde_json::Value;

use super::names::check_token;
use super::problems::Problems;
use super::AccountSpec;

/// The `accounts` map: each name a token, each entry's keys checked.
pub(super) fn parse(p: &mut Problems, v: Option<&Value>) -> BTreeMap<String, AccountSpec> {
    let mut out = BTreeMap::new();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return out;
    };
    let Some(m) = p.object(v, "accounts") else {
        return out;
    };
    for (name, entry) in m {
        let path = format!("accounts.{name}");
        if let Err(why) = check_token(name) {
            p.push(&path, format!("account name {name:?} {why}"));
            continue;
        }
        let mut a = AccountSpec::default();
        if entry.is_null() {
            out.insert(name.clone(), a);
            continue;
        }
        let Some(e) = p.object(entry, &path) else {
            continue;
        };
        p.known_keys(
            e,
            &path,
            &[
                "daily_budget_usd",
                "hold_initial_ms",
                "hold_max_ms",
                "overload_threshold",
            ],
        );
        match e.get("daily_budget_usd") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => a.daily_budget_usd = Some(x),
                _ => p.push(
                    &format!("{path}.daily_budget_usd"),
                    format!("expected a number of dollars above 0, found {v}"),
                ),
            },
        }
        a.hold_initial = p.duration(e, &path, "hold_initial_ms", a.hold_initial, 1);
        a.hold_max = p.duration(e, &path, "hold_max_ms", a.hold_max, 1);
        if a.hold_max < a.hold_initial {
            p.push(
                &format!("{path}.hold_max_ms"),
                format!(
                    "{} is less than hold_initial_ms ({})",
                    a.hold_max.as_millis(),
                    a.hold_initial.as_millis()
                ),
            );
        }
        let threshold = p.uint(
            e,
            &path,
            "overload_threshold",
            u64::from(a.overload_threshold),
            1,
        );
        a.overload_threshold = u32::try_from(threshold).unwrap_or(u32::MAX);
        out.insert(name.clone(), a);
    }
    out
}

//! The problem list the config parser fills, and the readers that take a
//! value from the JSON or record why they could not (with the value's JSON
//! path and, for a misspelt key, a "did you mean" hint).

use std::time::Duration;

use serde_json::{Map, Value};

use super::{Problem, MAX_DURATION_MS};

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The problems found so far, and helpers that read a value or record why
/// they could not.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
    ) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                let path = if path.is_empty() { "(top level)" } else { path };
                self.push(path, format!("expected an object, found {}", kind(other)));
                None
            }
        }
    }

    pub(super) fn known_keys(&mut self, m: &Map<String, Value>, path: &str, known: &[&str]) {
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                let full = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let hint = known
                    .iter()
                    .find(|c| close(c, k))
                    .map(|c| format!(" (did you mean {c:?}?)"))
                    .unwrap_or_default();
                self.push(&full, format!("unknown key{hint}"));
            }
        }
    }

    pub(super) fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.push(path, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    pub(super) fn opt_string(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => self.string(v, &sub(path, key)),
        }
    }

    pub(super) fn string_list(&mut self, v: Option<&Value>, path: &str) -> Vec<String> {
        match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::String(s) if s.contains('\0') => {
                        self.push(&format!("{path}[{i}]"), "contains a NUL byte");
                        None
                    }
                    Value::String(s) => Some(s.clone()),
                    other => {
                        self.push(
                            &format!("{path}[{i}]"),
                            format!("expected a string, found {}", kind(other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.push(
                    path,
                    format!("expected an array of strings, found {}", kind(other)),
                );
                Vec::new()
            }
        }
    }

    /// An unsigned integer no smaller than `min`, or `default` when absent.
    pub(super) fn uint(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        default: u64,
        min: u64,
    ) -> u64 {
        self.opt_uint(m, path, key, min).unwrap_or(default)
    }

    /// A duration in whole milliseconds from `min_ms` to a week
    /// ([`MAX_DURATION_MS`]), or `default` when absent.
    pub(super) fn duration(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        default: Duration,
        min_ms: u64,
    ) -> Duration {
        self.opt_millis(m, path, key, min_ms)
            .map_or(default, Duration::from_millis)
    }

    /// Milliseconds from `min_ms` to a week, if present.
    pub(super) fn opt_millis(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        min_ms: u64,
    ) -> Option<u64> {
        match self.opt_uint(m, path, key, min_ms)? {
            ms if ms > MAX_DURATION_MS => {
                self.push(
                    &sub(path, key),
                    format!("{ms} is more than a week ({MAX_DURATION_MS} ms)"),
                );
                None
            }
            ms => Some(ms),
        }
    }

    pub(super) fn opt_uint(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        min: u64,
    ) -> Option<u64> {
        let v = m.get(key)?;
        if v.is_null() {
            return None;
        }
        match v.as_u64() {
            Some(n) if n >= min => Some(n),
            Some(n) => {
                self.push(&sub(path, key), format!("{n} is less than {min}"));
                None
            }
            None => {
                self.push(
                    &sub(path, key),
                    format!("expected a whole number >= {min}, found {v}"),
                );
                None
            }
        }
    }
}

fn sub(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// True when `a` and `b` differ by one edit or a swap of neighbours, for
/// "did you mean" hints on misspelt keys.
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return false;
    }
    let (n, m) = (a.len(), b.len());
    if n.abs_diff(m) > 1 {
        return false;
    }
    // Levenshtein distance with transpositions, capped: the keys are short.
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[n][m] <= 2 && n.max(m) > 3
}

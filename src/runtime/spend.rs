//! Today's spend per account, kept in the run directory (`spend.json`) so
//! that a restart does not reset a daily budget. Written by the tracker
//! thread, off the supervisor's path, a burst of results at a time.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::runtime::accounts::SpendBook;

const FILE: &str = "spend.json";

/// Today's spend as an earlier daemon kept it, if any.
/// Each account's entry is read on its own: one that no sum of costs
/// gives (not a number, negative, not finite) is skipped with a warning,
/// and the others are kept.
pub(crate) fn read(dir: &Path) -> Option<SpendBook> {
    let path = dir.join(FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!(
                "cannot read {} ({e}): today's spend starts from $0",
                path.display()
            );
            return None;
        }
    };
    let unreadable = |why: &str| {
        log::warn!(
            "{} is unreadable ({why}): today's spend starts from $0",
            path.display()
        );
    };
    let v: Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            unreadable(&e.to_string());
            return None;
        }
    };
    let Some(day) = v.get("day").and_then(Value::as_i64) else {
        unreadable("no day");
        return None;
    };
    let mut spent = BTreeMap::new();
    for (name, amount) in v
        .get("spent")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match amount.as_f64().filter(|a| a.is_finite() && *a >= 0.0) {
            Some(a) => {
                spent.insert(name.clone(), a);
            }
            None => log::warn!(
                "{}: account {name}'s spend {amount} is not an amount: it starts from $0",
                path.display()
            ),
        }
    }
    Some(SpendBook { day, spent })
}

/// Writes `book`, if there is one.
pub(crate) fn write(dir: &Path, book: Option<SpendBook>) {
    if let Some(book) = book {
        crate::runtime::files::write_atomic(
            &dir.join(FILE),
            &serde_json::to_vec(&book).unwrap_or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_entry_costs_only_its_own_account() {
        let dir = std::env::temp_dir().join(format!("ms-spend-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join(FILE);
        fs::write(
            &file,
            r#"{"day":20787,"spent":{"a":"x","b":0.99,"c":-5,"d":0.2}}"#,
        )
        .unwrap();
        let book = read(&dir).unwrap();
        assert_eq!(book.day, 20787);
        assert_eq!(book.spent.keys().collect::<Vec<_>>(), ["b", "d"]);
        fs::write(&file, "garbage").unwrap();
        assert!(read(&dir).is_none());
        fs::remove_file(&file).unwrap();
        assert!(read(&dir).is_none());
        write(&dir, Some(book.clone()));
        assert_eq!(read(&dir), Some(book));
        let _ = fs::remove_dir_all(&dir);
    }
}

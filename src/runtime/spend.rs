//! Today's spend per account, kept in the run directory (`spend.json`) so
//! that a restart does not reset a daily budget. Written by the tracker
//! thread, off the supervisor's path, a burst of results at a time.

use std::fs;
use std::path::Path;

use crate::runtime::accounts::SpendBook;

const FILE: &str = "spend.json";

/// Today's spend as an earlier daemon kept it, if any.
pub(crate) fn read(dir: &Path) -> Option<SpendBook> {
    let path = dir.join(FILE);
    let text = fs::read(&path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(book) => Some(book),
        Err(e) => {
            log::warn!(
                "{} is unreadable ({e}): today's spend starts from $0",
                path.display()
            );
            None
        }
    }
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

//! Session store (`FAKE_CLAUDE_STATE_DIR`): one file `<id>.session` per session, holding the cwd.
//! It backs `--resume`, `--continue` and the duplicate `--session-id` check.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn session_path(dir: &Path, id: &str) -> Option<PathBuf> {
    let safe = !id.is_empty() && !id.contains(['/', '\\', '\0']) && id != "." && id != "..";
    safe.then(|| dir.join(format!("{id}.session")))
}

pub(crate) fn session_exists(dir: &Path, id: &str) -> bool {
    session_path(dir, id).is_some_and(|p| p.is_file())
}

/// A session is resumable from the cwd it was created in (as with the real CLI).
pub(crate) fn session_resumable(dir: &Path, id: &str, cwd: &str) -> bool {
    session_path(dir, id)
        .and_then(|p| fs::read_to_string(p).ok())
        .is_some_and(|c| c == cwd)
}

pub(crate) fn latest_session(dir: &Path, cwd: &str) -> Option<String> {
    let mut best: Option<(SystemTime, String)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".session"))
        else {
            continue;
        };
        if fs::read_to_string(&path).ok().as_deref() != Some(cwd) {
            continue;
        }
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| mtime >= *t) {
            best = Some((mtime, id.to_owned()));
        }
    }
    best.map(|(_, id)| id)
}

//! Session store (`FAKE_CLAUDE_STATE_DIR`): one file `<id>.session` per session: its cwd on the
//! first line, then each prompt of the session as a JSON string, one per line. It backs
//! `--resume` (which restores the prompts), `--continue` and the duplicate `--session-id` check.

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

/// The prompts of session `id`, if it is resumable from `cwd` (the cwd it was created in, as
/// with the real CLI).
pub(crate) fn session_history(dir: &Path, id: &str, cwd: &str) -> Option<Vec<String>> {
    let text = fs::read_to_string(session_path(dir, id)?).ok()?;
    let mut lines = text.lines();
    if lines.next() != Some(cwd) {
        return None;
    }
    Some(
        lines
            .filter_map(|l| serde_json::from_str::<String>(l).ok())
            .collect(),
    )
}

/// Writes session `id`: its cwd and its prompts so far.
pub(crate) fn save_session(dir: &Path, id: &str, cwd: &str, prompts: &[String]) {
    let Some(path) = session_path(dir, id) else {
        return;
    };
    let mut text = format!("{cwd}\n");
    for p in prompts {
        text.push_str(&serde_json::to_string(p).unwrap_or_default());
        text.push('\n');
    }
    let _ = fs::create_dir_all(dir);
    let _ = fs::write(path, text);
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
        let text = fs::read_to_string(&path).unwrap_or_default();
        if text.lines().next() != Some(cwd) {
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

//! Files the daemon keeps in its run directory, written whole or not at
//! all.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (a rename). The temporary file is
/// created fresh, never through a symlink.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = path.with_extension("json.tmp");
    let _ = fs::remove_file(&tmp);
    let ok = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        // No fsync: the rename is atomic, and the file only has to outlive
        // the daemon, not the machine (after a reboot it is ignored anyway).
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = ok {
        log::warn!("cannot write {}: {e}", path.display());
    }
}

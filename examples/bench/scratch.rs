//! The bench's scratch directory, and the sweep of those left behind by runs
//! that aborted.

use std::path::{Path, PathBuf};

/// A scratch directory, removed at the end.
pub(crate) struct Scratch(PathBuf);

/// Where a RAM file system usually is.
const SHM: &str = "/dev/shm";

/// The daemon's `XDG_RUNTIME_DIR` for a scratch subdirectory `dir`: on a RAM
/// file system where there is one, as `/run/user/UID` is under systemd, so
/// that the run directory and the transcripts in it cost what they cost on
/// a server (creating a file on this VM's ext4 costs the CPU of a hundred
/// tasks' dispatch); else `dir` itself.
pub(crate) fn runtime_dir(dir: &Path) -> PathBuf {
    let Some(name) = dir.file_name() else {
        return dir.to_path_buf();
    };
    let shm = Path::new(SHM).join(format!("ms-bench-{}", std::process::id()));
    let p = shm.join(name);
    match std::fs::create_dir_all(&p) {
        Ok(()) => p,
        Err(_) => dir.to_path_buf(),
    }
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        // The release profile aborts on a panic, so a failed run leaves
        // its directory behind (its processes die with it, by PDEATHSIG):
        // remove those of benches no longer running.
        for base in [std::env::temp_dir(), PathBuf::from(SHM)] {
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("ms-bench-"))
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let p = std::env::temp_dir().join(format!("ms-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
    pub(crate) fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch subdir");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir_all(
            Path::new(SHM).join(format!("ms-bench-{}", std::process::id())),
        );
    }
}

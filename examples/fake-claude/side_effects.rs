//! Side effects the supervisor has to cope with besides stdout: a grandchild process
//! (`FAKE_CLAUDE_SPAWN_GRANDCHILD`) and floods of stderr noise (`FAKE_CLAUDE_STDERR_BYTES`,
//! `[[fake:stderr=N]]`).

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::json::obj;
use crate::output::record;

/// Spawns `FAKE_CLAUDE_SPAWN_GRANDCHILD` as our child (same process group unless `setsid`).
/// It is never waited for: it must outlive us unless the supervisor cleans up.
pub(crate) fn spawn_grandchild(cmdline: &str, setsid: bool) {
    let mut parts = cmdline.split_whitespace();
    let Some(program) = parts.next() else { return };
    let mut cmd = Command::new(program);
    cmd.args(parts)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if setsid {
        // SAFETY: the closure runs in the forked child before exec and only calls setsid(),
        // which is async-signal-safe; it touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    match cmd.spawn() {
        Ok(child) => record(obj! {"event": "grandchild", "pid": child.id(), "setsid": setsid}),
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "fake-claude: cannot spawn grandchild {cmdline:?}: {e}"
            );
        }
    }
}

/// Writes exactly `n` bytes to stderr as lines of 100 bytes (`fake-claude: noise 000001 xxx…\n`).
/// Blocks when nobody drains stderr, which is the point.
pub(crate) fn stderr_noise(n: u64) {
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let mut left = n;
    let mut i = 0u64;
    while left > 0 {
        i += 1;
        let mut line = format!("fake-claude: noise {i:06} ");
        while line.len() < 99 {
            line.push('x');
        }
        let take = usize::try_from(left.min(100)).unwrap_or(100);
        let mut bytes = line.into_bytes();
        bytes.truncate(take - 1);
        bytes.push(b'\n');
        if err.write_all(&bytes).is_err() {
            return;
        }
        left -= take as u64;
    }
    let _ = err.flush();
}

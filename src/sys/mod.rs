//! Every call into the C library that Rust cannot check, behind safe
//! functions: the one place in the crate with `unsafe` code.
//!
//! Why these are not std: std has no process-group signalling (`killpg`),
//! no way to observe a child's exit without reaping it (`waitid` with
//! `WNOWAIT`, which keeps the group id reserved while the group is killed),
//! no pidfd, no `poll` over pipes, no peer credentials on a Unix socket, no
//! `flock`, no interval timer, and its `Command` can only run code between
//! fork and exec by forking (see [`spawn`]). Each function here does one
//! call (or a short fixed sequence), says why it is sound, and turns
//! failure into an `io::Error`.
//!
//! The module lives at the crate root rather than under `runtime/` because
//! the transport (socket permissions and peer credentials) and the CLI (its
//! hard bound and its exit) need a few of these calls too, and no layer may
//! import one above it.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

pub mod alarm;
pub mod spawn;

/// The real user id of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Ends the process with `code` at once, without running destructors or
/// `atexit` handlers (the caller flushes what it wrote first).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process; nothing after it runs.
    unsafe { libc::_exit(code) }
}

/// Sends `signal` to the process group `pgid`. A group that no longer
/// exists is not an error; group ids 0 and 1 (our own group, everything)
/// are never signalled.
pub fn killpg(pgid: u32, signal: i32) -> io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Ok(());
    };
    if pgid <= 1 {
        return Ok(());
    }
    // SAFETY: killpg has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid, signal) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Sends `signal` to the process `pid` alone; a process that is gone is
/// not an error.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Ok(());
    };
    if pid <= 1 {
        return Ok(());
    }
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Blocks until our child `pid` has exited, without reaping it, and
/// returns how it exited. Until it is reaped its pid (and so its process
/// group id) cannot be reused.
pub fn wait_exited_nowait(pid: u32) -> io::Result<ExitStatus> {
    loop {
        // SAFETY: `info` is a plain C struct that waitid fills in; an
        // all-zero value is a valid starting point.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writes for the duration of the call.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            // SAFETY: waitid succeeded for a child, so si_status holds its
            // exit code or signal.
            let status = unsafe { info.si_status() };
            // Encode as wait(2) does, so ExitStatus reads it back.
            let raw = match info.si_code {
                libc::CLD_EXITED => (status & 0xff) << 8,
                libc::CLD_DUMPED => status | 0x80,
                _ => status,
            };
            return Ok(ExitStatus::from_raw(raw));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Waits for our child `pid` to end and reaps it.
pub fn reap(pid: u32) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is valid for writes; waiting has no other
        // preconditions.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps our child `pid` if it has exited; `Ok(false)` when it has not.
pub fn reap_nohang(pid: u32) -> io::Result<bool> {
    let mut status = 0;
    // SAFETY: `status` is valid for writes; waiting has no other
    // preconditions.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r > 0)
}

/// Makes this process a child subreaper: descendants orphaned below it
/// become its children instead of init's, so it can find and end them.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A new pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is valid for writes of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both fds and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pidfd for our child `pid` (Linux 5.3 and later): readable once it
/// exits.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What tells an io thread that its child exited: a pidfd, or where there
/// is none (an old kernel) a pipe whose write end a small waiter thread
/// closes at the exit. Either way the fd becomes readable at the exit.
#[derive(Debug)]
pub struct ExitWatch {
    fd: OwnedFd,
}

impl ExitWatch {
    /// Watches our child `pid`. Fails, rather than blocking or panicking,
    /// when no fd (or thread) can be had: the caller treats it as a failed
    /// spawn.
    pub fn new(pid: u32) -> io::Result<ExitWatch> {
        match pidfd_open(pid) {
            Ok(fd) => return Ok(ExitWatch { fd }),
            // Out of fds: a pipe would need two.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                return Err(e)
            }
            Err(_) => {}
        }
        let (r, w) = pipe()?;
        std::thread::Builder::new()
            .name("waitid".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = wait_exited_nowait(pid);
                // Closing the write end makes the read end readable.
                drop(w);
            })?;
        Ok(ExitWatch { fd: r })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd with plain integer arguments; a bad fd gives
    // an error return, not undefined behaviour.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Blocks until `fd` can take a write (or is broken).
pub fn wait_writable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `p` is a valid pollfd for the call.
    unsafe {
        libc::poll(&mut p, 1, -1);
    }
}

/// Polls up to three fds for input, waiting at most `timeout_ms` (-1:
/// forever); returns which are ready (end of file and errors count as
/// ready). `None` entries are left out.
pub fn poll_readable(fds: [Option<RawFd>; 3], timeout_ms: i32) -> [bool; 3] {
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(3);
    let mut slot = [usize::MAX; 3];
    for (i, fd) in fds.iter().enumerate() {
        if let Some(fd) = fd {
            slot[i] = pfds.len();
            pfds.push(libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }
    loop {
        // SAFETY: `pfds` is a valid array of its length for the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let mut ready = [false; 3];
    for i in 0..3 {
        if slot[i] != usize::MAX {
            ready[i] = pfds[slot[i]].revents != 0;
        }
    }
    ready
}

/// Reads what `fd` has into `buf`'s spare capacity (replacing its
/// contents): `Ok(0)` at end of file. The buffer is never zeroed, so its
/// pages become resident only as reads fill them.
pub fn read_into(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    // SAFETY: `buf` is valid for writes of its capacity; a bad fd gives an
    // error return.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.capacity()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the read initialized the first `n` bytes, n <= capacity.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// Writes as much of `data` to `fd` as it takes at once.
pub fn write_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length; a bad fd gives an
    // error return.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The kernel's clock ticks per second, the unit of `/proc/PID/stat` times.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid for writes for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// The hard limit on open files of this process: what it may raise the
/// soft limit (its own, or a child's) to without privilege.
pub fn open_files_hard_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid for writes for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_max)
}

/// Whether this process may execute `path` (its permissions for this
/// user, not just some execute bit), as `exec` will judge it.
pub fn may_execute(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Whether this process runs as root (and so may raise its limits).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Takes an exclusive lock on `file` without waiting: `Ok(false)` when
/// another process holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: the fd is open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Binds a listening socket that only its owner can use. The umask is
/// narrowed around `bind` so the file never exists with wider permissions;
/// nothing else in the daemon creates files meanwhile.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if path.as_os_str().as_bytes().len() >= 108 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path is longer than 107 bytes",
        ));
    }
    // SAFETY: umask has no preconditions and cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The uid of the process at the other end of `stream`.
pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the
    // fd is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signalling_a_missing_group_or_process_is_fine() {
        // Ids near the pid limit are almost never in use; ESRCH is Ok.
        assert!(killpg(4_194_000, 0).is_ok());
        assert!(kill(4_194_000, 0).is_ok());
        // 0 and 1 are refused silently rather than signalling everything.
        assert!(killpg(0, 0).is_ok());
        assert!(kill(1, 0).is_ok());
    }

    #[test]
    fn pipes_read_and_write_through_the_wrappers() {
        let (r, w) = pipe().unwrap();
        assert_eq!(write_some(w.as_raw_fd(), b"hello").unwrap(), 5);
        drop(w);
        let mut buf = Vec::with_capacity(16);
        assert_eq!(read_into(r.as_raw_fd(), &mut buf).unwrap(), 5);
        assert_eq!(buf, b"hello");
        assert_eq!(read_into(r.as_raw_fd(), &mut buf).unwrap(), 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn an_exit_watch_becomes_readable_at_the_exit() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let watch = ExitWatch::new(child.id()).unwrap();
        let ready = poll_readable([Some(watch.fd()), None, None], 10_000);
        assert!(ready[0]);
        // Seen, not reaped: std's wait still finds it.
        assert!(wait_exited_nowait(child.id()).unwrap().success());
        assert!(child.wait().unwrap().success());
    }
}

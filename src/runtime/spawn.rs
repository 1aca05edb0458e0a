//! Starting a child process the way `posix_spawn` does — `clone` with
//! `CLONE_VM | CLONE_VFORK`, then `exec` — plus the two steps
//! `posix_spawn` cannot take: `PR_SET_PDEATHSIG` and rlimits.
//!
//! Why not `std::process::Command`: it can only run code in the child (a
//! `pre_exec` hook, which PDEATHSIG needs) by falling back to `fork`, and
//! `fork` copies the daemon's page tables and then pays a copy-on-write
//! fault for every page either side touches. Measured on the 2-core VM
//! this project is benchmarked on: 460 µs per spawn with `fork` against
//! 120 µs with `posix_spawn` — most of what the daemon added to a restart
//! and to a cold start.
//!
//! The child shares the daemon's memory until it execs, so it runs only
//! system call wrappers on values prepared beforehand: no allocation, no
//! locks, no Rust code that could unwind. Signals are blocked around the
//! `clone`, and the child resets every handler to the default before it
//! unblocks them, so no handler of the daemon can run in it.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// The child's own stack until it execs.
const CHILD_STACK: usize = 64 * 1024;

/// Everything the child needs, prepared before it exists.
pub struct Plan {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    piped_stdin: bool,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument, variable or path contains a NUL byte",
        )
    })
}

impl Plan {
    /// `program` is run with `args` in `cwd`, with exactly `env`. A
    /// program without a `/` is looked up in `env`'s `PATH`, as `execvp`
    /// would.
    pub fn new(
        program: &str,
        args: &[String],
        cwd: &Path,
        env: &[(OsString, OsString)],
        piped_stdin: bool,
        rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    ) -> io::Result<Plan> {
        let path = find_program(program, env)?;
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(c_string(program.as_bytes().to_vec())?);
        for a in args {
            argv.push(c_string(a.as_bytes().to_vec())?);
        }
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(c_string(kv)?);
        }
        Ok(Plan {
            program: c_string(path.into_os_string().into_vec())?,
            argv,
            envp,
            cwd: c_string(cwd.as_os_str().as_bytes().to_vec())?,
            piped_stdin,
            rlimits: rlimits
                .into_iter()
                .map(|(r, v)| (r, v as libc::rlim_t))
                .collect(),
        })
    }
}

/// `program` itself if it names a path, else the first executable file of
/// that name in `env`'s `PATH`.
fn find_program(program: &str, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map_or_else(
        || OsString::from("/usr/local/bin:/usr/bin:/bin"),
        |(_, v)| v.clone(),
    );
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        let Ok(c) = c_string(candidate.as_os_str().as_bytes().to_vec()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path.
        if candidate.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(candidate);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// A started child: its pid and our ends of its standard streams.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<File>,
    pub stdout: File,
    pub stderr: File,
}

/// Waits for child `pid` to end and reaps it.
pub fn wait(pid: u32) -> io::Result<ExitStatus> {
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

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is valid for writes of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both fds and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd` moved to 3 or above (close-on-exec), so that putting the child's
/// streams in place at 0, 1 and 2 cannot overwrite one with another. Only
/// matters for a daemon started with a standard stream closed.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicating an open fd has no other preconditions.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just opened `new` and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The child's stack: mapped for each spawn and unmapped after, so that
/// none of it stays in the allocator's arenas (the spawner threads each
/// have one) to count in the daemon's RSS.
struct Stack(*mut libc::c_void);

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: an anonymous private mapping has no preconditions.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHILD_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Stack(p))
    }

    /// Where the child's stack starts: it grows down from the end.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is page aligned.
        unsafe { self.0.cast::<u8>().add(CHILD_STACK).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no longer used (the child has
        // exec'd or exited before `clone` returned).
        unsafe { libc::munmap(self.0, CHILD_STACK) };
    }
}

/// What the child reads; `err` is what it writes back if it cannot exec.
#[repr(C)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    rlimits: *const (libc::__rlimit_resource_t, libc::rlim_t),
    rlimits_len: usize,
    parent: libc::pid_t,
    mask: libc::sigset_t,
    err: libc::c_int,
}

/// Starts the child of `plan`.
pub fn spawn(plan: &Plan) -> io::Result<Spawned> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (in_child, in_ours) = if plan.piped_stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (OwnedFd::from(File::open("/dev/null")?), None)
    };
    let child_fds = [
        above_stdio(in_child)?,
        above_stdio(out_w)?,
        above_stdio(err_w)?,
    ];
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .envp
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let stack = Stack::new()?;

    // SAFETY: sigset_t is plain data; sigfillset initializes it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid; blocking signals on this thread has no
    // other preconditions.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let mut args = ChildArgs {
        program: plan.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: plan.cwd.as_ptr(),
        fds: [
            child_fds[0].as_raw_fd(),
            child_fds[1].as_raw_fd(),
            child_fds[2].as_raw_fd(),
        ],
        rlimits: plan.rlimits.as_ptr(),
        rlimits_len: plan.rlimits.len(),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        mask: old,
        err: 0,
    };
    // SAFETY: `child_main` only makes async-signal-safe calls on `args`,
    // which, like `stack`, `argv`, `envp` and `plan`, outlives the child's
    // use of it: with CLONE_VFORK this thread resumes only once the child
    // has exec'd or exited.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(child_fds);
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: the child has exec'd or exited; nothing writes `err` now.
    let err = unsafe { std::ptr::read_volatile(&args.err) };
    if err != 0 {
        let _ = wait(pid as u32);
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(Spawned {
        pid: pid as u32,
        stdin: in_ours.map(File::from),
        stdout: File::from(out_r),
        stderr: File::from(err_r),
    })
}

/// The child, between `clone` and `exec`.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY (whole function): `arg` is the parent's `ChildArgs`, alive and
    // untouched until this child execs or exits; every call below is an
    // async-signal-safe system call wrapper on data prepared beforehand.
    unsafe {
        let a = &mut *arg.cast::<ChildArgs>();
        let fail = |a: &mut ChildArgs| -> ! {
            std::ptr::write_volatile(&mut a.err, *libc::__errno_location());
            libc::_exit(127)
        };
        // No handler of the daemon may run here: back to the defaults
        // (ignored signals stay ignored, as across exec; SIGPIPE, which the
        // Rust runtime ignores, is restored).
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut cur: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut cur) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE || cur.sa_sigaction != libc::SIG_IGN {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(a);
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(a);
        }
        // The daemon may have died before the prctl; then no signal would
        // ever come.
        if libc::getppid() != a.parent {
            libc::_exit(127);
        }
        for (target, &fd) in a.fds.iter().enumerate() {
            // `fd` is above 2 (see `above_stdio`); dup2 clears close-on-exec
            // on the copy.
            if libc::dup2(fd, target as libc::c_int) < 0 {
                fail(a);
            }
        }
        if libc::chdir(a.cwd) != 0 {
            fail(a);
        }
        for k in 0..a.rlimits_len {
            let (resource, value) = *a.rlimits.add(k);
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                fail(a);
            }
        }
        libc::sigprocmask(libc::SIG_SETMASK, &a.mask, std::ptr::null_mut());
        libc::execve(a.program, a.argv, a.envp);
        fail(a)
    }
}

/// The environment a child gets: ours, with `set` over it and `remove`
/// taken out.
pub fn child_env<'a>(
    set: impl IntoIterator<Item = (&'a str, &'a str)>,
    remove: &[&str],
) -> Vec<(OsString, OsString)> {
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in set {
        env.insert(OsString::from(k), OsString::from(v));
    }
    for k in remove {
        env.remove(OsStr::new(k));
    }
    env.into_iter().collect()
}

//! Starting a child process the way `posix_spawn` does — `clone` with
//! `CLONE_VM | CLONE_VFORK`, then `exec` — plus the two steps
//! `posix_spawn` cannot take: `PR_SET_PDEATHSIG` and rlimits.
//!
//! Why not `std::process::Command`: it can only run code in the child (a
//! `pre_exec` hook, which PDEATHSIG needs) by falling back to `fork`, and
//! `fork` copies the daemon's page tables and then pays a copy-on-write
//! fault for every page either side touches. The bench's `spawn` row
//! measures it (`cargo run --release --example bench -- --only spawn`): on
//! the 2-core VM this project is benchmarked on, 0.36 ms per spawn with
//! `fork`, 0.08 ms with `posix_spawn`, 0.07 ms here — and the fork was most
//! of what the daemon added to a restart and to a cold start.
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
use std::path::{Path, PathBuf};

use super::{pipe, reap, ExitWatch};

/// The child's own stack until it execs (glibc's posix_spawn uses 32 KB
/// plus the argv), and a guard page below it.
const CHILD_STACK: usize = 64 * 1024;
const GUARD: usize = 4096;

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
/// that name in `env`'s `PATH`, as `execvp` finds it. Only absolute `PATH`
/// entries count: a relative one would be resolved against the daemon's
/// directory here but the agent's at exec. A file found but not executable
/// is EACCES, as with `execvp`.
fn find_program(program: &str, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map_or_else(
        || OsString::from("/usr/local/bin:/usr/bin:/bin"),
        |(_, v)| v.clone(),
    );
    let mut denied = false;
    for dir in std::env::split_paths(&path).filter(|d| d.is_absolute()) {
        let candidate = dir.join(program);
        if !candidate.is_file() {
            continue;
        }
        let Ok(c) = c_string(candidate.as_os_str().as_bytes().to_vec()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(candidate);
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

/// A started child: its pid, our ends of its standard streams, and what
/// tells us it exited.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<File>,
    pub stdout: File,
    pub stderr: File,
    pub exit: ExitWatch,
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

/// The child's stack: a mapping of its own rather than heap memory, so
/// that none of it stays in the allocator's arenas (the spawner threads
/// each have one) to count in the daemon's RSS; only the pages a child
/// touched are resident.
struct Stack(*mut libc::c_void);

thread_local! {
    static STACK: std::cell::RefCell<Option<Stack>> = const { std::cell::RefCell::new(None) };
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: an anonymous private mapping has no preconditions.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHILD_STACK + GUARD,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack(p);
        // An overflow hits a guard page instead of whatever lies below.
        // SAFETY: the first page of our own mapping.
        if unsafe { libc::mprotect(p, GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Where the child's stack starts: it grows down from the end.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is page aligned.
        unsafe { self.0.cast::<u8>().add(GUARD + CHILD_STACK).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no longer used (the child has
        // exec'd or exited before `clone` returned).
        unsafe { libc::munmap(self.0, GUARD + CHILD_STACK) };
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
    /// The signal mask to restore before exec (a kernel sigset).
    mask: u64,
    /// What failed ([`STAGES`]) and its errno, written by the child.
    stage: libc::c_int,
    err: libc::c_int,
}

/// The steps of the child that can fail, for the error message; exec's own
/// errors need no prefix.
const STAGES: [&str; 6] = [
    "",
    "setpgid",
    "PR_SET_PDEATHSIG",
    "redirecting stdio",
    "entering the working directory",
    "setrlimit",
];
const STAGE_EXEC: libc::c_int = 0;
const STAGE_SETPGID: libc::c_int = 1;
const STAGE_PDEATHSIG: libc::c_int = 2;
const STAGE_DUP2: libc::c_int = 3;
const STAGE_CHDIR: libc::c_int = 4;
const STAGE_RLIMIT: libc::c_int = 5;

/// `rt_sigprocmask(SIG_SETMASK)` by the system call itself.
///
/// # Safety
/// `set` must point to 8 readable bytes; `old` to 8 writable ones, or be
/// null.
unsafe fn sigprocmask_raw(set: *const u64, old: *mut u64) {
    libc::syscall(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        set,
        old,
        8usize,
    );
}

// The layout below is the kernel's on these two; others would need theirs.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("spawn.rs knows the kernel's struct sigaction on x86_64 and aarch64 only");

/// The kernel's `struct sigaction` on x86_64 and aarch64.
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
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
    // One stack per spawning thread, kept: the child is done with it when
    // `clone` returns, and unmapping it each time costs a TLB shootdown
    // across the daemon's CPUs.
    let top = STACK.with(|s| -> io::Result<*mut libc::c_void> {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = Some(Stack::new()?);
        }
        Ok(s.as_ref().map_or(std::ptr::null_mut(), Stack::top))
    })?;

    // Every signal blocked on this thread, glibc's internal ones (32, 33)
    // included, which its own sigfillset leaves out: by the raw system call,
    // as glibc's posix_spawn does.
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: both masks are valid 8-byte kernel sigsets.
    unsafe { sigprocmask_raw(&all, &mut old) };
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
        stage: 0,
        err: 0,
    };
    // SAFETY: `child_main` only makes async-signal-safe calls on `args`,
    // which, like this thread's stack, `argv`, `envp` and `plan`, outlives the child's
    // use of it: with CLONE_VFORK this thread resumes only once the child
    // has exec'd or exited.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
        )
    };
    // Read at once: the restore below may change errno.
    let clone_error = (pid < 0).then(io::Error::last_os_error);
    // SAFETY: `old` is the mask saved above.
    unsafe { sigprocmask_raw(&old, std::ptr::null_mut()) };
    if let Some(e) = clone_error {
        return Err(e);
    }
    // SAFETY: the child has exec'd or exited; nothing writes these now.
    let (err, stage) = unsafe {
        (
            std::ptr::read_volatile(&args.err),
            std::ptr::read_volatile(&args.stage),
        )
    };
    if err != 0 {
        let _ = reap(pid as u32);
        let e = io::Error::from_raw_os_error(err);
        return Err(match STAGES.get(stage as usize) {
            Some(s) if !s.is_empty() => io::Error::new(e.kind(), format!("{s}: {e}")),
            _ => e,
        });
    }
    let pid = pid as u32;
    // Without a way to see the exit, the child could not be supervised: it
    // goes, and the spawn fails (out of fds, say) like any other. Taken
    // while the child's ends of its pipes are still open here, so a spawn
    // needs all of its fds at once and fails in one place when they run
    // out (the daemon's tests drive this path by lowering RLIMIT_NOFILE).
    let exit = match ExitWatch::new(pid) {
        Ok(w) => w,
        Err(e) => {
            let _ = super::killpg(pid, libc::SIGKILL);
            let _ = reap(pid);
            return Err(io::Error::new(e.kind(), format!("watching the child: {e}")));
        }
    };
    drop(child_fds);
    Ok(Spawned {
        pid,
        stdin: in_ours.map(File::from),
        stdout: File::from(out_r),
        stderr: File::from(err_r),
        exit,
    })
}

/// The child, between `clone` and `exec`.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY (whole function): `arg` is the parent's `ChildArgs`, alive and
    // untouched until this child execs or exits; every call below is an
    // async-signal-safe system call wrapper on data prepared beforehand.
    unsafe {
        let a = &mut *arg.cast::<ChildArgs>();
        let fail = |a: &mut ChildArgs, stage: libc::c_int| -> ! {
            std::ptr::write_volatile(&mut a.stage, stage);
            std::ptr::write_volatile(&mut a.err, *libc::__errno_location());
            libc::_exit(127)
        };
        // No handler of the daemon may run here: back to the defaults
        // (ignored signals stay ignored, as across exec; SIGPIPE, which the
        // Rust runtime ignores, is restored). The raw system call reaches
        // glibc's internal signals too, and takes no lock.
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut cur: KernelSigaction = std::mem::zeroed();
            let none: *const KernelSigaction = std::ptr::null();
            if libc::syscall(libc::SYS_rt_sigaction, sig, none, &mut cur, 8usize) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE || cur.handler != libc::SIG_IGN {
                let dfl = KernelSigaction {
                    handler: libc::SIG_DFL,
                    flags: 0,
                    restorer: 0,
                    mask: 0,
                };
                let no_old: *mut KernelSigaction = std::ptr::null_mut();
                libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, no_old, 8usize);
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(a, STAGE_SETPGID);
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(a, STAGE_PDEATHSIG);
        }
        // The daemon may have died before the prctl; then no signal would
        // ever come.
        if libc::getppid() != a.parent {
            *libc::__errno_location() = libc::ESRCH;
            fail(a, STAGE_PDEATHSIG);
        }
        for (target, &fd) in a.fds.iter().enumerate() {
            // `fd` is above 2 (see `above_stdio`); dup2 clears close-on-exec
            // on the copy.
            if libc::dup2(fd, target as libc::c_int) < 0 {
                fail(a, STAGE_DUP2);
            }
        }
        if libc::chdir(a.cwd) != 0 {
            fail(a, STAGE_CHDIR);
        }
        for k in 0..a.rlimits_len {
            let (resource, value) = *a.rlimits.add(k);
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                fail(a, STAGE_RLIMIT);
            }
        }
        sigprocmask_raw(&a.mask, std::ptr::null_mut());
        libc::execve(a.program, a.argv, a.envp);
        fail(a, STAGE_EXEC)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn env_with(k: &str, v: &str) -> Vec<(OsString, OsString)> {
        child_env([(k, v)], &["CLAUDECODE"])
    }

    #[test]
    fn runs_the_program_with_its_args_env_directory_and_pipes() {
        let plan = Plan::new(
            "sh",
            &[
                "-c".into(),
                "echo \"$GREETING\"; pwd; echo oops >&2; cat".into(),
            ],
            Path::new("/tmp"),
            &env_with("GREETING", "hello"),
            true,
            Vec::new(),
        )
        .unwrap();
        let mut child = spawn(&plan).unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"from stdin\n").unwrap();
        }
        let mut out = String::new();
        child.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        child.stderr.read_to_string(&mut err).unwrap();
        assert!(reap(child.pid).unwrap().success());
        assert_eq!(out, "hello\n/tmp\nfrom stdin\n");
        assert_eq!(err, "oops\n");
    }

    #[test]
    fn the_child_leads_its_own_process_group() {
        let plan = Plan::new(
            "sh",
            &["-c".into(), "cut -d' ' -f5 /proc/$$/stat".into()],
            Path::new("/"),
            &env_with("X", "1"),
            false,
            Vec::new(),
        )
        .unwrap();
        let mut child = spawn(&plan).unwrap();
        let mut out = String::new();
        child.stdout.read_to_string(&mut out).unwrap();
        reap(child.pid).unwrap();
        assert_eq!(out.trim(), child.pid.to_string());
    }

    #[test]
    fn failures_say_which_step_and_why() {
        let env = env_with("X", "1");
        let missing = Plan::new(
            "no-such-program-here",
            &[],
            Path::new("/"),
            &env,
            false,
            vec![],
        );
        assert_eq!(
            missing.err().map(|e| e.raw_os_error()),
            Some(Some(libc::ENOENT))
        );

        let plan = Plan::new(
            "/bin/true",
            &[],
            Path::new("/no/such/dir"),
            &env,
            false,
            vec![],
        );
        let e = spawn(&plan.unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("entering the working directory: "),
            "{e}"
        );
        assert_eq!(e.kind(), io::ErrorKind::NotFound);

        // A file that is not executable: exec's own error, unprefixed.
        let file = std::env::temp_dir().join(format!("ms-spawn-test-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let plan = Plan::new(
            file.to_str().unwrap(),
            &[],
            Path::new("/"),
            &env,
            false,
            vec![],
        );
        let e = spawn(&plan.unwrap()).unwrap_err();
        let _ = std::fs::remove_file(&file);
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    }
}

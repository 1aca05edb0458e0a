//! What this host cannot run, checked at load (by `run` and
//! `check-config`) rather than found out as a crash loop: an agent's program
//! that cannot be found or run, a script whose `#!` line cannot work, a
//! working directory that is not there, an open-files limit the daemon
//! cannot grant.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{AgentSpec, Config, Problem};

/// The PATH a child gets when neither the daemon nor its config sets one
/// (as the spawner uses).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let daemon_path = std::env::var_os("PATH");
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    // Above the hard limit only a privileged daemon may go.
    let hard = hard_open_files().filter(|_| !crate::sys::is_root());
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for agent in &config.agents {
        // Replicas share an entry: one report is enough.
        if !seen.insert(agent.source.clone()) {
            continue;
        }
        let at = |key: &str| format!("{}.{key}", agent.source);
        // The agent's own PATH, as the spawner looks it up.
        let path = agent
            .env
            .get("PATH")
            .map(OsString::from)
            .or_else(|| daemon_path.clone())
            .unwrap_or_else(|| OsString::from(DEFAULT_PATH));
        match find(&agent.command, &path) {
            None if agent.command.contains('/') => problems.push(Problem {
                path: at("command"),
                message: format!("{:?} is not an executable file", agent.command),
            }),
            None => problems.push(Problem {
                path: at("command"),
                message: format!("{:?} is not found in the agent's PATH", agent.command),
            }),
            Some(program) => {
                if let Some(why) = script_problem(&program, &path) {
                    problems.push(Problem {
                        path: at("command"),
                        message: format!("{}: {why}", program.display()),
                    });
                }
            }
        }
        if !agent.working_dir.is_dir() {
            problems.push(Problem {
                path: at("working_dir"),
                message: format!("{} is not a directory", agent.working_dir.display()),
            });
        } else if !crate::sys::may_execute(&agent.working_dir) {
            problems.push(Problem {
                path: at("working_dir"),
                message: format!(
                    "{} cannot be entered by this user",
                    agent.working_dir.display()
                ),
            });
        }
        problems.extend(open_files(agent, nr_open, hard).map(|message| Problem {
            path: at("limits.open_files"),
            message,
        }));
    }
    // Transcripts go into log_dir: one that is there must be a directory
    // (it is made when it is not there yet).
    if let Some(dir) = config.logs.dir.as_ref().filter(|_| config.logs.transcripts) {
        if dir.exists() && !dir.is_dir() {
            problems.push(Problem {
                path: "log_dir".into(),
                message: format!("{} is not a directory", dir.display()),
            });
        }
    }
    problems
}

/// Why `agent`'s `limits.open_files` cannot be granted, if it cannot.
fn open_files(agent: &AgentSpec, nr_open: Option<u64>, hard: Option<u64>) -> Option<String> {
    let want = agent.limits.open_files?;
    match (nr_open, hard) {
        (Some(max), _) if want > max => Some(format!(
            "{want} is more than this system allows (fs.nr_open = {max})"
        )),
        (_, Some(hard)) if want > hard => Some(format!(
            "{want} is above this user's hard limit of {hard} open files (ulimit -Hn, or LimitNOFILE= in a systemd unit)"
        )),
        _ => None,
    }
}

fn hard_open_files() -> Option<u64> {
    crate::sys::open_files_hard_limit().ok()
}

/// `command` itself if it names a path, else the first executable of that
/// name in the absolute entries of `path`, as the spawner finds it.
fn find(command: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(PathBuf::from(command)).filter(|p| executable(p));
    }
    std::env::split_paths(path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(command))
        .find(|p| executable(p))
}

/// A file this user may run: root passes `access(X_OK)` for any file
/// with one execute bit, so the bits are checked too.
fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        && crate::sys::may_execute(p)
}

/// Why the kernel would not run `program` as a script, if it would not:
/// its `#!` line names no interpreter, one that is not there (a Windows
/// line ending makes `/bin/sh\r`), or `env` and a program not in `path`.
fn script_problem(program: &Path, path: &std::ffi::OsStr) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program).ok()?.read(&mut head).ok()?;
    let head = &head[..n];
    if head.starts_with(b"\xEF\xBB\xBF#!") {
        return Some(
            "a byte-order mark comes before its #! line, which the kernel then does not see".into(),
        );
    }
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    let Some(interp) = words.next() else {
        return Some("its #! line names no interpreter".into());
    };
    if interp.ends_with('\r') {
        return Some(
            "its #! line ends in a carriage return (Windows line endings): the interpreter would be \"...\\r\"".into(),
        );
    }
    if !executable(Path::new(interp)) {
        return Some(format!(
            "its interpreter {interp} (the #! line) is not an executable file"
        ));
    }
    if Path::new(interp).file_name().is_some_and(|f| f == "env") {
        let target = words.find(|w| !w.starts_with('-'))?;
        let target = target.trim_end_matches('\r');
        if find(target, path).is_none() {
            return Some(format!(
                "its #! line runs {target} through env, and {target} is not found in the agent's PATH"
            ));
        }
    }
    None
}

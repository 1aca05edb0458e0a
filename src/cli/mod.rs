//! The command line: argument parsing, logging setup, connection settings,
//! and the single place where an error becomes an exit code and a line on
//! stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use crate::config::url::check_nats_url;
use crate::config::{self, Config, NatsAuth, Secret};
use crate::error::{exit, HealthState, SystemError};
use crate::message::schemas::CommandType;
use crate::transport::local_transport::default_socket_path;
use crate::transport::nats_transport::NatsSettings;

mod answers;
mod bound;
mod check_config;
mod client;
mod control;
mod durable;
mod gather;
mod health;
mod listen;
mod logging;
mod metrics;
mod output;
mod reload;
mod result;
mod run;
mod send;
mod status;
mod transcript;

/// Run fleets of Claude Code agents: supervise them, route tasks to them in
/// priority order, and answer scripts and cron with exit codes.
#[derive(FromArgs, Debug)]
#[argh(
    help_triggers("-h", "--help"),
    example = "mister-smith --config examples/demo.json run",
    example = "echo 'fix the flaky test' | mister-smith send --to coder-1 --wait",
    example = "mister-smith health || page-oncall",
    note = "Exit codes: 0 ok, 1 a task failed, 64 usage, 65 bad input, 69 unavailable, 70 internal, 74 I/O, 75 temporary (retry: a timeout, a usage limit, an overload), 78 config (also: the account is not logged in); health: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. See mister-smith(1)."
)]
pub struct Cli {
    /// config file (default: $MISTER_SMITH_CONFIG, else ./mister-smith.json)
    #[argh(option, arg_name = "PATH")]
    pub config: Option<PathBuf>,

    /// NATS server URL (default: $NATS_URL, else the config's
    /// transport.nats_url; with none, the local socket)
    #[argh(option, arg_name = "URL")]
    pub nats: Option<String>,

    /// local socket path; given explicitly, it wins over NATS (default:
    /// $MISTER_SMITH_SOCKET, the config's transport.socket,
    /// $XDG_RUNTIME_DIR/mister-smith.sock, else /tmp/mister-smith-UID.sock)
    #[argh(option, arg_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// NATS credentials file (default: $NATS_CREDS, else transport.creds)
    #[argh(option, arg_name = "FILE")]
    pub creds: Option<PathBuf>,

    /// NATS token (default: $NATS_TOKEN, else transport.token)
    #[argh(option, arg_name = "TOKEN")]
    pub token: Option<String>,

    /// NATS user (default: $NATS_USER, else transport.user)
    #[argh(option, arg_name = "USER")]
    pub user: Option<String>,

    /// NATS password (default: $NATS_PASSWORD, else transport.password)
    #[argh(option, arg_name = "PASSWORD")]
    pub password: Option<String>,

    /// CA certificate for NATS TLS (default: $NATS_CA, else transport.tls_ca)
    #[argh(option, arg_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// client certificate for NATS TLS (default: $NATS_CERT, else
    /// transport.tls_cert)
    #[argh(option, arg_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// client key for NATS TLS (default: $NATS_KEY, else transport.tls_key)
    #[argh(option, arg_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// print the version and exit
    #[argh(switch, short = 'V')]
    pub version: bool,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Run(run::RunArgs),
    CheckConfig(check_config::CheckConfigArgs),
    Send(send::SendArgs),
    Status(status::StatusArgs),
    Health(health::HealthArgs),
    Start(control::StartArgs),
    Stop(control::StopArgs),
    Restart(control::RestartArgs),
    Pause(control::PauseArgs),
    Resume(control::ResumeArgs),
    Listen(listen::ListenArgs),
    Result(result::ResultArgs),
    Transcript(transcript::TranscriptArgs),
    Reload(reload::ReloadArgs),
}

/// The version line: package version and the git commit it was built from.
pub fn version_line() -> String {
    match option_env!("MISTER_SMITH_GIT_COMMIT") {
        Some(c) if !c.is_empty() => format!("mister-smith {} ({c})", env!("CARGO_PKG_VERSION")),
        _ => format!("mister-smith {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Ends the process with `code` once output is flushed, without running
/// destructors or `atexit` handlers: the blocking NATS client's threads are
/// still running, its destructors can wait on a connection being torn down,
/// and a command that has said everything must neither hang nor have its
/// exit code changed on the way out.
pub fn exit_now(code: u8) -> ! {
    logging::flush(Duration::from_millis(500));
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    crate::sys::exit_now(i32::from(code))
}

/// Writes one error line to stderr. A stderr that cannot be written to is
/// ignored: the exit code still says what happened.
pub(crate) fn report(line: &str) {
    let line = logging::printable(line);
    let _ = writeln!(std::io::stderr(), "mister-smith: error: {line}");
}

/// One line on stderr that is not an error: the command goes on.
pub(crate) fn notice(line: &str) {
    let line = logging::printable(line);
    let _ = writeln!(std::io::stderr(), "mister-smith: note: {line}");
}

/// The exit code for arguments that could not even be parsed: a usage
/// error, except for `health`, whose callers (Nagios, cron) read 3 as "the
/// check could not run".
fn usage_code(args: &[String]) -> u8 {
    if args.iter().skip(1).any(|a| a == "health") {
        HealthState::Unknown.exit_code()
    } else {
        exit::USAGE
    }
}

/// `send -` reads the body from stdin, as `send` alone does; argh takes a
/// lone `-` for an unknown flag, so it is dropped before parsing (unless it
/// is the value of an option).
fn drop_stdin_dash(args: &mut Vec<String>) {
    const TAKES_VALUE: [&str; 21] = [
        "--config",
        "--nats",
        "--socket",
        "--creds",
        "--token",
        "--user",
        "--password",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--to",
        "--agent-type",
        "--type",
        "--priority",
        "--timeout",
        "--correlation-id",
        "--meta",
        "--retries",
        "--session",
        "--trace-id",
        "--output-format",
    ];
    let Some(send) = args.iter().position(|a| a == "send") else {
        return;
    };
    let mut i = send + 1;
    while i < args.len() {
        match args[i].as_str() {
            "--" => return,
            "-" => {
                args.remove(i);
                return;
            }
            a if TAKES_VALUE.contains(&a) => i += 2,
            _ => i += 1,
        }
    }
}

/// Parses the command line, runs the command, and returns its exit code.
pub fn main() -> u8 {
    let mut args = Vec::new();
    let mut bad = None;
    for (n, a) in std::env::args_os().enumerate() {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(raw) => {
                bad.get_or_insert(n);
                args.push(raw.to_string_lossy().into_owned());
            }
        }
    }
    if let Some(n) = bad {
        report(&format!("argument {n} ({:?}) is not valid UTF-8", args[n]));
        return usage_code(&args);
    }
    drop_stdin_dash(&mut args);
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["mister-smith"], strs.get(1..).unwrap_or(&[])) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    let text = format!("{}\n", early.output.trim_end());
                    match client::write_stdout(text.as_bytes()) {
                        Ok(()) => exit::OK,
                        Err(e) => finish(Err(e)),
                    }
                }
                Err(()) => {
                    let first = early.output.lines().next().unwrap_or("bad arguments");
                    report(&format!("{first} (see mister-smith --help)"));
                    usage_code(&args)
                }
            };
        }
    };
    let daemon = matches!(cli.command, Some(Command::Run(_)));
    logging::init(if daemon { "info" } else { "warn" });
    if cli.version {
        let line = format!("{}\n", version_line());
        return finish(client::write_stdout(line.as_bytes()).map(|()| exit::OK));
    }
    let result = match &cli.command {
        None => Err(SystemError::Usage(
            "no command given (see mister-smith --help)".into(),
        )),
        Some(Command::Run(a)) => run::run(&cli, a),
        Some(Command::CheckConfig(a)) => check_config::run(&cli, a),
        Some(Command::Send(a)) => send::run(&cli, a),
        Some(Command::Status(a)) => status::run(&cli, a),
        Some(Command::Health(a)) => return health::run(&cli, a),
        Some(Command::Start(a)) => control::run(&cli, &a.id, CommandType::Start),
        Some(Command::Stop(a)) => control::run(&cli, &a.id, CommandType::Stop),
        Some(Command::Restart(a)) => control::run(&cli, &a.id, CommandType::Restart),
        Some(Command::Pause(a)) => control::run(&cli, &a.id, CommandType::Pause),
        Some(Command::Resume(a)) => control::resume(&cli, a),
        Some(Command::Listen(a)) => listen::run(&cli, a),
        Some(Command::Result(a)) => result::run(&cli, a),
        Some(Command::Transcript(a)) => transcript::run(&cli, a),
        Some(Command::Reload(a)) => reload::run(&cli, a),
    };
    finish(result)
}

/// The exit code of a command's result, its error reported on stderr.
fn finish(result: Result<u8, SystemError>) -> u8 {
    match result {
        Ok(code) => code,
        // A closed stdout (`| head`) is the reader's choice, not an error.
        Err(SystemError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            exit::OK
        }
        Err(e) => {
            for line in e.lines() {
                report(&line);
            }
            e.exit_code()
        }
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Cli {
    /// The config for a client command: the named file (which must then be
    /// valid), else `./mister-smith.json` if it exists, else none.
    pub fn client_config(&self) -> Result<Option<Config>, SystemError> {
        // Read once per process: a command asks for it in several places,
        // and `send` is timed against a raw client.
        static LOADED: std::sync::OnceLock<Option<Config>> = std::sync::OnceLock::new();
        if let Some(c) = LOADED.get() {
            return Ok(c.clone());
        }
        let explicit = self.config.is_some() || env_nonempty(config::CONFIG_ENV).is_some();
        let path = config::locate(self.config.as_deref());
        let loaded = if !explicit && !path.exists() {
            None
        } else {
            Some(config::load_unchecked(&path)?)
        };
        Ok(LOADED.get_or_init(|| loaded).clone())
    }

    /// The local socket: `--socket`, `$MISTER_SMITH_SOCKET`, the config,
    /// else the default path.
    pub fn socket_path(&self, config: Option<&Config>) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| env_nonempty("MISTER_SMITH_SOCKET").map(PathBuf::from))
            .or_else(|| config.and_then(|c| c.transport.socket.clone()))
            .unwrap_or_else(default_socket_path)
    }

    /// NATS settings when a URL is given by `--nats`, `$NATS_URL` or the
    /// config; credentials from flags, then the environment, then the config.
    pub fn nats_settings(
        &self,
        config: Option<&Config>,
    ) -> Result<Option<NatsSettings>, SystemError> {
        let t = config.map(|c| &c.transport);
        let from_env = env_nonempty("NATS_URL");
        let url = match (&self.nats, from_env) {
            (Some(url), _) => {
                check_nats_url(url).map_err(|why| SystemError::Usage(format!("--nats {why}")))?;
                url.clone()
            }
            (None, Some(url)) => {
                check_nats_url(&url)
                    .map_err(|why| SystemError::Usage(format!("NATS_URL {why}")))?;
                url
            }
            // The config's URL was checked when it was loaded.
            (None, None) => match t.and_then(|t| t.nats_url.clone()) {
                Some(url) => url,
                None => return Ok(None),
            },
        };
        let conf = t.map(|t| t.auth.clone()).unwrap_or_default();
        let pick = |flag: &Option<String>, env: &str, conf: Option<String>| {
            flag.clone().or_else(|| env_nonempty(env)).or(conf)
        };
        let secret = |flag: &Option<String>, env: &str, conf: Option<Secret>| {
            flag.clone()
                .or_else(|| env_nonempty(env))
                .map(Secret::new)
                .or(conf)
        };
        let path = |flag: &Option<PathBuf>, env: &str, conf: Option<PathBuf>| {
            flag.clone()
                .or_else(|| env_nonempty(env).map(PathBuf::from))
                .or(conf)
        };
        let auth = NatsAuth {
            creds: path(&self.creds, "NATS_CREDS", conf.creds),
            token: secret(&self.token, "NATS_TOKEN", conf.token),
            user: pick(&self.user, "NATS_USER", conf.user),
            password: secret(&self.password, "NATS_PASSWORD", conf.password),
            tls_ca: path(&self.tls_ca, "NATS_CA", conf.tls_ca),
            tls_cert: path(&self.tls_cert, "NATS_CERT", conf.tls_cert),
            tls_key: path(&self.tls_key, "NATS_KEY", conf.tls_key),
        };
        // One without the other would be dropped without a word.
        match (&auth.tls_cert, &auth.tls_key) {
            (Some(_), None) => Err(SystemError::Usage(
                "a TLS client certificate needs its key (--tls-key or NATS_KEY)".into(),
            )),
            (None, Some(_)) => Err(SystemError::Usage(
                "a TLS client key needs its certificate (--tls-cert or NATS_CERT)".into(),
            )),
            _ => Ok(Some(NatsSettings { url, auth })),
        }
    }
}

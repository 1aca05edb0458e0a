//! The command line: argument parsing, logging setup, connection settings,
//! and the single place where an error becomes an exit code and a line on
//! stderr.

use std::io::Write;
use std::path::PathBuf;

use argh::FromArgs;

use crate::config::{self, Config, NatsAuth, Secret};
use crate::error::{exit, HealthState, SystemError};
use crate::message::schemas::CommandType;
use crate::transport::local_transport::default_socket_path;
use crate::transport::nats_transport::NatsSettings;

mod bound;
mod check_config;
mod client;
mod control;
mod health;
mod listen;
mod run;
mod send;
mod status;

/// Run fleets of Claude Code agents: supervise them, route tasks to them in
/// priority order, and answer scripts and cron with exit codes.
#[derive(FromArgs, Debug)]
#[argh(
    help_triggers("-h", "--help"),
    example = "mister-smith --config examples/demo.json run",
    example = "echo 'fix the flaky test' | mister-smith send --to coder-1 --wait",
    example = "mister-smith health || page-oncall",
    note = "Exit codes: 0 ok, 1 a task failed, 64 usage, 65 bad input, 69 unavailable, 70 internal, 74 I/O, 75 temporary (retry), 78 config; health: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. See mister-smith(1)."
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
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    crate::sys::exit_now(i32::from(code))
}

/// Parses `std::env::args`, runs the command, and returns its exit code.
pub fn main() -> u8 {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["mister-smith"], strs.get(1..).unwrap_or(&[])) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    let _ = writeln!(std::io::stdout(), "{}", early.output.trim_end());
                    exit::OK
                }
                Err(()) => {
                    let first = early.output.lines().next().unwrap_or("bad arguments");
                    eprintln!("mister-smith: error: {first} (see mister-smith --help)");
                    // Nagios reads 3 as UNKNOWN, the right answer to a
                    // check it could not run.
                    let health = strs.iter().skip(1).any(|a| *a == "health");
                    if health {
                        HealthState::Unknown.exit_code()
                    } else {
                        exit::USAGE
                    }
                }
            };
        }
    };
    let daemon = matches!(cli.command, Some(Command::Run(_)));
    init_logging(if daemon { "info" } else { "warn" });
    if cli.version {
        println!("{}", version_line());
        return exit::OK;
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
        Some(Command::Resume(a)) => control::run(&cli, &a.id, CommandType::Resume),
        Some(Command::Listen(a)) => listen::run(&cli, a),
    };
    match result {
        Ok(code) => code,
        // A closed stdout (`| head`) is the reader's choice, not an error.
        Err(SystemError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            exit::OK
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("mister-smith: error: {line}");
            }
            e.exit_code()
        }
    }
}

/// Logs go to stderr. `MISTER_SMITH_LOG` (or else `RUST_LOG`) sets the
/// filter: `info` for the daemon, `warn` for the other commands by default;
/// `MISTER_SMITH_LOG_STYLE` sets colour.
fn init_logging(default: &str) {
    let filter = std::env::var("MISTER_SMITH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let mut builder = env_logger::Builder::new();
    builder
        .parse_filters(&filter)
        .parse_write_style(&std::env::var("MISTER_SMITH_LOG_STYLE").unwrap_or_default())
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        });
    let _ = builder.try_init();
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Cli {
    /// The config for a client command: the named file (which must then be
    /// valid), else `./mister-smith.json` if it exists, else none.
    pub fn client_config(&self) -> Result<Option<Config>, SystemError> {
        let explicit = self.config.is_some() || env_nonempty(config::CONFIG_ENV).is_some();
        let path = config::locate(self.config.as_deref());
        if !explicit && !path.exists() {
            return Ok(None);
        }
        Ok(Some(config::load_unchecked(&path)?))
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
    pub fn nats_settings(&self, config: Option<&Config>) -> Option<NatsSettings> {
        let t = config.map(|c| &c.transport);
        let url = self
            .nats
            .clone()
            .or_else(|| env_nonempty("NATS_URL"))
            .or_else(|| t.and_then(|t| t.nats_url.clone()))?;
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
        Some(NatsSettings { url, auth })
    }
}

//! The command line: argument parsing, logging setup, and the single place
//! where an error becomes an exit code and a line on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

use crate::error::{exit, SystemError};

mod check_config;
mod run;

/// Run fleets of Claude Code agents: supervise them, route tasks to them, and
/// answer scripts and cron with exit codes.
#[derive(FromArgs, Debug)]
#[argh(help_triggers("-h", "--help"))]
pub struct Cli {
    /// config file (default: $MISTER_SMITH_CONFIG, else ./mister-smith.json)
    #[argh(option, arg_name = "PATH")]
    pub config: Option<PathBuf>,

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
}

/// The version line: package version and the git commit it was built from.
pub fn version_line() -> String {
    match option_env!("MISTER_SMITH_GIT_COMMIT") {
        Some(c) if !c.is_empty() => format!("mister-smith {} ({c})", env!("CARGO_PKG_VERSION")),
        _ => format!("mister-smith {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Parses `std::env::args`, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["mister-smith"], strs.get(1..).unwrap_or(&[])) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    let _ = writeln!(std::io::stdout(), "{}", early.output.trim_end());
                    ExitCode::from(exit::OK)
                }
                Err(()) => {
                    let first = early.output.lines().next().unwrap_or("bad arguments");
                    eprintln!("mister-smith: error: {first} (see mister-smith --help)");
                    ExitCode::from(exit::USAGE)
                }
            };
        }
    };
    init_logging();
    if cli.version {
        println!("{}", version_line());
        return ExitCode::from(exit::OK);
    }
    let result = match &cli.command {
        None => Err(SystemError::Usage(
            "no command given (see mister-smith --help)".into(),
        )),
        Some(Command::Run(a)) => run::run(&cli, a),
        Some(Command::CheckConfig(a)) => check_config::run(&cli, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            for line in e.lines() {
                eprintln!("mister-smith: error: {line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs go to stderr. `MISTER_SMITH_LOG` (or else `RUST_LOG`) sets the
/// filter, `info` by default; `MISTER_SMITH_LOG_STYLE` sets colour.
fn init_logging() {
    let filter = std::env::var("MISTER_SMITH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
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

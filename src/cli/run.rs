//! `mister-smith run`: the daemon, in the foreground.

use argh::FromArgs;

use crate::cli::Cli;
use crate::config;
use crate::error::SystemError;
use crate::runtime::daemon;
use crate::runtime::supervisor::Outcome;

/// run the daemon in the foreground: start every agent, keep each alive by
/// its restart policy, and stop them all on SIGTERM or Ctrl-C (twice: at
/// once). Logs go to stderr.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {}

pub fn run(cli: &Cli, _args: &RunArgs) -> Result<u8, SystemError> {
    let path = config::locate(cli.config.as_deref());
    let config = config::load(&path)?;
    match daemon::run(config)? {
        Outcome::Graceful => Ok(0),
        Outcome::Forced(sig) => Ok(u8::try_from(128 + sig).unwrap_or(u8::MAX)),
    }
}

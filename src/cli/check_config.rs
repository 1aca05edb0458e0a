//! `mister-smith check-config`: validate the config without starting
//! anything.

use std::io::Write;

use argh::FromArgs;

use crate::cli::Cli;
use crate::config;
use crate::error::SystemError;

/// check the config file: print "ok: N agents" and exit 0, or list every
/// problem (one per line, with its JSON path) and exit 78.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "check-config",
    example = "mister-smith --config /etc/mister-smith.json check-config && systemctl restart mister-smith"
)]
pub struct CheckConfigArgs {}

pub(super) fn run(cli: &Cli, _args: &CheckConfigArgs) -> Result<u8, SystemError> {
    let path = config::locate(cli.config.as_deref());
    let config = config::load(&path)?;
    let n = config.agents.len();
    writeln!(
        std::io::stdout(),
        "ok: {n} agent{}",
        if n == 1 { "" } else { "s" }
    )
    .map_err(|source| SystemError::Io {
        what: "write to stdout",
        source,
    })?;
    Ok(0)
}

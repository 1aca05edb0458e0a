//! `mister-smith run`: the daemon, in the foreground.

use argh::FromArgs;

use crate::cli::Cli;
use crate::config;
use crate::error::SystemError;
use crate::runtime::daemon::{self, Endpoints};
use crate::runtime::supervisor::Outcome;

/// run the daemon in the foreground: start every agent, keep each alive by
/// its restart policy, serve the local socket (and NATS when a URL is set),
/// and stop them all on SIGTERM or Ctrl-C (twice: at once). Logs go to
/// stderr. Exit: 0 after a clean stop, 78 bad config, 69 socket in use.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "run",
    example = "mister-smith --config /etc/mister-smith.json run"
)]
pub struct RunArgs {}

pub(super) fn run(cli: &Cli, _args: &RunArgs) -> Result<u8, SystemError> {
    let path = config::locate(cli.config.as_deref());
    let config = config::load(&path)?;
    let endpoints = Endpoints {
        socket: cli.socket_path(Some(&config)),
        nats: cli.nats_settings(Some(&config))?,
    };
    if config.transport.jetstream.is_some() && endpoints.nats.is_none() {
        return Err(config::ConfigError::Invalid {
            path: config.path.clone(),
            problems: vec![config::Problem {
                path: "transport.jetstream".into(),
                message: "durable tasks need NATS: set transport.nats_url, NATS_URL or --nats"
                    .into(),
            }],
        }
        .into());
    }
    match daemon::run(config, endpoints)? {
        Outcome::Graceful => Ok(0),
        Outcome::Forced(sig) => Ok(u8::try_from(128 + sig).unwrap_or(u8::MAX)),
    }
}

//! `mister-smith reload`: the daemon reads its config again.

use std::time::Instant;

use argh::FromArgs;

use crate::cli::client::{self, print_line, refusal};
use crate::cli::Cli;
use crate::error::{exit, SystemError};
use crate::message::envelope::{Envelope, Payload};
use crate::message::router::system_subject;
use crate::message::schemas::SystemHealthCheck;
use crate::transport::TransportKind;

/// make the daemon read its config file again (as SIGHUP does): new agents
/// start, removed ones stop (their queued tasks are answered cancelled),
/// changed ones restart once idle (a running task finishes first), the rest
/// keep running untouched. Only agents change by reload. Prints a summary.
/// Exit: 0, 78 the config has problems (each printed; nothing changed), 69
/// no daemon, 75 no answer.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "reload", example = "mister-smith reload")]
pub struct ReloadArgs {}

pub(super) fn run(cli: &Cli, _args: &ReloadArgs) -> Result<u8, SystemError> {
    client::bound_command(client::ACK_WAIT);
    let mut client = client::connect(cli)?;
    // The socket reaches one daemon; over NATS, the one of this config
    // (or of this host, without one).
    let daemon = match client.kind() {
        TransportKind::Nats => match cli.client_config()? {
            Some(c) => c.daemon_id,
            None => crate::config::default_daemon_id(),
        },
        _ => "all".to_string(),
    };
    let subject = system_subject(&daemon, "reload");
    let mut env = Envelope::new(Payload::SystemHealthCheck(SystemHealthCheck::default()));
    let answers = client
        .ask(&subject, &mut env, Instant::now() + client::ACK_WAIT, None)
        .map_err(|e| match e {
            SystemError::NoResponders { .. } => SystemError::NoAnswer(format!(
                "no daemon {daemon} ({}); a daemon_id or NATS URL changed in the config takes effect only by restarting the daemon",
                client.describe()
            )),
            e => e,
        })?;
    let Some(answer) = answers.into_iter().next() else {
        return Err(SystemError::Unanswered(format!(
            "no answer to reload within {} ms (it may still be done)",
            client::ACK_WAIT.as_millis()
        )));
    };
    if let Some(err) = refusal(&answer) {
        return Err(err);
    }
    match &answer.payload {
        Payload::SystemAlert(a) => {
            print_line(&mut std::io::stdout().lock(), a.message.as_bytes())?;
            Ok(exit::OK)
        }
        _ => Err(SystemError::Unanswered(format!(
            "an unexpected answer to reload ({})",
            answer.message_type()
        ))),
    }
}

//! `mister-smith start|stop|restart|pause|resume ID`: control one agent.

use std::time::Instant;

use argh::FromArgs;

use crate::cli::client::{self, print_line, refusal};
use crate::cli::Cli;
use crate::config::names::check_token;
use crate::error::{exit, SystemError};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::router::agent_subject;
use crate::message::schemas::{AgentCommand, CommandType};

/// start a terminated agent. Exit: 0, 69 no such agent or not possible.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "start", example = "mister-smith start coder-1")]
pub struct StartArgs {
    /// agent id
    #[argh(positional)]
    pub id: String,
}

/// stop an agent: close stdin, SIGTERM, SIGKILL after stop_timeout_ms; it
/// stays terminated. Exit: 0, 69 no such agent.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stop", example = "mister-smith stop coder-1")]
pub struct StopArgs {
    /// agent id
    #[argh(positional)]
    pub id: String,
}

/// stop an agent and start it again with a fresh restart budget. Exit: 0,
/// 69 no such agent.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restart", example = "mister-smith restart coder-1")]
pub struct RestartArgs {
    /// agent id
    #[argh(positional)]
    pub id: String,
}

/// pause an idle or busy agent (SIGSTOP to its process group). Exit: 0, 69
/// no such agent or nothing to pause.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "pause", example = "mister-smith pause coder-1")]
pub struct PauseArgs {
    /// agent id
    #[argh(positional)]
    pub id: String,
}

/// resume a paused agent (SIGCONT to its process group). Exit: 0, 69 no
/// such agent or not paused.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "resume", example = "mister-smith resume coder-1")]
pub struct ResumeArgs {
    /// agent id
    #[argh(positional)]
    pub id: String,
}

pub(super) fn run(cli: &Cli, id: &str, op: CommandType) -> Result<u8, SystemError> {
    check_token(id).map_err(|why| SystemError::BadInput(format!("agent id {id:?} {why}")))?;
    client::bound_command(client::ACK_WAIT);
    let mut client = client::connect(cli)?;
    let mut env = Envelope::new(Payload::AgentCommand(AgentCommand {
        command_type: op,
        agent_id: Some(id.to_string()),
        prompt: None,
        task_id: None,
    }));
    env.target_agent_id = Some(id.to_string());
    // Daemons subscribe to `mister-smith.*.{id}.*`: any type token reaches
    // the agent.
    let subject = agent_subject("claude", id, MessageType::AgentCommand);
    let answers = client
        .ask(&subject, &mut env, Instant::now() + client::ACK_WAIT, None)
        .map_err(|e| match e {
            SystemError::NoResponders { .. } => {
                SystemError::NoAnswer(format!("no agent {id} ({})", client.describe()))
            }
            e => e,
        })?;
    let Some(answer) = answers.into_iter().next() else {
        return Err(SystemError::Unanswered(format!(
            "no answer about agent {id} within {} ms (it may still be done)",
            client::ACK_WAIT.as_millis()
        )));
    };
    if let Some(err) = refusal(&answer) {
        return Err(err);
    }
    if let Payload::AgentStatus(s) = &answer.payload {
        let state = s.status.map_or("unknown", |s| s.as_str());
        print_line(
            &mut std::io::stdout().lock(),
            format!("{id}: {state}").as_bytes(),
        )?;
    }
    Ok(exit::OK)
}

//! `mister-smith start|stop|restart|pause|resume ID`: control one agent.

use std::time::Instant;

use argh::FromArgs;

use crate::cli::client::{self, print_line, refusal};
use crate::cli::Cli;
use crate::config::names::check_token;
use crate::error::{exit, SystemError};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::router::{agent_subject, system_subject};
use crate::message::schemas::{AgentCommand, AlertCode, CommandType};

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

/// resume a paused agent (SIGCONT to its process group), or with --account
/// lift an account's hold at once (after a fresh login, say). Exit: 0, 69 no
/// such agent or account, or the agent is not paused.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "resume",
    example = "mister-smith resume coder-1",
    example = "mister-smith resume --account default"
)]
pub struct ResumeArgs {
    /// agent id
    #[argh(positional)]
    pub id: Option<String>,

    /// the account whose hold to lift
    #[argh(option, arg_name = "NAME")]
    pub account: Option<String>,
}

/// `resume`: an agent, or an account's hold.
pub(super) fn resume(cli: &Cli, args: &ResumeArgs) -> Result<u8, SystemError> {
    match (&args.id, &args.account) {
        (Some(id), None) => run(cli, id, CommandType::Resume),
        (None, Some(account)) => resume_account(cli, account),
        (Some(_), Some(_)) => Err(SystemError::Usage(
            "resume takes an agent id or --account NAME, not both".into(),
        )),
        (None, None) => Err(SystemError::Usage(
            "resume what? give an agent id or --account NAME".into(),
        )),
    }
}

/// `resume --account NAME`: every daemon with the account lifts its hold.
fn resume_account(cli: &Cli, account: &str) -> Result<u8, SystemError> {
    check_token(account)
        .map_err(|why| SystemError::BadInput(format!("account {account:?} {why}")))?;
    client::bound_command(client::ACK_WAIT);
    let mut client = client::connect(cli)?;
    let mut env = Envelope::new(Payload::AgentCommand(AgentCommand {
        command_type: CommandType::Resume,
        agent_id: None,
        prompt: None,
        task_id: None,
        account: Some(account.to_string()),
    }));
    // Every daemon may run agents of the account: ask them all.
    let subject = system_subject("all", "agent_command");
    let answers = client.ask(
        &subject,
        &mut env,
        Instant::now() + client::ACK_WAIT,
        Some(client::MORE_ANSWERS),
    )?;
    if answers.is_empty() {
        return Err(SystemError::Unanswered(format!(
            "no answer about account {account} within {} ms (it may still be done)",
            client::ACK_WAIT.as_millis()
        )));
    }
    let mut out = std::io::stdout().lock();
    let mut found = false;
    let mut refusal_seen = None;
    for answer in &answers {
        let Payload::SystemAlert(a) = &answer.payload else {
            continue;
        };
        if a.code == AlertCode::NoRoute {
            continue;
        }
        if let Some(err) = refusal(answer) {
            refusal_seen = Some(err);
            continue;
        }
        found = true;
        let daemon = answer
            .metadata
            .get("daemon_id")
            .map(|d| format!("{d}: "))
            .unwrap_or_default();
        print_line(&mut out, format!("{daemon}{}", a.message).as_bytes())?;
    }
    match (found, refusal_seen) {
        (true, _) => Ok(exit::OK),
        (false, Some(err)) => Err(err),
        (false, None) => Err(SystemError::NoAnswer(format!(
            "no daemon has account {account} ({})",
            client.describe()
        ))),
    }
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
        account: None,
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

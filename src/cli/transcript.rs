//! `mister-smith transcript TASK_ID`: every envelope of a task, as this
//! host's daemon wrote them.

use std::io::Write;

use argh::FromArgs;

use crate::cli::Cli;
use crate::error::{exit, SystemError};
use crate::runtime::{tracker, transcripts};

/// print a task's transcript from this host's daemon: the task as
/// assigned, each progress event, the result, one JSON envelope per line
/// (one transcript after another when several agents ran it). Exit: 0, 69
/// when this host has none (an unknown id, a task that ran elsewhere, or one
/// pruned by logs.retain_days / logs.max_mb).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "transcript",
    example = "mister-smith transcript 6d54343a-14f7-4428-a5f3-b3d43b183eb8 | jq -c .payload.event"
)]
pub struct TranscriptArgs {
    /// the task id `send` printed
    #[argh(positional)]
    pub task_id: String,
}

pub(super) fn run(cli: &Cli, args: &TranscriptArgs) -> Result<u8, SystemError> {
    if args.task_id.is_empty() || args.task_id.len() > 128 {
        return Err(SystemError::BadInput("a task id is 1 to 128 bytes".into()));
    }
    let config = cli.client_config()?;
    let (logs, daemon_id) = match &config {
        Some(c) => (c.logs.clone(), c.daemon_id.clone()),
        None => (Default::default(), crate::config::default_daemon_id()),
    };
    let dir = transcripts::dir_of(&logs, &tracker::run_dir(&daemon_id));
    let found = transcripts::find(&dir, &args.task_id);
    if found.is_empty() {
        return Err(SystemError::NoAnswer(format!(
            "no transcript of task {:?} under {} (an unknown id, one run on another host, one pruned, or one not written yet: they follow the result by moments)",
            args.task_id,
            dir.display()
        )));
    }
    let mut out = std::io::stdout().lock();
    for path in found {
        let data = std::fs::read(&path).map_err(|source| SystemError::Io {
            what: "read a transcript",
            source,
        })?;
        out.write_all(&data).map_err(|source| SystemError::Io {
            what: "write to stdout",
            source,
        })?;
    }
    out.flush().map_err(|source| SystemError::Io {
        what: "write to stdout",
        source,
    })?;
    Ok(exit::OK)
}

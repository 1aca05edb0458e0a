//! The command line: which measurements to run and how big, and the one-line
//! usage error for a bad argument.

use std::path::PathBuf;

/// The measurements, in the order they run.
const MEASUREMENTS: [&str; 10] = [
    "restart",
    "cold",
    "memory",
    "rtt",
    "send",
    "spawn",
    "dispatcher",
    "throughput",
    "transcripts",
    "durable",
];

#[derive(argh::FromArgs)]
/// Measure mister-smith against the physical floor, in the same run: starts
/// its own nats-server on a free port and prints one table of medians.
pub(crate) struct Args {
    /// shrink every measurement (a smoke run; CI runs this)
    #[argh(switch)]
    pub(crate) quick: bool,
    /// print the rows as JSON
    #[argh(switch)]
    pub(crate) json: bool,
    /// run one measurement: restart, cold, memory, rtt, send, spawn,
    /// dispatcher, throughput or durable
    #[argh(option)]
    pub(crate) only: Option<String>,
    /// how many tasks the round trip measures (default 2000; 50 with
    /// --quick); more gives steadier medians when comparing builds
    #[argh(option)]
    pub(crate) tasks: Option<usize>,
    /// another build's mister-smith binary, whose daemon runs the round
    /// trip in rounds alternating with ours
    #[argh(option)]
    pub(crate) against: Option<PathBuf>,
}

/// A bad argument: one line on stderr and exit 64 (EX_USAGE), as the
/// main binary does.
pub(crate) fn usage_error(msg: &str) -> ! {
    eprintln!("bench: error: {msg} (see bench --help)");
    std::process::exit(64)
}

pub(crate) fn parse_args(args: &[String]) -> Args {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let parsed = match <Args as argh::FromArgs>::from_args(&["bench"], strs.get(1..).unwrap_or(&[]))
    {
        Ok(a) => a,
        Err(early) => match early.status {
            Ok(()) => {
                println!("{}", early.output.trim_end());
                std::process::exit(0)
            }
            Err(()) => usage_error(early.output.lines().next().unwrap_or("bad arguments")),
        },
    };
    if let Some(o) = &parsed.only {
        if !MEASUREMENTS.contains(&o.as_str()) {
            usage_error(&format!(
                "--only {o}: not a measurement (one of {})",
                MEASUREMENTS.join(", ")
            ));
        }
    }
    if parsed.tasks == Some(0) {
        usage_error("--tasks 0: the round trip needs at least one task");
    }
    if let Some(a) = &parsed.against {
        if !a.is_file() {
            usage_error(&format!("--against {}: no such file", a.display()));
        }
    }
    parsed
}

//! Per-task settings: the env knobs, overridden by `[[fake:…]]` directives in the prompt.

use std::time::Duration;

use crate::failures::ResultKind;
use crate::knobs::{parse_cost, CrashMode, Hang, Knobs};

/// Per-task settings: env knobs overridden by `[[fake:…]]` directives in the prompt.
pub(crate) struct TaskCfg {
    pub(crate) turns: u32,
    pub(crate) delay: Duration,
    pub(crate) hang: Option<Hang>,
    pub(crate) crash: Option<CrashMode>,
    pub(crate) stderr_bytes: u64,
    pub(crate) big: u64,
    pub(crate) result: ResultKind,
    pub(crate) retries: u32,
    /// Seconds from the task's start until a usage limit resets (unless `LIMITED_UNTIL` is set).
    pub(crate) reset_in_s: u64,
    /// `total_cost_usd` of a run that reached the model (`None`: the fake's own figure).
    pub(crate) cost: Option<f64>,
    /// `gate=PATH`: the result waits while PATH exists (a test opens the gate by deleting it).
    pub(crate) gate: Option<std::path::PathBuf>,
    /// Faults no sound agent has, for the daemon's robustness tests.
    pub(crate) fault: Fault,
}

/// Misbehaviour on request (`[[fake:NAME]]`), one per task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Fault {
    #[default]
    None,
    /// `nest=N`: a progress event whose tool input is nested N levels deep.
    Nest(u32),
    /// `double_result`: the result line twice.
    DoubleResult,
    /// `close_stdout`: close stdout after `system/init` and stay alive.
    CloseStdout,
    /// `huge_cost`: `total_cost_usd` written as `1e400`, which no f64 holds.
    HugeCost,
    /// `control_text=N`: the result text is N control characters (each
    /// six bytes once JSON-escaped).
    ControlText(u64),
}

/// `[[fake:NAME]]` / `[[fake:NAME=VALUE]]` occurrences, in order.
fn directives(prompt: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("[[fake:") {
        let after = &rest[start + 7..];
        let Some(end) = after.find("]]") else { break };
        let body = after[..end].trim();
        match body.split_once('=') {
            Some((k, v)) => out.push((k.trim().to_ascii_lowercase(), Some(v.trim().to_owned()))),
            None => out.push((body.to_ascii_lowercase(), None)),
        }
        rest = &after[end + 2..];
    }
    out
}

impl TaskCfg {
    pub(crate) fn new(k: &Knobs, prompt: &str) -> TaskCfg {
        let mut cfg = TaskCfg {
            turns: k.turns,
            delay: Duration::from_millis(k.line_delay_ms),
            hang: k
                .hang
                .filter(|h| matches!(h, Hang::BeforeResult | Hang::AfterResult)),
            crash: None,
            stderr_bytes: 0,
            big: k.big_line_bytes,
            result: k.result,
            retries: k.api_retries,
            reset_in_s: k.reset_in_s,
            cost: k.cost,
            gate: None,
            fault: Fault::None,
        };
        for (name, value) in directives(prompt) {
            let v = value.as_deref();
            let num = || v.and_then(|s| s.parse::<u64>().ok());
            match name.as_str() {
                "crash" => cfg.crash = Some(v.and_then(CrashMode::parse).unwrap_or(k.crash_mode)),
                "hang" => {
                    cfg.hang = Some(v.and_then(Hang::parse).unwrap_or(Hang::BeforeResult));
                }
                "delay" => cfg.delay = num().map_or(cfg.delay, Duration::from_millis),
                "turns" => {
                    cfg.turns = num()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(cfg.turns)
                }
                "stderr" => cfg.stderr_bytes = num().unwrap_or(cfg.stderr_bytes),
                "big" => cfg.big = num().unwrap_or(cfg.big),
                "result" => cfg.result = v.and_then(ResultKind::parse).unwrap_or(cfg.result),
                "retries" => {
                    cfg.retries = num()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(cfg.retries)
                }
                "reset_in" => cfg.reset_in_s = num().unwrap_or(cfg.reset_in_s),
                "gate" => cfg.gate = v.map(std::path::PathBuf::from),
                "cost" => cfg.cost = v.and_then(parse_cost).or(cfg.cost),
                "nest" => {
                    cfg.fault =
                        Fault::Nest(num().and_then(|n| u32::try_from(n).ok()).unwrap_or(200))
                }
                "double_result" => cfg.fault = Fault::DoubleResult,
                "close_stdout" => cfg.fault = Fault::CloseStdout,
                "huge_cost" => cfg.fault = Fault::HugeCost,
                "control_text" => cfg.fault = Fault::ControlText(num().unwrap_or(1000)),
                _ => {}
            }
        }
        cfg
    }
}

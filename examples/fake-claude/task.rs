//! Running one task: the event sequence (replay, init, API retries, tool round trips, final
//! text, result), line delays, interrupts, hangs and crashes, in the selected output format.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::Format;
use crate::directives::{Fault, TaskCfg};
use crate::failures::ResultKind;
use crate::json::{api_id, arr, new_uuid, null, obj, J};
use crate::knobs::Hang;
use crate::output::{emit, emit_str, hang_forever, record};
use crate::session::{text_of_result, usage, ResultSpec, Session, Usage};
use crate::session_store::save_session;
use crate::side_effects::stderr_noise;
use crate::signals::{ABORT_TASK, CURRENT_TASK};

/// How a task ended.
pub(crate) struct Outcome {
    /// The result had `is_error`, or the turn failed anyway (`overloaded_midstream`): the real
    /// CLI exits 1 after it.
    pub(crate) failed: bool,
    /// `hang=after_result`: the process must never exit on its own afterwards.
    pub(crate) never_exit: bool,
}

/// Writes one task's lines: applies the line delay, honours interrupts and the output format.
struct TaskWriter {
    n: u64,
    delay: Duration,
    format: Format,
}

impl TaskWriter {
    fn aborted(&self) -> bool {
        ABORT_TASK.load(Ordering::SeqCst) == self.n
    }

    /// Sleeps the line delay in small slices; true if the task was interrupted.
    fn wait(&self) -> bool {
        let deadline = Instant::now() + self.delay;
        loop {
            if self.aborted() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }

    /// Emits an event line (stream-json output only). Returns false if the task was interrupted.
    fn event(&self, j: &J) -> bool {
        if self.wait() {
            return false;
        }
        if self.format == Format::StreamJson {
            emit(j);
        }
        true
    }
}

impl Session {
    /// Runs one task and prints its events according to the output format.
    pub(crate) fn run_task(&mut self, prompt: &str, replay: Option<J>) -> Outcome {
        self.tasks_started += 1;
        let n = self.tasks_started;
        CURRENT_TASK.store(n, Ordering::SeqCst);
        record(obj! {"event": "task_start", "n": n, "prompt": prompt});
        let outcome = self.task_body(n, prompt, replay);
        CURRENT_TASK.store(0, Ordering::SeqCst);
        outcome
    }

    fn task_body(&mut self, n: u64, prompt: &str, replay: Option<J>) -> Outcome {
        let started = Instant::now();
        let mut cfg = TaskCfg::new(&self.knobs, prompt);
        let (kind, resets_at) = self.choose_kind(n, &cfg);
        cfg.result = kind;
        let failure = kind.api_failure(resets_at);
        if cfg.hang == Some(Hang::Forever) || cfg.hang == Some(Hang::Startup) {
            hang_forever();
        }
        if self.knobs.crash_after.is_some_and(|after| n == after + 1) {
            self.crash(n, self.knobs.crash_mode, &self.init_line());
        }
        // "what did I ask?" is answered from the session's earlier turns.
        let asked = self.history.last().cloned();
        self.history.push(prompt.to_owned());
        if let Some(dir) = &self.persist_dir {
            save_session(dir, &self.session_id, &self.cwd, &self.history);
        }

        let w = TaskWriter {
            n,
            delay: cfg.delay,
            format: self.format,
        };
        let final_text = match cfg.fault {
            Fault::ControlText(n) => "\u{1}".repeat(usize::try_from(n).unwrap_or(0)),
            _ if prompt.to_lowercase().contains("what did i ask") => match asked {
                Some(p) => format!("you asked: {p}"),
                None => "you asked nothing before".to_owned(),
            },
            _ => format!("done: {prompt}"),
        };
        let mut calls: u32 = 0;
        let mut crash_pending = cfg.crash;
        let mut retries_pending = true;

        // Everything before the result line; `Err(())` = interrupted.
        let body = (|| -> Result<(), ()> {
            let ok = |b: bool| if b { Ok(()) } else { Err(()) };
            if let Some(r) = &replay {
                ok(w.event(r))?;
            }
            ok(w.event(&self.init_line()))?;
            if cfg.fault == Fault::CloseStdout {
                crate::output::close_stdout_and_hang();
            }
            if let Fault::Nest(depth) = cfg.fault {
                let mut input = obj! {"leaf": true};
                for _ in 0..depth {
                    input = obj! {"a": input};
                }
                let tool_use = obj! {
                    "type": "tool_use",
                    "id": api_id("toolu"),
                    "name": "Deep",
                    "input": input,
                };
                ok(w.event(&self.tool_use_line(&self.model, tool_use)))?;
            }
            if cfg.stderr_bytes > 0 {
                stderr_noise(cfg.stderr_bytes);
            }
            let mut retries = |w: &TaskWriter| -> Result<(), ()> {
                if std::mem::take(&mut retries_pending) {
                    for attempt in 1..=cfg.retries {
                        let delay = (500u64 << (attempt - 1).min(6)).min(32_000);
                        ok(w.event(&obj! {
                            "type": "system",
                            "subtype": "api_retry",
                            "attempt": attempt,
                            "max_retries": 10,
                            "retry_delay_ms": delay,
                            "error_status": 529,
                            "error": "overloaded",
                            "session_id": self.session_id.as_str(),
                            "uuid": new_uuid(),
                        }))?;
                    }
                }
                Ok(())
            };

            if let Some(f) = &failure {
                retries(&w)?;
                if let Some(at) = f.rate_limit_event {
                    ok(w.event(&self.rate_limit_event_line(at)))?;
                }
                ok(w.event(&self.synthetic_line(f)))?;
                calls = 1;
                if let Some(mode) = crash_pending.take() {
                    self.crash(n, mode, &self.init_line());
                }
                return Ok(());
            }

            // Tool round trips actually printed: `--max-turns` cuts them short.
            let rounds = self.max_turns.map_or(cfg.turns, |cap| cfg.turns.min(cap));
            for i in 1..=rounds {
                retries(&w)?;
                let tool_id = api_id("toolu");
                let tool_use = obj! {
                    "type": "tool_use",
                    "id": tool_id.as_str(),
                    "name": "Bash",
                    "input": obj! {"command": "true", "description": format!("fake step {i}")},
                };
                calls += 1;
                ok(w.event(&self.tool_use_line(&self.model, tool_use)))?;
                let content = if i == 1 && cfg.big > 0 {
                    "x".repeat(usize::try_from(cfg.big).unwrap_or(usize::MAX))
                } else {
                    String::new()
                };
                let tool_result = obj! {
                    "type": "user",
                    "message": obj! {
                        "role": "user",
                        "content": arr![obj! {
                            "type": "tool_result",
                            "tool_use_id": tool_id.as_str(),
                            "content": content,
                            "is_error": false,
                        }],
                    },
                    "parent_tool_use_id": null(),
                    "session_id": self.session_id.as_str(),
                    "uuid": new_uuid(),
                };
                if let Some(mode) = crash_pending.take() {
                    self.crash(n, mode, &tool_result);
                }
                ok(w.event(&tool_result))?;
            }
            let capped = self.max_turns.is_some_and(|cap| cfg.turns + 1 > cap);
            if cfg.result == ResultKind::Success && !capped {
                retries(&w)?;
                if self.include_partial {
                    ok(w.event(&self.partial_line(&final_text)))?;
                }
                calls += 1;
                let line = self.assistant_line(
                    &self.model,
                    arr![obj! {"type": "text", "text": final_text.as_str()}],
                    "end_turn",
                    usage(1, prompt.len()).to_j(),
                );
                ok(w.event(&line))?;
                if let Some(mode) = crash_pending.take() {
                    self.crash(n, mode, &self.init_line());
                }
            }
            Ok(())
        })();

        let cost = Some(cfg.cost.unwrap_or(f64::from(calls.max(1) * 12) / 10_000.0));
        let used = usage(calls, prompt.len());
        let failed_run = |subtype, is_error, error: &str, terminal_reason| ResultSpec {
            subtype,
            is_error,
            num_turns: calls,
            text: Err(vec![error.to_owned()]),
            api_error_status: None,
            stop_reason: None,
            terminal_reason,
            usage: used,
            cost,
        };
        let capped_at = match (cfg.result, self.max_turns) {
            (_, Some(cap)) if cfg.turns + 1 > cap => Some(cap),
            (ResultKind::MaxTurns, cap) => Some(cap.unwrap_or(cfg.turns).min(cfg.turns)),
            _ => None,
        };
        let spec = match (&body, &failure, capped_at, cfg.result) {
            (Err(()), ..) => failed_run(
                "error_during_execution",
                true,
                "Interrupted by user",
                "aborted_streaming",
            ),
            (Ok(()), Some(f), ..) => ResultSpec {
                subtype: "success",
                is_error: true,
                num_turns: 1,
                text: Ok(f.text.clone()),
                api_error_status: f.status,
                stop_reason: Some("stop_sequence"),
                terminal_reason: f.terminal_reason,
                usage: Usage::default(),
                cost: None,
            },
            (Ok(()), None, Some(cap), _) => ResultSpec {
                num_turns: cap + 1,
                stop_reason: Some("tool_use"),
                ..failed_run(
                    "error_max_turns",
                    true,
                    &format!("Reached maximum number of turns ({cap})"),
                    "max_turns",
                )
            },
            (Ok(()), None, None, ResultKind::DuringExecution) => failed_run(
                "error_during_execution",
                true,
                "fake-claude: simulated error during execution",
                "model_error",
            ),
            (Ok(()), None, None, ResultKind::OverloadedMidstream) => failed_run(
                "error_during_execution",
                false,
                "API error: Overloaded",
                "model_error",
            ),
            (Ok(()), None, None, ResultKind::MaxBudget) => failed_run(
                "error_max_budget_usd",
                true,
                "Reached maximum budget ($0.01)",
                "completed",
            ),
            (Ok(()), None, None, _) => ResultSpec {
                subtype: "success",
                is_error: false,
                num_turns: calls,
                text: Ok(final_text.clone()),
                api_error_status: None,
                stop_reason: Some("end_turn"),
                terminal_reason: "completed",
                usage: used,
                cost,
            },
        };
        let (is_error, subtype) = (spec.is_error, spec.subtype);
        // An `error_*` result is a failed turn even without `is_error` (`overloaded_midstream`).
        let failed = is_error || subtype != "success";
        let result = self.result_line(started, spec);

        if body.is_ok() {
            if cfg.hang == Some(Hang::BeforeResult) {
                hang_forever();
            }
            if let Some(gate) = &cfg.gate {
                // Interrupts are honoured here as during line delays.
                while gate.exists() && !w.aborted() {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            // The result line gets the line delay too (an interrupt here is too late to matter).
            let _ = w.wait();
        }
        match self.format {
            Format::StreamJson | Format::Json if cfg.fault == Fault::HugeCost => {
                let line = crate::json::to_line(&result);
                emit_str(&replace_number(&line, "total_cost_usd", "1e400"));
            }
            Format::StreamJson | Format::Json if cfg.fault == Fault::DoubleResult => {
                emit(&result);
                // Late enough that the supervisor has handed over the next
                // task, which must not take this for its answer.
                thread::sleep(Duration::from_millis(300));
                emit(&result);
            }
            Format::StreamJson | Format::Json => emit(&result),
            Format::Text => {
                let text = match &result {
                    J::Obj(fields) => text_of_result(fields),
                    _ => String::new(),
                };
                emit_str(&text);
            }
        }
        record(obj! {
            "event": "result",
            "n": n,
            "is_error": is_error,
            "subtype": subtype,
            "kind": kind.name(),
        });
        Outcome {
            failed,
            never_exit: cfg.hang == Some(Hang::AfterResult),
        }
    }
}

/// `line` with the number after `"key":` replaced by `with` verbatim.
fn replace_number(line: &str, key: &str, with: &str) -> String {
    let needle = format!("\"{key}\":");
    let Some(at) = line.find(&needle) else {
        return line.to_owned();
    };
    let start = at + needle.len();
    let end = line[start..]
        .find([',', '}'])
        .map_or(line.len(), |i| start + i);
    format!("{}{with}{}", &line[..start], &line[end..])
}

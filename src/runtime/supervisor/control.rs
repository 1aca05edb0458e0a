//! The control commands on one agent: `start`, `stop`, `restart`, `pause`
//! and `resume`.

use super::agent::{Reason, Takedown};
use super::timers::Timer;
use super::Supervisor;
use crate::message::router::AgentIx;
use crate::message::schemas::{AgentState, CommandType, ReasonCode};

impl Supervisor {
    /// A control command on agent `i`.
    pub(super) fn control(&mut self, i: AgentIx, op: CommandType) -> Result<(), String> {
        let state = self.agents[i.0].state;
        let id = self.agents[i.0].spec.id.clone();
        match op {
            CommandType::Start => match state {
                AgentState::Terminated | AgentState::Error => {
                    self.timers.cancel(|t| *t == Timer::Restart(i));
                    self.agents[i.0].book.reset();
                    if state == AgentState::Error && self.agents[i.0].child.is_none() {
                        self.set_state(i, AgentState::Terminated);
                    }
                    self.start(i);
                    // A spawn that failed at once is known now: say so
                    // rather than "started".
                    let a = &self.agents[i.0];
                    match a.state {
                        AgentState::Terminated | AgentState::Error => Err(format!(
                            "agent {id} did not start: {}",
                            a.reason.as_ref().map_or("it exited at once", |r| &r.text)
                        )),
                        _ => Ok(()),
                    }
                }
                AgentState::Stopping => Err(format!(
                    "agent {id} is stopping; start it once it is terminated"
                )),
                _ => Ok(()),
            },
            CommandType::Stop => {
                self.agents[i.0].reason = Some(Reason::of(ReasonCode::StoppedByOperator));
                self.stop(i, Takedown::Stop);
                Ok(())
            }
            CommandType::Restart => {
                self.agents[i.0].reason = None;
                self.stop(i, Takedown::Restart);
                Ok(())
            }
            CommandType::Pause => match state {
                AgentState::Paused => Ok(()),
                AgentState::Idle | AgentState::Busy if self.agents[i.0].child.is_some() => {
                    self.signal(i, libc::SIGSTOP);
                    self.agents[i.0].paused_from = Some(state);
                    self.set_state(i, AgentState::Paused);
                    Ok(())
                }
                s => Err(format!(
                    "agent {id} is in state {s}{}: nothing to pause",
                    if s == AgentState::Idle {
                        " with no process"
                    } else {
                        ""
                    }
                )),
            },
            CommandType::Resume => match state {
                AgentState::Paused => {
                    let now = self.now();
                    let a = &mut self.agents[i.0];
                    let to = a.paused_from.take().unwrap_or(AgentState::Idle);
                    // Time spent stopped is not silence.
                    a.last_output = now;
                    self.signal(i, libc::SIGCONT);
                    self.set_state(i, to);
                    if to == AgentState::Busy {
                        self.arm_watchdog(i);
                    }
                    Ok(())
                }
                AgentState::Idle | AgentState::Busy => Ok(()),
                s => Err(format!("agent {id} is in state {s}, not paused")),
            },
            CommandType::Execute | CommandType::Shutdown => {
                Err(format!("{} is handled before the supervisor", op.as_str()))
            }
        }
    }
}

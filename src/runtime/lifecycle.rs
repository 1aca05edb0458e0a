//! The agent lifecycle of DESIGN.md §4 as a small state machine.
//!
//! The legal transitions live in one function, [`State::can_become`], so the
//! whole machine can be read (and tested) in one place. The supervisor asks it
//! before every change; an illegal request is logged and ignored, never
//! panicked on.

use std::fmt;

/// An agent's state. The names are a contract: lowercase on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Spawned, waiting for the `initialize` handshake.
    Initializing,
    /// Ready for a task.
    Idle,
    /// Running a task.
    Busy,
    /// Stopped with SIGSTOP; resumes into the state it was paused from.
    Paused,
    /// Asked to stop: stdin closed, SIGTERM, then SIGKILL.
    Stopping,
    /// Not running and not coming back unless started by hand.
    Terminated,
    /// Exited or failed unexpectedly; restarted by policy or terminated.
    Error,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Initializing,
        State::Idle,
        State::Busy,
        State::Paused,
        State::Stopping,
        State::Terminated,
        State::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Initializing => "initializing",
            State::Idle => "idle",
            State::Busy => "busy",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Terminated => "terminated",
            State::Error => "error",
        }
    }

    /// Whether `self → to` is a legal transition.
    pub fn can_become(self, to: State) -> bool {
        use State::*;
        match (self, to) {
            (Initializing, Idle) => true,
            (Idle, Busy) | (Busy, Idle) => true,
            (Idle | Busy, Paused) | (Paused, Idle | Busy) => true,
            // Any live state can be asked to stop; a stop finishes in
            // `terminated`.
            (Initializing | Idle | Busy | Paused | Error, Stopping) => true,
            (Stopping, Terminated) => true,
            // Anything can fail, except an agent that is already down.
            (Initializing | Idle | Busy | Paused | Stopping, Error) => true,
            // From `error` the policy restarts it or gives up.
            (Error, Initializing | Terminated) => true,
            // A terminated agent can be started again by hand.
            (Terminated, Initializing) => true,
            _ => false,
        }
    }

    /// Whether an agent in this state has (or should have) a live process.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            State::Initializing | State::Idle | State::Busy | State::Paused
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition that the machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition {from} -> {to}")]
pub struct IllegalTransition {
    pub from: State,
    pub to: State,
}

/// Moves `state` to `to` when legal.
pub fn transition(state: &mut State, to: State) -> Result<State, IllegalTransition> {
    if state.can_become(to) {
        let from = *state;
        *state = to;
        Ok(from)
    } else {
        Err(IllegalTransition { from: *state, to })
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    #[test]
    fn the_documented_paths_are_legal() {
        let paths: &[&[State]] = &[
            &[Initializing, Idle, Busy, Idle, Busy, Idle],
            &[Idle, Paused, Idle],
            &[Busy, Paused, Busy],
            &[Busy, Stopping, Terminated, Initializing, Idle],
            &[Initializing, Error, Initializing],
            &[Busy, Error, Terminated],
            &[Paused, Stopping, Error, Initializing],
            &[Error, Stopping, Terminated],
        ];
        for path in paths {
            let mut s = path[0];
            for &next in &path[1..] {
                transition(&mut s, next).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            }
        }
    }

    #[test]
    fn everything_else_is_refused() {
        let legal = [
            (Initializing, Idle),
            (Idle, Busy),
            (Busy, Idle),
            (Idle, Paused),
            (Busy, Paused),
            (Paused, Idle),
            (Paused, Busy),
            (Initializing, Stopping),
            (Idle, Stopping),
            (Busy, Stopping),
            (Paused, Stopping),
            (Error, Stopping),
            (Stopping, Terminated),
            (Initializing, Error),
            (Idle, Error),
            (Busy, Error),
            (Paused, Error),
            (Stopping, Error),
            (Error, Initializing),
            (Error, Terminated),
            (Terminated, Initializing),
        ];
        for from in State::ALL {
            for to in State::ALL {
                assert_eq!(
                    from.can_become(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn a_refused_transition_leaves_the_state_alone() {
        let mut s = Terminated;
        let err = transition(&mut s, Busy).unwrap_err();
        assert_eq!(s, Terminated);
        assert_eq!(err.to_string(), "illegal transition terminated -> busy");
    }

    #[test]
    fn names_are_lowercase_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&Initializing).unwrap(),
            "\"initializing\""
        );
        for s in State::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}

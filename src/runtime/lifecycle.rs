//! The agent lifecycle as a small state machine over [`AgentState`].
//!
//! The legal transitions live in one function, [`can_become`], so the whole
//! machine can be read (and tested) in one place. The supervisor asks it
//! before every change; an illegal request is logged and ignored, never
//! panicked on.

pub(crate) use crate::message::schemas::AgentState;

/// Whether `from → to` is a legal transition.
pub(crate) fn can_become(from: AgentState, to: AgentState) -> bool {
    use AgentState::*;
    match (from, to) {
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

/// A transition that the machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition {from} -> {to}")]
pub(crate) struct IllegalTransition {
    pub from: AgentState,
    pub to: AgentState,
}

/// Moves `state` to `to` when legal.
pub(crate) fn transition(
    state: &mut AgentState,
    to: AgentState,
) -> Result<AgentState, IllegalTransition> {
    if can_become(*state, to) {
        let from = *state;
        *state = to;
        Ok(from)
    } else {
        Err(IllegalTransition { from: *state, to })
    }
}

#[cfg(test)]
mod tests {
    use super::AgentState::*;
    use super::*;

    #[test]
    fn the_documented_paths_are_legal() {
        let paths: &[&[AgentState]] = &[
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
        for from in AgentState::ALL {
            for to in AgentState::ALL {
                assert_eq!(
                    can_become(from, to),
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
        for s in AgentState::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}

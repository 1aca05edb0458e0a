//! Durable mode's pull: how many tasks the daemon asks each consumer of the
//! stream for.
//!
//! A daemon holds only what it can start soon: for each agent's own
//! consumer, a task for the agent if it is idle and one more to follow it;
//! for a type's `any` consumer, a task for each idle agent of the type and
//! one more per agent of the type. What waits beyond that waits in the
//! stream, where another daemon can take it, and where it survives this
//! daemon. Priority is exact within what a daemon holds (its queue orders
//! it); the stream itself is first-in first-out.

/// Which consumer feeds which target.
#[derive(Debug, Clone, Default)]
pub struct Consumers {
    /// The consumer of each agent's own tasks, by agent index (`None` for
    /// an agent that takes no tasks).
    pub agent: Vec<Option<usize>>,
    /// The consumer of each type's `any` tasks.
    pub types: Vec<(String, usize)>,
    /// How many consumers there are.
    pub count: usize,
}

/// What the dispatcher wants from each consumer now, and how many tasks it
/// has received from each so far (so that tasks on their way to it are not
/// asked for twice).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Demand {
    pub wanted: Vec<i64>,
    pub received: Vec<u64>,
}

/// What the dispatcher knows of one agent, for [`wanted`].
#[derive(Debug, Clone, Copy)]
pub struct AgentView {
    /// Idle and lent to the dispatcher.
    pub idle: bool,
    /// Terminated: it takes nothing.
    pub down: bool,
    /// Tasks queued for it alone.
    pub queued: usize,
}

/// The tasks wanted from each consumer: `agents[i]` is agent `i`'s view,
/// `type_of[i]` its type's position in `c.types`, `type_queued[t]` the
/// tasks queued for type `t`.
pub fn wanted(
    c: &Consumers,
    agents: &[AgentView],
    type_of: &[Option<usize>],
    type_queued: &[usize],
) -> Vec<i64> {
    let mut out = vec![0i64; c.count];
    let mut idle = vec![0i64; c.types.len()];
    let mut up = vec![0i64; c.types.len()];
    for (i, a) in agents.iter().enumerate() {
        if a.down {
            continue;
        }
        if let Some(Some(k)) = c.agent.get(i) {
            out[*k] = i64::from(a.idle) + 1 - a.queued as i64;
        }
        if let Some(Some(t)) = type_of.get(i) {
            idle[*t] += i64::from(a.idle);
            up[*t] += 1;
        }
    }
    for (t, (_, k)) in c.types.iter().enumerate() {
        if up[t] > 0 {
            out[*k] = idle[t] + up[t] - type_queued.get(t).copied().unwrap_or(0) as i64;
        }
    }
    for w in &mut out {
        *w = (*w).max(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(idle: bool, down: bool, queued: usize) -> AgentView {
        AgentView { idle, down, queued }
    }

    #[test]
    fn an_idle_agent_wants_its_task_and_one_more() {
        let c = Consumers {
            agent: vec![Some(0), Some(1)],
            types: vec![("claude".into(), 2)],
            count: 3,
        };
        let types = [Some(0), Some(0)];
        // Both idle: each wants 2 of its own; the type wants 2 idle + 2.
        let w = wanted(
            &c,
            &[view(true, false, 0), view(true, false, 0)],
            &types,
            &[0],
        );
        assert_eq!(w, vec![2, 2, 4]);
        // One busy with a task queued behind it, the other down.
        let w = wanted(
            &c,
            &[view(false, false, 1), view(true, true, 0)],
            &types,
            &[1],
        );
        assert_eq!(w, vec![0, 0, 0]);
        // All down: nothing.
        let w = wanted(
            &c,
            &[view(true, true, 0), view(true, true, 0)],
            &types,
            &[0],
        );
        assert_eq!(w, vec![0, 0, 0]);
    }

    #[test]
    fn what_is_queued_counts_against_the_want() {
        let c = Consumers {
            agent: vec![Some(0)],
            types: vec![("claude".into(), 1)],
            count: 2,
        };
        let w = wanted(&c, &[view(false, false, 0)], &[Some(0)], &[5]);
        assert_eq!(w, vec![1, 0]);
    }
}

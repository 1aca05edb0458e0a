//! `dispatcher`: the library's dispatcher queue in process, push and pop
//! through a standing queue, with one agent and with eight.

use std::time::{Duration, Instant};

use mister_smith::message::dispatcher::{Queue, Target, Task};
use mister_smith::message::router::{AgentIx, Origin};

use crate::table::Row;

pub(crate) fn dispatcher(n: usize) -> Vec<Row> {
    let now = Instant::now();
    let template = Task {
        task_id: String::new(),
        prompt: String::new(),
        context: None,
        priority: 5,
        timeout: Duration::from_secs(3600),
        deadline: now + Duration::from_secs(3600),
        target: Target::Agent(AgentIx(0)),
        origin: Origin::default(),
        submitted: now,
        seq: 0,
        attempts: 0,
        retries: 0,
        receipt: None,
        session: None,
    };
    let priorities = [5u8, 1, 10, 3, 7];
    // Steady state: a standing queue of 10,000 tasks, then one push and one
    // pop per envelope, priorities mixed, so the heaps do real work.
    let standing = 10_000;
    let run = |agents: usize| -> f64 {
        let mut q = Queue::new(standing + 16);
        let make = |i: usize| {
            let mut t = template.clone();
            t.priority = priorities[i % priorities.len()];
            t.target = if agents == 1 || i % 2 == 0 {
                Target::Agent(AgentIx(i % agents))
            } else {
                Target::Type("claude".into())
            };
            t
        };
        for i in 0..standing {
            let _ = q.push(make(i));
        }
        let t = Instant::now();
        let mut agent = 0;
        for i in 0..n {
            let _ = q.push(make(i));
            while q.pop_for(AgentIx(agent), "claude").is_none() {
                agent = (agent + 1) % agents;
            }
            agent = (agent + 1) % agents;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let one = run(1);
    let eight = run(8);
    vec![
        Row {
            name: "dispatcher queue, push + pop in order",
            unit: "/s",
            ours: one,
            ours_p99: None,
            floor: None,
            note: format!("{n} envelopes through a standing queue of {standing}, priorities 1/3/5/7/10, one agent"),
        },
        Row {
            name: "dispatcher queue, 8 agents",
            unit: "/s",
            ours: eight,
            ours_p99: None,
            floor: None,
            note: format!("{n} envelopes, half to one agent, half to any of the type, 8 agents popping in turn"),
        },
    ]
}

//! The queue's order, its limits and deadlines, and the dispatcher's
//! answers to each command, without threads.

use super::*;
use std::sync::Mutex;
use uuid::Uuid;

use crate::message::router::Origin;

fn task(id: &str, priority: u8, target: Target) -> Task {
    let now = Instant::now();
    Task {
        task_id: id.into(),
        prompt: "p".into(),
        context: None,
        priority,
        timeout: Duration::from_secs(60),
        deadline: now + Duration::from_secs(60),
        target,
        origin: Origin::default(),
        submitted: now,
        seq: 0,
        attempts: 0,
        retries: 0,
        receipt: None,
        session: None,
    }
}

#[test]
fn priority_first_then_arrival_order() {
    let mut q = Queue::new(100);
    for (id, p) in [
        ("a5", 5),
        ("b1", 1),
        ("c5", 5),
        ("d10", 10),
        ("e1", 1),
        ("f5", 5),
    ] {
        q.push(task(id, p, Target::Agent(AgentIx(0)))).unwrap();
    }
    let order: Vec<String> =
        std::iter::from_fn(|| q.pop_for(AgentIx(0), "claude").map(|t| t.task_id)).collect();
    assert_eq!(order, ["b1", "e1", "a5", "c5", "f5", "d10"]);
}

#[test]
fn an_agent_takes_the_better_of_its_own_and_its_types_heads() {
    let mut q = Queue::new(100);
    q.push(task("own5", 5, Target::Agent(AgentIx(0)))).unwrap();
    q.push(task("any5", 5, Target::Type("claude".into())))
        .unwrap();
    q.push(task("any2", 2, Target::Type("claude".into())))
        .unwrap();
    q.push(task("other", 1, Target::Agent(AgentIx(1)))).unwrap();
    q.push(task("shell", 1, Target::Type("shell".into())))
        .unwrap();
    let order: Vec<String> =
        std::iter::from_fn(|| q.pop_for(AgentIx(0), "claude").map(|t| t.task_id)).collect();
    assert_eq!(order, ["any2", "own5", "any5"]);
    assert_eq!(q.len(), 2);
}

#[test]
fn a_full_queue_refuses_and_requeues_keep_their_place() {
    let mut q = Queue::new(2);
    q.push(task("a", 5, Target::Agent(AgentIx(0)))).unwrap();
    q.push(task("b", 5, Target::Agent(AgentIx(0)))).unwrap();
    let (t, why) = q.push(task("c", 5, Target::Agent(AgentIx(0)))).unwrap_err();
    assert_eq!(
        (t.task_id.as_str(), why),
        ("c", Refusal::Full { capacity: 2 })
    );
    let a = q.pop_for(AgentIx(0), "x").unwrap();
    q.requeue(a);
    assert_eq!(q.pop_for(AgentIx(0), "x").unwrap().task_id, "a");
}

#[test]
fn expired_tasks_leave_and_are_skipped() {
    let mut q = Queue::new(10);
    let mut soon = task("soon", 1, Target::Agent(AgentIx(0)));
    soon.deadline = Instant::now();
    q.push(soon).unwrap();
    q.push(task("later", 5, Target::Agent(AgentIx(0)))).unwrap();
    let gone: Vec<_> = q
        .expire(Instant::now())
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(gone, ["soon"]);
    assert_eq!(q.pop_for(AgentIx(0), "x").unwrap().task_id, "later");
    assert!(q.pop_for(AgentIx(0), "x").is_none());
    assert!(q.is_empty());
}

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl DispatchSink for Log {
    fn assign(&self, agent: AgentIx, task: Task) {
        self.0
            .lock()
            .unwrap()
            .push(format!("assign {} {}", agent.0, task.task_id));
    }
    fn accepted(&self, task: &Task, position: usize) {
        self.0
            .lock()
            .unwrap()
            .push(format!("accepted {} {position}", task.task_id));
    }
    fn refused(&self, task: &Task, why: Refusal) {
        self.0
            .lock()
            .unwrap()
            .push(format!("refused {} {why:?}", task.task_id));
    }
    fn expired(&self, task: &Task) {
        self.0
            .lock()
            .unwrap()
            .push(format!("expired {}", task.task_id));
    }
    fn cancelled(&self, task: &Task, why: Cancel) {
        let why = match why {
            Cancel::Shutdown => String::new(),
            Cancel::AgentDown { why } => format!(" ({why})"),
        };
        self.0
            .lock()
            .unwrap()
            .push(format!("cancelled {}{why}", task.task_id));
    }
    fn closed(&self) {
        self.0.lock().unwrap().push("closed".into());
    }
}

#[test]
fn the_dispatcher_hands_tasks_to_idle_agents() {
    let log = Log::default();
    let types = vec!["claude".to_string(), "claude".to_string()];
    let mut d = Dispatcher::new(1, types);
    let cmds = [
        DispatchCmd::Ready(AgentIx(1)),
        DispatchCmd::Submit(vec![task("t1", 5, Target::Type("claude".into()))]),
        DispatchCmd::Submit(vec![task("t2", 5, Target::Agent(AgentIx(0)))]),
        DispatchCmd::Submit(vec![task("t3", 5, Target::Agent(AgentIx(0)))]),
        DispatchCmd::Ready(AgentIx(0)),
        DispatchCmd::Submit(vec![task("t4", 5, Target::Agent(AgentIx(1)))]),
        DispatchCmd::Shutdown,
        DispatchCmd::Submit(vec![task("t5", 5, Target::Agent(AgentIx(1)))]),
    ];
    for cmd in cmds {
        d.handle(cmd, &log);
    }
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "accepted t1 0",
            "assign 1 t1",
            "accepted t2 1",
            "refused t3 Full { capacity: 1 }",
            "assign 0 t2",
            "accepted t4 1",
            "cancelled t4",
            "closed",
            "refused t5 ShuttingDown",
        ]
    );
    assert_eq!(d.queued(), 0);
}

/// `--to all`: every task of the request is acknowledged before the
/// first is handed over, so no result can overtake an acknowledgement.
#[test]
fn a_request_for_several_agents_is_acknowledged_before_it_starts() {
    let log = Log::default();
    let types = vec!["claude".to_string(), "claude".to_string()];
    let mut d = Dispatcher::new(10, types);
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    d.handle(DispatchCmd::Ready(AgentIx(1)), &log);
    d.handle(
        DispatchCmd::Submit(vec![
            task("a", 5, Target::Agent(AgentIx(0))),
            task("b", 5, Target::Agent(AgentIx(1))),
        ]),
        &log,
    );
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        ["accepted a 0", "accepted b 0", "assign 0 a", "assign 1 b"]
    );
}

#[test]
fn a_terminated_agent_takes_no_tasks_and_its_queued_ones_are_cancelled() {
    let log = Log::default();
    let types = vec!["claude".to_string(), "claude".to_string()];
    let mut d = Dispatcher::new(10, types);
    let cmds = [
        DispatchCmd::Submit(vec![task("q0", 5, Target::Agent(AgentIx(0)))]),
        DispatchCmd::Submit(vec![task("any", 5, Target::Type("claude".into()))]),
        DispatchCmd::Down(AgentIx(0), "stopped by an operator".into()),
        DispatchCmd::Submit(vec![task("new0", 5, Target::Agent(AgentIx(0)))]),
        // One agent of the type is left: typed tasks still wait.
        DispatchCmd::Submit(vec![task("any2", 5, Target::Type("claude".into()))]),
        DispatchCmd::Down(AgentIx(1), "restart budget spent".into()),
        DispatchCmd::Submit(vec![task("any3", 5, Target::Type("claude".into()))]),
        DispatchCmd::Up(AgentIx(0)),
        DispatchCmd::Submit(vec![task("back", 5, Target::Agent(AgentIx(0)))]),
    ];
    for cmd in cmds {
        d.handle(cmd, &log);
    }
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "accepted q0 1",
            "accepted any 2",
            "cancelled q0 (stopped by an operator)",
            "refused new0 AgentDown { why: \"stopped by an operator\" }",
            "accepted any2 2",
            "cancelled any (every agent of type claude is terminated (the last: restart budget spent))",
            "cancelled any2 (every agent of type claude is terminated (the last: restart budget spent))",
            "refused any3 AgentDown { why: \"every agent of type claude is terminated (the last: restart budget spent)\" }",
            "accepted back 1",
        ]
    );
}

#[test]
fn queued_tasks_expire_at_their_deadline() {
    let log = Log::default();
    let mut d = Dispatcher::new(10, vec!["claude".to_string()]);
    let mut soon = task("soon", 5, Target::Agent(AgentIx(0)));
    let t0 = soon.submitted;
    soon.deadline = t0 + Duration::from_millis(10);
    d.handle(DispatchCmd::Submit(vec![soon]), &log);
    assert_eq!(d.next_deadline(), Some(t0 + Duration::from_millis(10)));
    d.expire(t0 + Duration::from_millis(9), &log);
    d.expire(t0 + Duration::from_millis(10), &log);
    assert_eq!(d.next_deadline(), None);
    let got = log.0.lock().unwrap().clone();
    assert_eq!(got, ["accepted soon 1", "expired soon"]);
}

#[test]
fn the_same_request_twice_within_the_window_runs_once() {
    let log = Log::default();
    let mut d = Dispatcher::new(1, vec!["claude".to_string()]);
    let id = Uuid::new_v4();
    let sent = |name: &str, reply: &str, after_s: u64| {
        let mut t = task(name, 5, Target::Agent(AgentIx(0)));
        t.origin.message_id = Some(id);
        t.origin.reply_to = Some(reply.into());
        t.submitted += Duration::from_secs(after_s);
        t
    };
    d.handle(DispatchCmd::Submit(vec![sent("first", "r1", 0)]), &log);
    d.handle(DispatchCmd::Submit(vec![sent("replay", "r1", 1)]), &log);
    d.handle(DispatchCmd::Submit(vec![sent("other", "r2", 2)]), &log);
    // Past the window, the id is new again (the queue of one is full).
    d.handle(DispatchCmd::Submit(vec![sent("later", "r3", 121)]), &log);
    // A request refused for a full queue is not remembered: sent again.
    d.handle(DispatchCmd::Submit(vec![sent("again", "r3", 122)]), &log);
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "accepted first 1",
            "refused replay Duplicate { same_sender: true }",
            "refused other Duplicate { same_sender: false }",
            "refused later Full { capacity: 1 }",
            "refused again Full { capacity: 1 }",
        ]
    );
}

fn of_session(id: &str, session: &str) -> Task {
    let mut t = task(id, 5, Target::Type("claude".into()));
    t.session = Some(session.into());
    t
}

/// Two tasks of one claude session never run at once: the second waits,
/// keeping its place, while others pass it; once the first is answered it
/// goes to an idle agent.
#[test]
fn a_task_waits_while_another_of_its_session_runs() {
    let log = Log::default();
    let mut d = Dispatcher::new(10, vec!["claude".into(), "claude".into()]);
    let cmds = [
        DispatchCmd::Ready(AgentIx(0)),
        DispatchCmd::Ready(AgentIx(1)),
        DispatchCmd::Submit(vec![of_session("s1", "X")]),
        DispatchCmd::Submit(vec![of_session("s2", "X")]),
        DispatchCmd::Submit(vec![task("t3", 5, Target::Type("claude".into()))]),
        // Agent 1 is done with t3: s2 is still held back.
        DispatchCmd::Ready(AgentIx(1)),
        // A release of a task that is not the one running changes nothing.
        DispatchCmd::Release(99),
        DispatchCmd::Release(1),
    ];
    for cmd in cmds {
        d.handle(cmd, &log);
    }
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "accepted s1 0",
            "assign 0 s1",
            "accepted s2 1",
            "accepted t3 0",
            "assign 1 t3",
            "assign 1 s2",
        ]
    );
    assert_eq!(d.queued(), 0);
}

/// A session's task goes to the idle agent whose process is in that
/// session, not to the first idle one.
#[test]
fn a_session_task_goes_to_the_agent_holding_the_session() {
    let log = Log::default();
    let mut d = Dispatcher::new(10, vec!["claude".into(), "claude".into()]);
    d.handle(DispatchCmd::Holds(AgentIx(1), Some("X".into())), &log);
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    d.handle(DispatchCmd::Ready(AgentIx(1)), &log);
    d.handle(DispatchCmd::Submit(vec![of_session("s1", "X")]), &log);
    d.handle(
        DispatchCmd::Submit(vec![task("t2", 5, Target::Type("claude".into()))]),
        &log,
    );
    // Agent 1 left the session: the next one of X goes to anyone idle.
    d.handle(DispatchCmd::Holds(AgentIx(1), None), &log);
    d.handle(DispatchCmd::Release(1), &log);
    d.handle(DispatchCmd::Ready(AgentIx(1)), &log);
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    d.handle(DispatchCmd::Submit(vec![of_session("s3", "X")]), &log);
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "accepted s1 0",
            "assign 1 s1",
            "accepted t2 0",
            "assign 0 t2",
            "accepted s3 0",
            "assign 1 s3",
        ]
    );
}

/// A held task keeps its deadline; a task handed back (its agent could not
/// take it) frees its session.
#[test]
fn a_held_task_still_times_out_and_a_requeue_frees_its_session() {
    let log = Log::default();
    let mut d = Dispatcher::new(10, vec!["claude".into()]);
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    d.handle(DispatchCmd::Submit(vec![of_session("s1", "X")]), &log);
    let mut short = of_session("s2", "X");
    short.deadline = Instant::now();
    d.handle(
        DispatchCmd::Submit(vec![short, of_session("s3", "X")]),
        &log,
    );
    d.expire(Instant::now(), &log);
    // s1 comes back: its agent was paused meanwhile, say.
    let mut back = of_session("s1", "X");
    back.seq = 1;
    d.handle(DispatchCmd::Requeue(Box::new(back)), &log);
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    // s3 waits for s1's answer, even with the agent idle (s1 may be
    // waiting out a retry).
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    d.handle(DispatchCmd::Release(1), &log);
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "accepted s1 0",
            "assign 0 s1",
            "accepted s2 1",
            "accepted s3 2",
            "expired s2",
            "assign 0 s1",
            "assign 0 s3",
        ]
    );
}

/// A task that names no session but runs in the process holding one is a
/// task of that session too; so is a session a busy process moves to (a
/// resume's fork, learnt from its first turn).
#[test]
fn a_plain_task_on_the_holder_and_a_forked_session_hold_their_sessions() {
    let log = Log::default();
    let mut d = Dispatcher::new(10, vec!["claude".into(), "claude".into()]);
    d.handle(DispatchCmd::Holds(AgentIx(0), Some("S".into())), &log);
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    d.handle(
        DispatchCmd::Submit(vec![task("plain", 5, Target::Agent(AgentIx(0)))]),
        &log,
    );
    d.handle(DispatchCmd::Ready(AgentIx(1)), &log);
    // Agent 1 is idle, but the holder is busy in S: the task waits.
    d.handle(DispatchCmd::Submit(vec![of_session("s1", "S")]), &log);
    // The holder is offered again, then its task is answered: it takes
    // the session's task itself.
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    d.handle(DispatchCmd::Release(1), &log);
    // That task's process moves to S2 (a resume elsewhere would fork it):
    // a task of S2 waits for it too.
    d.handle(DispatchCmd::Holds(AgentIx(0), Some("S2".into())), &log);
    d.handle(DispatchCmd::Submit(vec![of_session("s2", "S2")]), &log);
    d.handle(DispatchCmd::Release(2), &log);
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "accepted plain 0",
            "assign 0 plain",
            "accepted s1 1",
            "assign 0 s1",
            "accepted s2 1",
            "assign 1 s2",
        ]
    );
}

/// An agent stopped (or removed) while its task runs frees nothing: its
/// process may still be ending the task; the task's answer does.
#[test]
fn a_session_stays_held_until_its_task_is_answered_even_if_its_agent_goes_down() {
    let log = Log::default();
    let mut d = Dispatcher::new(10, vec!["claude".into(), "claude".into()]);
    d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
    d.handle(DispatchCmd::Submit(vec![of_session("s1", "X")]), &log);
    d.handle(DispatchCmd::Ready(AgentIx(1)), &log);
    d.handle(DispatchCmd::Submit(vec![of_session("s2", "X")]), &log);
    d.handle(DispatchCmd::Down(AgentIx(0), "removed".into()), &log);
    assert_eq!(d.queued(), 1, "s2 still waits");
    d.handle(DispatchCmd::Release(1), &log);
    let got = log.0.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "accepted s1 0",
            "assign 0 s1",
            "accepted s2 1",
            "assign 1 s2"
        ]
    );
}

//! The pump: the daemon's one thread on the hot path of durable tasks.
//!
//! It asks each consumer for as many tasks as the dispatcher wants (pull
//! requests with a bounded `expires`), hands each delivery to the runtime,
//! keeps every task it holds alive with `+WPI` every third of `ack_wait`,
//! and finishes a task in this order: its result is stored in the results
//! stream (with a message id of the task's stream sequence, so a second
//! daemon's result for the same delivery is a duplicate), then published to
//! the sender, then the task is acknowledged. A daemon killed between any
//! two steps leaves a task that is delivered again and answered from the
//! store, not run again.

// The blocking `nats` crate is deprecated upstream; see nats_transport.rs.
#![allow(deprecated)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver, Sender};

use crate::config::JetStreamConfig;
use crate::message::demand::Demand;
use crate::message::router::results_subject;
use crate::message::schemas::LinkState;
use crate::transport::health_check::NatsState;
use crate::transport::hub::{Outbox, RawMessage};
use crate::transport::jetstream::api::{self, parse_ack_subject, result_msg_id, task_id_of};
use crate::transport::jetstream::{ConsumerSpec, Delivery, Finish, JsCmd, Verdict, PULL_EXPIRES};

/// What the runtime does with a delivery (runs on the pump's thread; must
/// not block).
pub(crate) type Deliver = Box<dyn FnMut(Delivery) -> Verdict + Send>;

/// The header that lists where a stored result was published live, so a
/// redelivery answered from the store reaches the same places.
const LIVE_HEADER: &str = "Mister-Smith-Live";

/// At most this many pull requests wait per consumer.
const MAX_REQUESTS: usize = 4;

/// A stored result unacknowledged this long is published again (with the
/// same message id: the stream keeps one).
const STORE_RETRY: Duration = Duration::from_secs(2);

/// A result that could not be stored within this is published to its
/// sender anyway (storing goes on): a sender must not wait on an outage.
const LIVE_ANYWAY: Duration = Duration::from_secs(5);

/// A task given back is offered again after this: longer than a pull
/// request lives.
const RELEASE_DELAY: Duration = Duration::from_secs(6);

/// How many answered tasks are remembered (against a server that lost
/// their acknowledgements).
const FINISHED_KEPT: usize = 65_536;

/// The sweeper of `all` tasks asks for this many at a time.
const SWEEP_BATCH: i64 = 64;

struct Request {
    no: u64,
    left: i64,
    until: Instant,
}

#[derive(Default)]
struct Consumer {
    spec: Option<ConsumerSpec>,
    ready: bool,
    wanted: i64,
    received: u64,
    handed: u64,
    requests: Vec<Request>,
}

struct StoreJob {
    finish: Box<Finish>,
    first: Instant,
    sent: Instant,
    tries: u32,
    live_sent: bool,
}

/// Everything the pump is given.
pub(crate) struct PumpStart {
    pub config: JetStreamConfig,
    /// The runtime's consumers; the pump adds the sweeper of `all`.
    pub consumers: Vec<ConsumerSpec>,
    pub deliver: Deliver,
    pub cmds: Receiver<JsCmd>,
    /// The dispatcher's demand.
    pub demand: super::DemandRx,
    pub outbox: Outbox,
    pub link: Arc<NatsState>,
}

pub(crate) struct Pump {
    config: JetStreamConfig,
    inbox: String,
    consumers: Vec<Consumer>,
    by_name: HashMap<String, usize>,
    sweeper: usize,
    deliver: Deliver,
    outbox: Outbox,
    /// Tasks held (queued, running, being stored), by stream sequence:
    /// the acknowledgement subject of their latest delivery.
    open: HashMap<u64, String>,
    /// When each held task is next kept alive, in order.
    alive: VecDeque<(Instant, u64)>,
    /// Deliveries waiting for the store to be read, by stream sequence,
    /// with their task id and when the read was asked.
    looking: HashMap<u64, (Delivery, String, Instant)>,
    /// Until then, even first deliveries are checked against the store:
    /// a NATS server that restarted may deliver again what it delivered
    /// (and had answered) before.
    suspect_until: Option<Instant>,
    stores: HashMap<u64, StoreJob>,
    flushes: Vec<Sender<()>>,
    next_no: u64,
    connected: bool,
    /// The link's reconnect count when last looked at.
    reconnects: usize,
    link: Arc<NatsState>,
    /// Tasks this daemon answered lately (stream sequence → task id),
    /// oldest first: one delivered again after a server lost their
    /// acknowledgement is acknowledged again, not run.
    finished: HashMap<u64, String>,
    finished_order: VecDeque<u64>,
    /// A test's fault: die once a result is stored, before it is published
    /// or its task acknowledged (`MISTER_SMITH_FAULT=exit_after_store`).
    die_after_store: bool,
}

impl Pump {
    pub(crate) fn new(start: &mut PumpStart, deliver: Deliver) -> Pump {
        let mut consumers: Vec<Consumer> = start
            .consumers
            .iter()
            .map(|s| Consumer {
                spec: Some(s.clone()),
                ..Consumer::default()
            })
            .collect();
        consumers.push(Consumer {
            spec: Some(ConsumerSpec::all()),
            wanted: SWEEP_BATCH,
            ..Consumer::default()
        });
        let by_name = consumers
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((c.spec.as_ref()?.name.clone(), i)))
            .collect();
        Pump {
            config: start.config.clone(),
            inbox: format!("_INBOX.js.{}", uuid::Uuid::new_v4().simple()),
            sweeper: consumers.len() - 1,
            consumers,
            by_name,
            deliver,
            outbox: start.outbox.clone(),
            open: HashMap::new(),
            alive: VecDeque::new(),
            looking: HashMap::new(),
            suspect_until: None,
            stores: HashMap::new(),
            flushes: Vec::new(),
            next_no: 0,
            connected: true,
            reconnects: start.link.reconnects(),
            link: start.link.clone(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            die_after_store: std::env::var("MISTER_SMITH_FAULT").as_deref()
                == Ok("exit_after_store"),
        }
    }

    fn no(&mut self) -> u64 {
        self.next_no += 1;
        self.next_no
    }

    fn send(
        &self,
        subject: &str,
        reply: Option<String>,
        headers: Vec<(&'static str, String)>,
        data: Vec<u8>,
    ) {
        self.outbox.send_raw(RawMessage {
            subject: subject.to_string(),
            reply,
            headers,
            data: Arc::new(data),
        });
    }

    fn ack(&mut self, ack: &str, body: &'static [u8]) {
        self.send(ack, None, Vec::new(), body.to_vec());
    }

    /// A message on the pump's inbox or a delivery.
    pub(crate) fn on_message(&mut self, m: nats::Message) {
        if let Some(reply) = m.reply.as_deref().filter(|r| r.starts_with("$JS.ACK.")) {
            let Some(info) = parse_ack_subject(reply) else {
                log::warn!("JetStream: unreadable acknowledgement subject {reply}");
                return;
            };
            let Some(&c) = self.by_name.get(&info.consumer) else {
                return;
            };
            if let Some(r) = self.consumers[c].requests.iter_mut().find(|r| r.left > 0) {
                r.left -= 1;
            }
            self.consumers[c].requests.retain(|r| r.left > 0);
            if c == self.sweeper {
                self.ack(reply, b"+ACK");
                return;
            }
            let d = Delivery {
                consumer: c,
                subject: m.subject,
                data: m.data,
                ack: reply.to_string(),
                stream_seq: info.stream_seq,
                delivered: info.delivered,
                published_ms: info.published_ns / 1_000_000,
            };
            if let Some(held) = self.open.get_mut(&d.stream_seq) {
                // Delivered again while this daemon still has it (the
                // server restarted, or a keep-alive was lost): it is not
                // run twice; the newest delivery is the one to answer.
                log::debug!(
                    "JetStream: stream seq {} delivered again (delivery {}) while held",
                    d.stream_seq,
                    d.delivered
                );
                *held = d.ack;
                return;
            }
            if self.finished.get(&d.stream_seq).map(String::as_str)
                == task_id_of(&d.data).as_deref()
            {
                log::debug!(
                    "JetStream: stream seq {} (answered here) delivered again; acknowledged again",
                    d.stream_seq
                );
                self.ack(&d.ack, b"+ACK");
                return;
            }
            self.notice_reconnect();
            self.hold(d.stream_seq, &d.ack);
            let suspect = self.suspect_until.is_some_and(|t| Instant::now() < t);
            if d.delivered > 1 || suspect {
                // It may have been answered by a daemon that died before
                // acknowledging it: read the store first.
                if let Some(task_id) = task_id_of(&d.data) {
                    let seq = d.stream_seq;
                    self.looking.insert(seq, (d, task_id, Instant::now()));
                    self.look(seq);
                    return;
                }
            }
            self.hand(d);
            return;
        }
        let Some(rest) = m.subject.strip_prefix(self.inbox.as_str()) else {
            return;
        };
        let status = m
            .headers
            .as_ref()
            .and_then(|h| h.get(nats::header::STATUS).cloned());
        let parts: Vec<&str> = rest.trim_start_matches('.').split('.').collect();
        match parts.as_slice() {
            ["p", c, no] => {
                let (Ok(c), Ok(no)) = (c.parse::<usize>(), no.parse::<u64>()) else {
                    return;
                };
                if let Some(con) = self.consumers.get_mut(c) {
                    // 408 expired, 409 and the like: the request is over.
                    con.requests.retain(|r| r.no != no);
                    let why = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(nats::header::DESCRIPTION).cloned())
                        .unwrap_or_default();
                    if status.as_deref() == Some("503") || why.to_lowercase().contains("deleted") {
                        con.ready = false;
                    }
                }
            }
            ["g", seq] => {
                let Ok(seq) = seq.parse::<u64>() else { return };
                if status.as_deref() == Some("503") {
                    // No leader for the results stream yet: the tick asks
                    // again.
                    return;
                }
                match api::parse_stored(&m.data) {
                    Ok(stored) => self.looked(seq, stored),
                    Err(e) => log::debug!("JetStream: cannot read a stored result yet: {e}"),
                }
            }
            ["s", no] => {
                let Ok(no) = no.parse::<u64>() else { return };
                let Some(job) = self.stores.remove(&no) else {
                    return;
                };
                let answer = if status.as_deref() == Some("503") {
                    Err(api::JsError::NoResponders)
                } else {
                    api::parse_pub_ack(&m.data)
                };
                match answer {
                    Ok(ack) => self.stored(job, ack.duplicate),
                    Err(e) => {
                        log::debug!(
                            "JetStream: result of task {} not stored yet: {e}",
                            job.finish.task_id
                        );
                        // Sent again by the tick once STORE_RETRY has passed.
                        let no = self.no();
                        self.stores.insert(no, job);
                    }
                }
            }
            _ => {}
        }
    }

    fn hold(&mut self, seq: u64, ack: &str) {
        if self.open.insert(seq, ack.to_string()).is_none() {
            self.alive
                .push_back((Instant::now() + self.keepalive(), seq));
        }
    }

    /// Remembers that task `seq` was answered here.
    fn remember(&mut self, seq: u64, task_id: &str) {
        if self.finished.insert(seq, task_id.to_string()).is_none() {
            self.finished_order.push_back(seq);
        }
        while self.finished_order.len() > FINISHED_KEPT {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    /// A reconnect (however short) may mean a server that restarted and
    /// lost acknowledgements, or the pull requests it held: ask again, and
    /// check for a while even first deliveries against the store.
    fn notice_reconnect(&mut self) {
        let n = self.link.reconnects();
        if n != self.reconnects {
            self.reconnects = n;
            for c in &mut self.consumers {
                c.requests.clear();
            }
            self.suspect_until = Some(Instant::now() + self.config.ack_wait * 2);
            // Keep-alives lost in the gap: say at once that every held
            // task is still in hand, before the server redelivers it.
            let held: Vec<String> = self.open.values().cloned().collect();
            for ack in held {
                self.ack(&ack, b"+WPI");
            }
        }
    }

    /// Lets go of task `seq` with `body` sent to its latest delivery.
    fn end(&mut self, seq: u64, fallback: &str, body: &'static [u8]) {
        let ack = self
            .open
            .remove(&seq)
            .unwrap_or_else(|| fallback.to_string());
        self.ack(&ack, body);
    }

    /// How often a held task is kept alive.
    fn keepalive(&self) -> Duration {
        (self.config.ack_wait / 3).max(Duration::from_millis(300))
    }

    /// Hands `d` to the runtime.
    fn hand(&mut self, d: Delivery) {
        let (ack, seq, c) = (d.ack.clone(), d.stream_seq, d.consumer);
        match (self.deliver)(d) {
            Verdict::Taken => self.consumers[c].handed += 1,
            Verdict::Answer(f) => self.store(f),
            Verdict::Refuse => self.end(seq, &ack, b"+TERM"),
        }
    }

    /// Stores a result; the rest follows its acknowledgement.
    fn store(&mut self, finish: Box<Finish>) {
        let now = Instant::now();
        let job = StoreJob {
            finish,
            first: now,
            sent: now,
            tries: 0,
            live_sent: false,
        };
        self.send_store(job);
    }

    fn send_store(&mut self, mut job: StoreJob) {
        let no = self.no();
        let f = &job.finish;
        let headers = vec![
            (
                nats::header::NATS_MSG_ID,
                result_msg_id(&self.config.stream, f.stream_seq, &f.task_id),
            ),
            (LIVE_HEADER, f.live.join(" ")),
        ];
        self.send(
            &results_subject(&f.task_id),
            Some(format!("{}.s.{no}", self.inbox)),
            headers,
            f.data.to_vec(),
        );
        job.tries += 1;
        job.sent = Instant::now();
        self.stores.insert(no, job);
    }

    /// The result is in the store: publish it, then end the task.
    fn stored(&mut self, job: StoreJob, duplicate: bool) {
        if self.die_after_store {
            log::error!(
                "MISTER_SMITH_FAULT=exit_after_store: dying after storing the result of task {}",
                job.finish.task_id
            );
            std::process::abort();
        }
        // A duplicate on the first try is another daemon's result for the
        // same delivery (a late finisher): it was published by them.
        let ours = !duplicate || job.tries > 1;
        if ours && !job.live_sent {
            self.publish_live(&job.finish.live, &job.finish.data);
        }
        let f = job.finish;
        self.end(
            f.stream_seq,
            &f.ack,
            if f.term { b"+TERM" } else { b"+ACK" },
        );
        self.remember(f.stream_seq, &f.task_id);
    }

    fn publish_live(&self, live: &[String], data: &Arc<Vec<u8>>) {
        for subject in live {
            self.outbox
                .publish_encoded_and_reply(subject, None, data.to_vec());
        }
    }

    pub(crate) fn on_cmd(&mut self, cmd: JsCmd) {
        match cmd {
            JsCmd::Finish(f) => self.store(f),
            JsCmd::Release { seq } => {
                if let Some(ack) = self.open.remove(&seq) {
                    // Offered again only once this daemon's pull requests
                    // have lapsed: a stopping daemon must not take it back
                    // (each delivery counts towards max_deliver).
                    let body = format!(
                        "-NAK {{\"delay\":{}}}",
                        u64::try_from(RELEASE_DELAY.as_nanos()).unwrap_or(u64::MAX)
                    );
                    self.send(&ack, None, Vec::new(), body.into_bytes());
                }
            }
            JsCmd::Flush(done) => self.flushes.push(done),
            JsCmd::Ready(c) => {
                if let Some(con) = self.consumers.get_mut(c) {
                    con.ready = true;
                }
            }
        }
    }

    /// Takes in the dispatcher's latest demand.
    pub(crate) fn on_demand(&mut self, d: Demand) {
        for (c, con) in self.consumers.iter_mut().enumerate() {
            if c == self.sweeper {
                continue;
            }
            con.wanted = d.wanted.get(c).copied().unwrap_or(0);
            con.received = d.received.get(c).copied().unwrap_or(con.received);
        }
    }

    /// Asks the results stream for the stored result of held task `seq`.
    fn look(&mut self, seq: u64) {
        let Some((_, task_id, sent)) = self.looking.get_mut(&seq) else {
            return;
        };
        *sent = Instant::now();
        let (subject, body) = api::last_on(&self.config.results_stream, &results_subject(task_id));
        self.send(
            &subject,
            Some(format!("{}.g.{seq}", self.inbox)),
            Vec::new(),
            body,
        );
    }

    /// The store's answer for task `seq`: answered from it when the
    /// result there is this task message's, else handed to the runtime.
    fn looked(&mut self, seq: u64, stored: Option<api::Stored>) {
        let Some((d, _, _)) = self.looking.remove(&seq) else {
            return;
        };
        let task_id = task_id_of(&d.data).unwrap_or_default();
        let id = result_msg_id(&self.config.stream, d.stream_seq, &task_id);
        let Some(s) = stored.filter(|s| s.header(nats::header::NATS_MSG_ID) == Some(id.as_str()))
        else {
            self.hand(d);
            return;
        };
        log::info!(
            "JetStream: task at {} seq {} was answered before (delivery {}); answering from the store",
            self.config.stream,
            d.stream_seq,
            d.delivered
        );
        let live: Vec<String> = s
            .header(LIVE_HEADER)
            .unwrap_or("")
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect();
        self.publish_live(&live, &Arc::new(s.data));
        self.end(seq, &d.ack, b"+ACK");
        self.remember(seq, &task_id);
    }

    /// Timers: lapsed pull requests, keep-alives, stores to send again.
    pub(crate) fn on_tick(&mut self, link: LinkState) {
        let now = Instant::now();
        let connected = link == LinkState::Connected;
        if connected && !self.connected {
            for c in &mut self.consumers {
                c.requests.clear();
            }
        }
        self.notice_reconnect();
        self.connected = connected;
        for c in &mut self.consumers {
            c.requests.retain(|r| r.until > now);
        }
        while let Some((due, _)) = self.alive.front() {
            if *due > now {
                break;
            }
            let Some((_, seq)) = self.alive.pop_front() else {
                break;
            };
            if let Some(ack) = self.open.get(&seq).cloned() {
                if connected {
                    self.ack(&ack, b"+WPI");
                }
                self.alive.push_back((now + self.keepalive(), seq));
            }
        }
        let unanswered: Vec<u64> = self
            .looking
            .iter()
            .filter(|(_, (_, _, sent))| now.duration_since(*sent) >= STORE_RETRY)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in unanswered {
            self.look(seq);
        }
        let late: Vec<u64> = self
            .stores
            .iter()
            .filter(|(_, j)| now.duration_since(j.sent) >= STORE_RETRY)
            .map(|(no, _)| *no)
            .collect();
        for no in late {
            let Some(mut job) = self.stores.remove(&no) else {
                continue;
            };
            if !job.live_sent && now.duration_since(job.first) >= LIVE_ANYWAY {
                log::warn!(
                    "JetStream: the result of task {} is not stored yet; published to its sender meanwhile",
                    job.finish.task_id
                );
                self.publish_live(&job.finish.live, &job.finish.data);
                job.live_sent = true;
            }
            self.send_store(job);
        }
    }

    /// Asks each consumer for what is wanted and not yet on its way.
    pub(crate) fn pull(&mut self) {
        if !self.connected {
            return;
        }
        let now = Instant::now();
        let mut asks = Vec::new();
        for (i, c) in self.consumers.iter().enumerate() {
            if !c.ready || c.requests.len() >= MAX_REQUESTS {
                continue;
            }
            let in_transit = c.handed.saturating_sub(c.received) as i64;
            let credit: i64 = c.requests.iter().map(|r| r.left).sum();
            let need = c.wanted - in_transit - credit;
            // In batches: a pull request is work for the server, and one
            // per task finished halves what a busy daemon gets through.
            // Asked once a quarter of the want is missing (at once when
            // nothing is on its way).
            if need > 0 && (need * 4 >= c.wanted || in_transit + credit == 0) {
                asks.push((i, need));
            }
        }
        for (i, need) in asks {
            let no = self.no();
            let Some(spec) = self.consumers[i].spec.clone() else {
                continue;
            };
            let batch = u32::try_from(need).unwrap_or(u32::MAX);
            let (subject, body) = api::pull(&self.config.stream, &spec.name, batch, PULL_EXPIRES);
            self.send(
                &subject,
                Some(format!("{}.p.{i}.{no}", self.inbox)),
                Vec::new(),
                body,
            );
            self.consumers[i].requests.push(Request {
                no,
                left: need,
                until: now + PULL_EXPIRES + Duration::from_millis(250),
            });
        }
    }

    /// Lets go of flush waiters once no result is waiting to be stored.
    fn settle_flushes(&mut self) {
        if self.stores.is_empty() {
            for done in self.flushes.drain(..) {
                self.outbox.nats_barrier(done);
            }
        }
    }
}

/// The pump's loop, on its own thread, until the runtime's end of `cmds`
/// is gone.
pub(crate) fn run(mut start: PumpStart, conn: &nats::Connection) {
    let deliver = std::mem::replace(&mut start.deliver, Box::new(|_| Verdict::Refuse));
    let mut pump = Pump::new(&mut start, deliver);
    let sub = match conn.subscribe(&format!("{}.>", pump.inbox)) {
        Ok(s) => s,
        Err(e) => {
            log::error!("JetStream: cannot subscribe to the pump's inbox: {e}; durable tasks stop");
            return;
        }
    };
    let ticks = tick(Duration::from_millis(250));
    let link = start.link.clone();
    let cmds = start.cmds.clone();
    let demand = std::mem::replace(&mut start.demand, super::demand_link().1);
    loop {
        select! {
            recv(demand.wake) -> _ => {
                if let Some(d) = demand.take() {
                    pump.on_demand(d);
                }
            },
            recv(sub.receiver()) -> m => match m {
                Ok(m) => pump.on_message(m),
                Err(_) => return,
            },
            recv(cmds) -> c => match c {
                Ok(c) => pump.on_cmd(c),
                Err(_) => return,
            },
            recv(ticks) -> _ => pump.on_tick(link.get()),
        }
        pump.pull();
        pump.settle_flushes();
    }
}

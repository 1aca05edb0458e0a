//! Wiring for `mister-smith run`: signals, the run directory, transports,
//! the hub, the dispatcher, the health monitor and the supervisor, each on
//! its own named thread (the supervisor on this one).

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::Config;
use crate::message::dispatcher::Dispatcher;
use crate::message::router::RoutingTable;
use crate::message::schemas::LinkState;
use crate::runtime::accounts::{Accounts, HoldBoard};
use crate::runtime::dispatch;
use crate::runtime::durable;
use crate::runtime::error::RuntimeError;
use crate::runtime::health_monitor;
use crate::runtime::inbound::{DaemonSink, Inbound};
use crate::runtime::process::OsSpawner;
use crate::runtime::supervisor::timers::{Clock, SystemClock};
use crate::runtime::supervisor::{Links, Outcome, Supervisor};
use crate::runtime::tracker;
use crate::runtime::transcripts::{self, Transcripts};
use crate::transport::health_check::NatsState;
use crate::transport::hub::{self, Outbox};
use crate::transport::jetstream::pump::PumpStart;
use crate::transport::jetstream::{demand_link, JsBoot, JsCmd, JsState};
use crate::transport::nats_transport::{self, NatsSettings};
use crate::transport::{local_transport, Handler};

/// Where the daemon listens.
pub(crate) struct Endpoints {
    pub socket: PathBuf,
    pub nats: Option<NatsSettings>,
}

fn thread_err(name: &'static str) -> impl FnOnce(std::io::Error) -> RuntimeError {
    move |source| RuntimeError::DaemonThread { name, source }
}

/// Runs the daemon in the foreground until a signal stops it.
pub(crate) fn run(config: Config, endpoints: Endpoints) -> Result<Outcome, RuntimeError> {
    // Signal handlers are registered before any other thread exists
    // (signal-hook's documented limitation) and before any child is spawned.
    // SIGHUP reloads the config (as nginx and sshd do); SIGQUIT stops the
    // daemon like SIGTERM.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT])
        .map_err(|source| RuntimeError::Signals { source })?;
    let signals_handle = signals.handle();
    let (sig_tx, sig_rx) = crossbeam_channel::bounded(8);
    thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                if sig_tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(thread_err("signals"))?;

    // One daemon per run directory; what a killed predecessor left behind is
    // swept before anything of ours starts.
    let run_dir = tracker::run_dir(&config.daemon_id);
    let dir_err = |what: &'static str, path: &PathBuf| {
        let path = path.clone();
        move |source| RuntimeError::RunDir { what, path, source }
    };
    tracker::create_run_dir(&run_dir).map_err(dir_err("create the run directory", &run_dir))?;
    let _lock = tracker::lock(&run_dir)
        .map_err(dir_err("lock the run directory", &run_dir))?
        .ok_or_else(|| RuntimeError::AlreadyRunning {
            daemon_id: config.daemon_id.clone(),
            run_dir: run_dir.clone(),
        })?;
    // Descendants of agents that outlive their parents come back to us
    // instead of init, so the tracker can end them (see tracker.rs).
    if let Err(e) = crate::sys::set_child_subreaper() {
        log::warn!(
            "cannot become a child subreaper ({e}): orphaned descendants may outlive their agents"
        );
    }
    tracker::mark_children(&run_dir);
    let swept = tracker::sweep(&run_dir);
    if swept > 0 {
        log::warn!("swept {swept} leftovers of a previous daemon that did not stop cleanly");
    }
    let (track_tx, track_rx) = crossbeam_channel::unbounded();
    let dir = run_dir.clone();
    thread::Builder::new()
        .name("tracker".into())
        .stack_size(256 * 1024)
        .spawn(move || tracker::run(&track_rx, &dir))
        .map_err(thread_err("tracker"))?;

    let table = Arc::new(RoutingTable::new(&config));
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let (health_tx, health_rx) = crossbeam_channel::unbounded();
    let (dispatch_tx, dispatch_rx) = crossbeam_channel::unbounded();
    let (hub_tx, hub_rx) = crossbeam_channel::unbounded();
    let (nats_tx, nats_rx) = hub::nats_queue(nats_transport::OUT_QUEUE);
    let locals = Arc::new(AtomicUsize::new(0));
    let outbox = Outbox::new(
        hub_tx.clone(),
        endpoints.nats.is_some().then_some(nats_tx),
        locals.clone(),
    );
    let nats_state = Arc::new(NatsState::default());
    let queued = Arc::new(AtomicUsize::new(0));

    // Durable mode: tasks come from the stream through the pump.
    let durable = config
        .transport
        .jetstream
        .clone()
        .filter(|_| endpoints.nats.is_some());
    let (pump_tx, pump_rx) = crossbeam_channel::unbounded();
    let (demand_tx, demand_rx) = demand_link();
    let js_state = Arc::new(JsState::default());
    let (specs, consumers, targets) = durable::consumers(&table);

    let inbound = Inbound {
        table: table.clone(),
        dispatch: dispatch_tx.clone(),
        events: events_tx.clone(),
        outbox: outbox.clone(),
        max_size: config.message.max_message_size,
        default_timeout: Duration::from_millis(config.message.default_timeout_ms),
        retry_attempts: config.message.retry_attempts,
        tasks_from_stream: false,
        config_path: config.path.clone(),
    };
    let nats_inbound = Inbound {
        tasks_from_stream: durable.is_some(),
        ..inbound.clone()
    };
    let handler: Handler = Arc::new(move |subject: &str, reply: Option<&str>, data: &[u8]| {
        inbound.handle(subject, reply, data)
    });
    let nats_handler: Handler = Arc::new(move |subject: &str, reply: Option<&str>, data: &[u8]| {
        nats_inbound.handle(subject, reply, data)
    });

    let boot = durable.clone().map(|js| {
        let glue = durable::Glue {
            table: table.clone(),
            config: js.clone(),
            targets,
            dispatch: dispatch_tx.clone(),
            outbox: outbox.clone(),
            max_size: config.message.max_message_size,
            default_timeout: Duration::from_millis(config.message.default_timeout_ms),
            retry_attempts: config.message.retry_attempts,
        };
        JsBoot {
            pump: PumpStart {
                config: js,
                consumers: specs,
                deliver: Box::new(move |d| glue.deliver(d)),
                cmds: pump_rx,
                demand: demand_rx,
                outbox: outbox.clone(),
                link: nats_state.clone(),
            },
            state: js_state.clone(),
            to_pump: pump_tx.clone(),
        }
    });
    let pump = durable.is_some().then(|| pump_tx.clone());

    // A reload sends the subscriptions it needs here.
    let (subs_tx, subs_rx) = crossbeam_channel::unbounded();
    match &endpoints.nats {
        Some(settings) => nats_transport::start_daemon(
            settings.clone(),
            (table.daemon_subs(durable.is_some()), subs_rx),
            nats_handler,
            nats_state.clone(),
            nats_rx,
            config.message.max_message_size,
            boot,
        )?,
        None => nats_state.set(LinkState::Off),
    }
    thread::Builder::new()
        .name("hub".into())
        .stack_size(256 * 1024)
        .spawn(move || hub::run(&hub_rx))
        .map_err(thread_err("hub"))?;

    // The socket is served always: `status` and `health` work on the host
    // even while NATS is down.
    let max_frame = config.message.max_message_size + 64 * 1024;
    let _server = local_transport::serve(&endpoints.socket, hub_tx, handler, max_frame, locals)?;

    let holds = Arc::new(HoldBoard::new(config.agents.len()));
    let transcripts = config
        .logs
        .transcripts
        .then(|| {
            let dir = transcripts::dir_of(&config.logs, &run_dir);
            log::info!("transcripts under {}", dir.display());
            Transcripts::start(dir, &config.logs)
        })
        .flatten();
    let unrun = crate::runtime::inbound::Unrun::default();
    let sink = DaemonSink {
        table: table.clone(),
        events: events_tx.clone(),
        outbox: outbox.clone(),
        holds: holds.clone(),
        pump: pump.clone(),
        transcripts: transcripts.clone(),
        unrun: unrun.clone(),
    };
    let capacity = config.message.queue_capacity;
    let mut dispatcher = Dispatcher::new(capacity, table.types());
    if durable.is_some() {
        dispatcher = dispatcher.with_consumers(consumers);
    }
    let q = queued.clone();
    let demand_to = durable.is_some().then_some(demand_tx);
    thread::Builder::new()
        .name("dispatcher".into())
        .stack_size(256 * 1024)
        .spawn(move || dispatch::run(&dispatch_rx, dispatcher, &q, &sink, demand_to.as_ref()))
        .map_err(thread_err("dispatcher"))?;

    let (health_events, health_tracker) = (events_tx.clone(), track_tx.clone());
    thread::Builder::new()
        .name("health".into())
        .stack_size(256 * 1024)
        .spawn(move || health_monitor::run(&health_rx, &health_events, &health_tracker))
        .map_err(thread_err("health"))?;

    log::info!(
        "mister-smith {} daemon {} starting {} agents from {}; socket {}{}",
        env!("CARGO_PKG_VERSION"),
        config.daemon_id,
        config.agents.len(),
        config.path.display(),
        endpoints.socket.display(),
        endpoints
            .nats
            .as_ref()
            .map(|n| format!(", NATS {}", n.shown_url()))
            .unwrap_or_default()
    );
    // The supervisor runs on this thread: children it spawns are tied to
    // it by PDEATHSIG, so it must outlive them. As many pool spawners as
    // cores: a cold start of many agents execs them in parallel. They live
    // as long as the daemon too.
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    let spawner = OsSpawner::new(cores.clamp(1, 8)).map_err(thread_err("spawner"))?;
    let links = Links {
        table,
        outbox,
        dispatch: dispatch_tx,
        health: health_tx,
        tracker: track_tx,
        nats: nats_state,
        queued,
        queue_capacity: capacity,
        max_message_size: config.message.max_message_size,
        accounts: Accounts::new(
            config.used_accounts(),
            &config
                .agents
                .iter()
                .map(|a| a.account.clone())
                .collect::<Vec<_>>(),
            crate::runtime::spend::read(&run_dir),
            SystemClock.wall_ms(),
        ),
        holds,
        retry_delay: Duration::from_millis(config.message.retry_delay_ms),
        pump: pump.clone(),
        stream: durable
            .as_ref()
            .map(|js| (js.stream.clone(), js_state.clone())),
        transcripts,
        unrun,
        config: config.clone(),
        subs: endpoints.nats.is_some().then_some(subs_tx),
    };
    let drain = links.outbox.clone();
    let outcome = Supervisor::new(
        config.agents,
        (events_tx, events_rx),
        sig_rx,
        links,
        Box::new(spawner),
        Box::new(SystemClock),
    )
    .run();
    // Its agents have exited: what they left behind goes too.
    tracker::end_orphans();
    // Results of tasks from the stream are stored, and the tasks given
    // back are told so, before we go.
    if let Some(pump) = &pump {
        let (done, gone) = crossbeam_channel::bounded::<()>(1);
        if pump.send(JsCmd::Flush(done)).is_ok() {
            let _ = gone.recv_timeout(Duration::from_secs(3));
        }
    }
    // The last answers (cancelled tasks, final statuses) leave before we do.
    if !drain.drain(Duration::from_secs(3)) {
        log::warn!("some final messages may not have been delivered");
    }
    signals_handle.close();
    // A clean stop leaves nothing to sweep.
    let _ = std::fs::remove_file(run_dir.join("state.json"));
    // The other threads end with the process; the socket file goes with
    // `_server`.
    Ok(outcome)
}

//! The benchmark harness: mister-smith against the physical floor, measured
//! in the same run on the same machine.
//!
//! ```text
//! cargo run --release --example bench -- [--quick] [--json] [--only NAME]
//!     [--tasks N] [--against PATH]
//! ```
//!
//! It starts its own `nats-server` on a free port and prints one table, each
//! row "ours / floor = ratio" (medians, and p99 where there are enough
//! samples). `--quick` shrinks every measurement (CI runs it to check the
//! harness works); `--json` prints the rows as JSON instead. Figures for the
//! README come from a full run.
//!
//! Rows, in the order they run, each in its own file under `rows/` (named
//! as `--only` names it):
//! 1. `restart`, restart latency: a worker that stamps its start, lives
//!    200 ms and exits 1, under `policy: always` with no delay, vs a
//!    `while true` shell loop;
//! 2. `cold`, cold start of 50 plain agents vs 50 started by a shell loop
//!    with `&`, and of 50 fake-claude agents until all answered
//!    `initialize`;
//! 3. `memory`, daemon memory with 50 and 500 children, and threads per
//!    child;
//! 4. `rtt`, task round trip over NATS through the daemon and a fake-claude
//!    echo agent vs raw NATS request/reply (both sides flushing), and vs a
//!    minimal relay that carries each task through the same kind of agent;
//! 5. `send`, wall time of one `mister-smith send --wait` process vs a
//!    minimal raw NATS client process;
//! 6. `spawn`, one spawn of a child through the daemon's clone path vs std's;
//! 7. `dispatcher`, the dispatcher's queue in process;
//! 8. `throughput`, tasks per second with 8 agents and 1,000 tasks in
//!    flight;
//! 9. `transcripts`, a task's round trip with 40 progress events through a
//!    daemon writing transcripts vs one with `logs.transcripts: false`;
//! 10. `durable`, durable mode on a `nats-server -js`: one storing `send`
//!     process vs a raw client publishing with a stream ack, and tasks per
//!     second through 8 agents vs a raw pull consumer.
//!
//! The harness around them: the arguments (`args.rs`), the table and the
//! statistics (`table.rs`), the binaries under test (`bins.rs`), the scratch
//! directory (`scratch.rs`), the daemon (`daemon.rs`), the bash worker the
//! first rows supervise (`worker.rs`), the NATS server and raw client
//! (`nats_server.rs`), and the floors' echo and relay (`echo.rs`).

// The harness uses the blocking `nats` crate as a raw client, as the daemon
// does.
#![allow(deprecated)]

mod args;
mod bins;
mod daemon;
mod echo;
mod nats_server;
mod rows;
mod scratch;
mod table;
mod worker;

use args::{parse_args, Args};
use bins::Bins;
use nats_server::Nats;
use rows::cold::cold_start;
use rows::dispatcher::dispatcher;
use rows::durable::{durable, raw_js_client};
use rows::memory::memory;
use rows::restart::restart_latency;
use rows::rtt::round_trip;
use rows::send::{raw_client, send_process};
use rows::spawn::spawn_cost;
use rows::throughput::throughput;
use rows::transcripts::transcripts;
use scratch::Scratch;
use table::{print_json, print_table};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--raw-client") {
        raw_client(&args);
        return;
    }
    if args.get(1).is_some_and(|a| a == "--raw-js") {
        raw_js_client(&args);
        return;
    }
    let Args {
        quick,
        json,
        only,
        tasks,
        against,
    } = parse_args(&args);
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let bins = Bins::find();
    let work = Scratch::new();
    let mut rows = Vec::new();

    if want("restart") {
        eprintln!("bench: restart latency");
        rows.extend(restart_latency(&bins, &work, if quick { 5 } else { 40 }));
    }
    if want("cold") {
        eprintln!("bench: cold start");
        let (n, runs) = if quick { (10, 1) } else { (50, 5) };
        rows.extend(cold_start(&bins, &work, n, runs));
    }
    if want("memory") {
        eprintln!("bench: memory");
        let sizes: &[usize] = if quick { &[10, 20] } else { &[50, 500] };
        rows.extend(memory(&bins, &work, sizes));
    }
    let nats = Nats::start(&work);
    if want("rtt") {
        eprintln!("bench: task round trip");
        rows.extend(round_trip(
            &bins,
            &work,
            &nats,
            tasks.unwrap_or(if quick { 50 } else { 2000 }),
            against.as_deref(),
        ));
    }
    if want("send") {
        eprintln!("bench: send process");
        rows.extend(send_process(
            &bins,
            &work,
            &nats,
            if quick { 5 } else { 40 },
        ));
    }
    if want("spawn") {
        eprintln!("bench: spawn");
        rows.extend(spawn_cost(if quick { 20 } else { 300 }));
    }
    if want("dispatcher") {
        eprintln!("bench: dispatcher");
        rows.extend(dispatcher(if quick { 20_000 } else { 1_000_000 }));
    }
    if want("throughput") {
        eprintln!("bench: throughput");
        rows.extend(throughput(
            &bins,
            &work,
            &nats,
            if quick { 100 } else { 1000 },
        ));
    }

    if want("transcripts") {
        eprintln!("bench: transcripts");
        rows.extend(transcripts(
            &bins,
            &work,
            &nats,
            tasks.unwrap_or(if quick { 20 } else { 1000 }),
        ));
    }

    if want("durable") {
        eprintln!("bench: durable mode");
        let (sends, n) = if quick { (5, 200) } else { (40, 5000) };
        rows.extend(durable(&bins, &work, sends, tasks.unwrap_or(n)));
    }

    if json {
        print_json(&rows);
    } else {
        print_table(&rows, quick);
    }
}

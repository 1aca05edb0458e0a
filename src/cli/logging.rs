//! Logging that never blocks the daemon.
//!
//! Every log line is formatted where it is logged and handed to a bounded
//! queue; one thread writes the queue to stderr. When stderr is not read
//! (`run 2>&1 | less` paused, Ctrl-S on a terminal, a stalled log shipper)
//! that thread blocks and the queue fills; further lines are dropped and
//! counted, and the count is reported once stderr moves again. No other
//! thread ever waits for stderr: with env_logger writing directly, a
//! stalled stderr froze the supervisor in the middle of a write.
//!
//! The filter is env_logger's (`MISTER_SMITH_LOG`, else `RUST_LOG`, with
//! its module syntax); `MISTER_SMITH_LOG_STYLE` (`auto`, `always`,
//! `never`) colours the level.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use log::{Level, LevelFilter, Log, Metadata, Record};
use time::format_description::BorrowedFormatItem;
use time::OffsetDateTime;

/// Lines waiting for stderr at most; past that they are dropped. The
/// queue is a list that grows as lines come (a bounded channel of this size
/// is allocated and written in full when made: half a megabyte and 0.5 ms
/// of every client command's start), so the bound is kept by a count.
const QUEUE: usize = 16_384;

/// Lines in the queue now.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Now, as `2026-11-30T16:40:58.136Z`.
fn stamp() -> String {
    static FORMAT: OnceLock<Vec<BorrowedFormatItem<'static>>> = OnceLock::new();
    let format = FORMAT.get_or_init(|| {
        time::format_description::parse_borrowed::<2>(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z",
        )
        .unwrap_or_default()
    });
    OffsetDateTime::now_utc()
        .format(format.as_slice())
        .unwrap_or_default()
}

enum Msg {
    Line(Vec<u8>),
    /// Dropped once everything before it is written.
    Flush(Sender<()>),
}

struct QueueLogger {
    filter: env_logger::Logger,
    tx: Sender<Msg>,
    dropped: &'static AtomicU64,
    colour: bool,
    /// The writer's end until its thread starts, at the first line: most
    /// client commands log nothing, and a thread costs each of them.
    rx: std::sync::Mutex<Option<Receiver<Msg>>>,
}

impl QueueLogger {
    fn start_writer(&self) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let dropped = self.dropped;
        // Without its thread (out of threads) the queue fills and lines are
        // dropped and counted: never a blocked caller.
        let _ = thread::Builder::new()
            .name("log".into())
            .stack_size(64 * 1024)
            .spawn(move || write_out(&rx, dropped));
    }
}

impl Log for QueueLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        STARTED.call_once(|| self.start_writer());
        if QUEUED.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            QUEUED.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let line = format_line(record, self.colour);
        if self.tx.send(Msg::Line(line)).is_err() {
            QUEUED.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

/// `text` with its control characters (a carriage return, an escape
/// sequence, a newline inside a message) written as escapes: text that
/// came from an agent's stderr or a config file must not forge a log line
/// or drive the terminal.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn format_line(record: &Record<'_>, colour: bool) -> Vec<u8> {
    let stamp = stamp();
    let level = record.level();
    let message = record.args().to_string();
    let message = printable(&message);
    let mut line = Vec::with_capacity(128);
    let _ = if colour {
        let code = match level {
            Level::Error => "31",
            Level::Warn => "33",
            Level::Info => "32",
            Level::Debug => "34",
            Level::Trace => "36",
        };
        write!(
            line,
            "{stamp} \x1b[{code}m{:<5}\x1b[0m {message}",
            level.as_str(),
        )
    } else {
        write!(line, "{stamp} {:<5} {message}", level.as_str())
    };
    line.push(b'\n');
    line
}

/// The writer's end, kept for [`flush`].
static SENDER: OnceLock<Sender<Msg>> = OnceLock::new();

/// Whether the writer thread was started (at the first line logged).
static STARTED: std::sync::Once = std::sync::Once::new();

/// Installs the logger with `default` as the filter when the environment
/// sets none. Lines go to stderr through the writer thread.
pub(super) fn init(default: &str) {
    static DROPPED: AtomicU64 = AtomicU64::new(0);
    let filter_text = std::env::var("MISTER_SMITH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let filter = env_logger::Builder::new()
        .parse_filters(&filter_text)
        .build();
    let colour = match std::env::var("MISTER_SMITH_LOG_STYLE").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => std::io::stderr().is_terminal(),
    };
    let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
    let max = filter.filter();
    let logger = QueueLogger {
        filter,
        tx: tx.clone(),
        dropped: &DROPPED,
        colour,
        rx: std::sync::Mutex::new(Some(rx)),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
        let _ = SENDER.set(tx);
    } else {
        log::set_max_level(LevelFilter::Off);
    }
}

/// The writer thread: stderr, line by line, and the count of what was
/// dropped while it could not keep up.
fn write_out(rx: &Receiver<Msg>, dropped: &AtomicU64) {
    let mut err = std::io::stderr();
    for msg in rx {
        match msg {
            Msg::Line(line) => {
                let _ = err.write_all(&line);
                QUEUED.fetch_sub(1, Ordering::Relaxed);
            }
            Msg::Flush(done) => drop(done),
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let note = format!(
                "{} WARN  {lost} log lines dropped: stderr was not read fast enough\n",
                stamp()
            );
            let _ = err.write_all(note.as_bytes());
        }
    }
}

/// Waits, at most `within`, until every line logged so far is written.
pub(crate) fn flush(within: Duration) {
    // Nothing was logged: nothing to wait for.
    if !STARTED.is_completed() {
        return;
    }
    let Some(tx) = SENDER.get() else { return };
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    if tx.send_timeout(Msg::Flush(done_tx), within).is_ok() {
        let _ = done_rx.recv_timeout(within);
    }
}

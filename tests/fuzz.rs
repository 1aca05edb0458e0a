//! Hostile input against the decoders: a mutation fuzzer over the committed
//! corpus (tests/corpus), run for a bounded time in CI. The envelope
//! decoder, the stream-json line classifier and the config parser must
//! never panic, must refuse oversize input before parsing it, and whatever
//! the envelope decoder accepts must encode and decode back to itself.
//!
//! `MISTER_SMITH_FUZZ_SECS` sets the time per decoder (default 5 s);
//! `MISTER_SMITH_FUZZ_SEED` replays a run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use mister_smith::message::envelope::Envelope;
use mister_smith::runtime::claude::Line;

const LIMIT: usize = 64 * 1024;

fn corpus(prefix: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("tests/corpus")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|mut b| {
            while b.last() == Some(&b'\n') {
                b.pop();
            }
            b
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no {prefix}* seeds in {}", dir.display());
    seeds
}

fn budget() -> Duration {
    let secs = std::env::var("MISTER_SMITH_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("MISTER_SMITH_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        println!("fuzz seed {seed} (MISTER_SMITH_FUZZ_SEED={seed} replays it)");
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that tend to matter to a JSON decoder or to subjects.
const INTERESTING: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e309",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\xff\xfe",
    b"\n",
    b".",
    b"*",
    b">",
    b" ",
    b"\"priority\":",
    b"\"payload\":",
    b"\"message_type\":\"task_result\"",
    b"\"x\":1",
    b"\"type\":\"result\"",
    b"\"agents\":[",
    b"\"id\":\"a.b\"",
    b"\"replicas\":1000000000",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                b.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i + 1);
                b.drain(i..i + n);
            }
            3 => {
                let i = rng.below(len + 1);
                let tok = INTERESTING[rng.below(INTERESTING.len())];
                b.splice(i..i, tok.iter().copied());
            }
            4 if len > 0 => {
                // Duplicate a slice: repeated keys, doubled structures.
                let i = rng.below(len);
                let n = rng.below((len - i).min(64) + 1);
                let piece: Vec<u8> = b[i..i + n].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, piece);
            }
            5 => {
                // Splice the tail of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            6 => b.truncate(rng.below(len + 1)),
            7 => {
                // Deep nesting: must be refused, not overflow the stack.
                let depth = 1 + rng.below(5000);
                let mut deep = vec![b'['; depth];
                deep.extend(std::iter::repeat_n(b']', depth));
                let i = rng.below(len + 1);
                b.splice(i..i, deep);
            }
            _ => {
                // A long run of one character.
                let i = rng.below(len + 1);
                let n = rng.below(20_000);
                b.splice(i..i, std::iter::repeat_n(b"a\"{[0 "[rng.below(6)], n));
            }
        }
    }
    b
}

/// Feeds mutated inputs to `check` for the time budget; a panic fails the
/// test with the input that caused it.
fn fuzz(name: &str, prefix: &str, mut check: impl FnMut(&[u8])) {
    let seeds = corpus(prefix);
    let mut rng = Rng::new();
    let deadline = Instant::now() + budget();
    let mut n = 0u64;
    for s in &seeds {
        check(s);
    }
    while Instant::now() < deadline {
        let input = mutate(&mut rng, &seeds);
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let path = std::env::temp_dir().join(format!("mister-smith-fuzz-{name}-crash"));
            let _ = std::fs::write(&path, &input);
            std::panic::resume_unwind(Box::new(format!(
                "{name}: panic on input saved to {} ({:?})",
                path.display(),
                e.downcast_ref::<&str>()
            )));
        }
        n += 1;
    }
    println!("FIGURE fuzz_{name}_inputs={n}");
    assert!(n > 100, "{name}: only {n} inputs in the budget");
}

#[test]
fn the_envelope_decoder_survives_hostile_input() {
    fuzz("envelope", "envelope-", |input| {
        match Envelope::decode(input, LIMIT) {
            Ok(env) => {
                // Whatever is accepted is valid: it round-trips exactly.
                let again = Envelope::decode(&env.encode(), usize::MAX)
                    .expect("re-decoding an encoded envelope");
                assert_eq!(again, env);
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
            }
        }
        if input.len() > LIMIT {
            assert!(Envelope::decode(input, LIMIT)
                .unwrap_err()
                .to_string()
                .contains("more than the limit"));
        }
    });
}

#[test]
fn the_stream_json_classifier_survives_hostile_input() {
    fuzz("stream_json", "event-", |input| {
        let _ = Line::classify(input, 1024);
    });
}

#[test]
fn the_config_parser_survives_hostile_input() {
    fuzz("config", "config-", |input| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) {
            match mister_smith::config::parse(&v, Path::new("/etc/mister-smith")) {
                Ok(c) => assert!(!c.daemon_id.is_empty()),
                Err(problems) => assert!(!problems.is_empty()),
            }
        }
    });
}

#[test]
fn oversize_and_deeply_nested_input_is_refused_cheaply() {
    let huge = vec![b'['; 10 * LIMIT];
    // Refused for its size, which is checked before any parsing.
    assert_eq!(
        Envelope::decode(&huge, LIMIT),
        Err(mister_smith::message::error::MessageError::TooLarge {
            size: 10 * LIMIT,
            limit: LIMIT
        })
    );
    let mut deep = vec![b'['; 100_000];
    deep.extend(vec![b']'; 100_000]);
    assert!(Envelope::decode(&deep, usize::MAX).is_err());
    assert!(matches!(
        Line::classify(&deep, usize::MAX),
        Line::NotJson(_)
    ));
}

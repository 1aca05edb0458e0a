//! The binaries under test (the daemon and the fake-claude agent), rebuilt
//! before every run so that a stale build is never measured.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binaries under test, built in release mode if missing.
pub(crate) struct Bins {
    pub(crate) ms: PathBuf,
    pub(crate) fake: PathBuf,
}

impl Bins {
    pub(crate) fn find() -> Bins {
        let exe = std::env::current_exe().expect("own path");
        // target/release/examples/bench -> target/release
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let bins = Bins {
            ms: dir.join("mister-smith"),
            fake: dir.join("examples").join("fake-claude"),
        };
        // Always (re)build the daemon and the fake agent: `cargo run
        // --example bench` builds only the bench and the library, and a
        // stale daemon from before a change would be measured in silence.
        // Only these two: rebuilding all examples would replace this very
        // binary while it runs (it re-runs itself as the raw client floor).
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            "--bin",
            "mister-smith",
            "--example",
            "fake-claude",
        ]);
        // Into the target directory this bench runs from, wherever that is.
        if let Some(target) = dir.parent() {
            cmd.arg("--target-dir").arg(target);
        }
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let built = cmd.status().is_ok_and(|s| s.success());
        assert!(
            bins.ms.exists() && bins.fake.exists(),
            "build mister-smith first: cargo build --release --bins --examples"
        );
        if !built {
            eprintln!("bench: WARNING: could not rebuild mister-smith and fake-claude; measuring the binaries already built");
        }
        if !dir.ends_with("release") {
            eprintln!("bench: WARNING: not a release build; run with --release for real figures");
        }
        bins
    }
}

//! Records the git commit the binary is built from, for `--version`.
//!
//! Outside a git checkout (a crates.io tarball, say) nothing is recorded and
//! `--version` prints the package version alone.

fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    println!("cargo:rerun-if-env-changed=MISTER_SMITH_GIT_COMMIT");
    if std::env::var_os("MISTER_SMITH_GIT_COMMIT").is_some() {
        return;
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if !commit.is_empty() {
        println!("cargo:rustc-env=MISTER_SMITH_GIT_COMMIT={commit}");
    }
}

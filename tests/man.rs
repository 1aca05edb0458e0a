//! The manual page cannot drift from the CLI: every command and every flag
//! that `--help` shows must be in man/mister-smith.1, and `mandoc -T lint`
//! must find nothing (CI installs mandoc).

use std::path::Path;
use std::process::Command;

use crate::support::run_cli;

const COMMANDS: &[&str] = &[
    "run",
    "check-config",
    "send",
    "status",
    "health",
    "start",
    "stop",
    "restart",
    "pause",
    "resume",
    "listen",
    "result",
];

fn man() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/mister-smith.1"))
        .expect("man/mister-smith.1")
}

/// The long flags in the "Options:" part of a help text.
fn flags(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .take_while(|l| {
            !l.starts_with("Commands:") && !l.starts_with("Examples:") && !l.starts_with("Notes:")
        })
        // Option lines are indented two spaces; wrapped text, more.
        .filter(|l| l.starts_with("  -"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(',').to_string())
        .filter(|f| f != "--help")
        .collect()
}

#[test]
fn every_command_and_flag_of_the_cli_is_in_the_man_page() {
    let page = man();
    // roff writes a hyphen in a flag as \-.
    let roff = |s: &str| s.replace('-', "\\-");
    let (status, top, _) = run_cli(&["--help"], &[]);
    assert!(status.success());
    let mut all = flags(&top);
    for c in COMMANDS {
        assert!(top.contains(&format!("  {c} ")), "--help lacks {c}");
        assert!(
            page.contains(&format!(".B {c}")) || page.contains(&format!(".B {}", roff(c))),
            "the man page lacks the command {c}"
        );
        let (status, help, _) = run_cli(&[c, "--help"], &[]);
        assert!(status.success(), "{c} --help");
        assert!(help.contains("Examples:"), "{c} --help has no example");
        all.extend(flags(&help));
    }
    assert!(all.len() > 20, "{all:?}");
    for f in all {
        assert!(page.contains(&roff(&f)), "the man page lacks {f}");
    }
    for code in ["64", "65", "69", "70", "74", "75", "78"] {
        assert!(
            page.contains(&format!(".B {code}\n")),
            "the man page lacks exit code {code}"
        );
    }
}

#[test]
fn the_man_page_is_lint_clean() {
    let out = match Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/mister-smith.1"))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            panic!("mandoc is not installed ({e}): apt-get install mandoc (bash .ci/run does)")
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "mandoc -T lint:\n{text}"
    );
}

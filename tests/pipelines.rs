//! The example scripts, run as a user would against the demo agents.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Daemon, TempDir, BIN};

const T: Duration = Duration::from_secs(30);

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// PATH with the binary under test first, as an installed mister-smith.
fn path_env() -> String {
    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default())
}

fn demo() -> Daemon {
    // demo.json runs ../target/debug/examples/fake-claude: make sure it is
    // built.
    let _ = crate::support::fake_claude();
    let d = Daemon::start_file(TempDir::new("demo"), &examples().join("demo.json"), &[]);
    for id in ["coder-1", "coder-2", "reviewer"] {
        d.wait_seen(&format!("agent {id}: initializing -> idle"), T);
    }
    d
}

#[test]
fn fan_out_sends_every_prompt_and_tabulates_the_results() {
    let d = demo();
    let out = Command::new(examples().join("fan-out.sh"))
        .env("PATH", path_env())
        .env("MISTER_SMITH_SOCKET", d.socket())
        .env_remove("NATS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"write the docs\nfix the bug\nrelease it\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    rows.sort_by_key(|r| r[3]);
    assert_eq!(rows.len(), 3, "{stdout}");
    for (row, prompt) in rows.iter().zip([
        "done: fix the bug",
        "done: release it",
        "done: write the docs",
    ]) {
        assert_eq!(row[1], "completed", "{stdout}");
        assert!(row[2].parse::<f64>().unwrap() > 0.0, "{stdout}");
        assert_eq!(row[3], prompt, "{stdout}");
    }
}

#[test]
fn watch_alerts_reports_an_agent_that_gave_up() {
    let d = demo();
    let mut watcher = Command::new(examples().join("watch-alerts.sh"))
        .arg("--count")
        .arg("1")
        .env("PATH", path_env())
        .env("MISTER_SMITH_SOCKET", d.socket())
        .env("MISTER_SMITH_LOG", "info")
        .env_remove("NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // listen says so once its subscription is in place.
    let mut err = BufReader::new(watcher.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains("listening on mister-smith.*.*.system_alert"),
        "{line}"
    );
    // Crash coder-1 until its restart budget (5 in 60 s) is spent.
    for _ in 0..6 {
        let status = Command::new(BIN)
            .args([
                "--socket",
                d.socket().to_str().unwrap(),
                "send",
                "--to",
                "coder-1",
                "--wait",
                "die [[fake:crash]]",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1));
    }
    d.wait_seen("ALERT agent coder-1", T);
    let out = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("coder-1 restart_budget_spent: restart budget spent (5 restarts"),
        "{text}"
    );
}

#[test]
fn the_production_example_is_a_valid_config() {
    let c = mister_smith::config::load_unchecked(&examples().join("production.json")).unwrap();
    assert_eq!(c.agents.len(), 3);
    assert!(c.agents[0].args.iter().any(|a| a == "--strict-mcp-config"));
    assert!(c.agents.iter().all(|a| a.account == "team"));
    assert_eq!(c.accounts["team"].daily_budget_usd, Some(50.0));
    assert_eq!(c.message.retry_attempts, 2);
}

/// The README's conversation, word for word, through a shell.
#[test]
fn the_readme_conversation_continues_a_session() {
    let d = demo();
    let script = r#"sid=$(mister-smith send --to coder-1 --wait "remember 42" | jq -r .payload.session_id)
mister-smith send --session "$sid" --agent-type claude --output-format text "what did I ask?""#;
    let readme = std::fs::read_to_string(examples().join("../README.md")).unwrap();
    assert!(readme.contains(script), "the README shows this script");
    let out = Command::new("sh")
        .args(["-c", script])
        .env("PATH", path_env())
        .env("MISTER_SMITH_SOCKET", d.socket())
        .env_remove("NATS_URL")
        .env_remove("MISTER_SMITH_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "you asked: remember 42");
}

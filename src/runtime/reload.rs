//! Reload: the config read again while the daemon runs (SIGHUP, or the
//! `reload` op of the control plane). The file is read on a thread of its
//! own (a path that blocks, a FIFO say, must not stall anybody), and what
//! changed is worked out here as a [`Plan`], touching nothing: the
//! supervisor applies it, or answers every problem and changes nothing.

use std::path::PathBuf;

use crossbeam_channel::Sender;

use crate::config::{self, AgentSpec, Config, ConfigError};
use crate::message::router::Origin;
use crate::runtime::events::{Command, Event};

/// What a reload changes.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// New agents, in the file's order.
    pub added: Vec<AgentSpec>,
    /// Ids of agents no longer in the file.
    pub removed: Vec<String>,
    /// Agents whose spec changed (their new spec).
    pub changed: Vec<AgentSpec>,
    pub unchanged: usize,
}

impl Plan {
    /// The one-line summary `reload` prints.
    pub(crate) fn summary(&self) -> String {
        format!(
            "reloaded: {} added, {} removed, {} changed, {} unchanged",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged
        )
    }
}

/// Reads the config at `path` on a thread of its own and hands it to the
/// supervisor, which answers `origin` (a SIGHUP has none).
pub(crate) fn load_later(path: PathBuf, events: Sender<Event>, origin: Option<Origin>) {
    let tx = events.clone();
    let at = path.clone();
    let spawned = std::thread::Builder::new()
        .name("reload".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let loaded = Box::new(config::load(&path));
            let _ = tx.send(Event::Command(Command::Reload { loaded, origin }));
        });
    if let Err(source) = spawned {
        // The origin went with the closure; the log says it.
        log::error!(
            "reload: cannot start a thread to read {}: {source}",
            at.display()
        );
        let loaded = Box::new(Err(ConfigError::Read { path: at, source }));
        let _ = events.send(Event::Command(Command::Reload {
            loaded,
            origin: None,
        }));
    }
}

/// What reloading `new` over `old` would change, or every reason it
/// cannot (each a line for a person). `durable`: tasks come from
/// JetStream consumers made per agent at start.
pub(crate) fn plan(old: &Config, new: &Config, durable: bool) -> Result<Plan, Vec<String>> {
    let at = |what: &str| format!("config {}: {what}", new.path.display());
    let mut problems = Vec::new();
    let restart_only = |key: &str| {
        at(&format!(
            "{key} changed: a reload applies changes to agents only; restart the daemon to apply it"
        ))
    };
    if old.daemon_id != new.daemon_id {
        problems.push(restart_only("daemon_id"));
    }
    if old.transport != new.transport {
        problems.push(restart_only("transport"));
    }
    if old.message != new.message {
        problems.push(restart_only("message"));
    }
    if old.accounts != new.accounts {
        problems.push(restart_only("accounts"));
    }
    if old.logs != new.logs {
        problems.push(restart_only("logs (or log_dir)"));
    }
    let mut plan = Plan::default();
    for spec in &new.agents {
        match old.agents.iter().find(|a| a.id == spec.id) {
            None => plan.added.push(spec.clone()),
            Some(was) if was.same_run(spec) => plan.unchanged += 1,
            Some(was) => {
                for (what, from, to) in [
                    ("type", was.agent_type.as_str(), spec.agent_type.as_str()),
                    ("protocol", was.protocol.as_str(), spec.protocol.as_str()),
                ] {
                    if from != to {
                        problems.push(at(&format!(
                            "{}: agent {} changes its {what} from {from} to {to}: that needs a new agent id (or a restart of the daemon)",
                            spec.source, spec.id
                        )));
                    }
                }
                plan.changed.push(spec.clone());
            }
        }
    }
    plan.removed = old
        .agents
        .iter()
        .filter(|a| !new.agents.iter().any(|b| b.id == a.id))
        .map(|a| a.id.clone())
        .collect();
    if durable && !(plan.added.is_empty() && plan.removed.is_empty()) {
        problems.push(at(
            "agents added or removed: with transport.jetstream each agent has a consumer made at start; restart the daemon to add or remove agents",
        ));
    }
    if problems.is_empty() {
        Ok(plan)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use serde_json::json;

    fn config(agents: serde_json::Value, extra: serde_json::Value) -> Config {
        let mut doc = json!({"daemon_id": "d", "agents": agents});
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        let mut c = parse(&doc, std::path::Path::new("/etc")).expect("valid config");
        c.path = "/etc/ms.json".into();
        c
    }

    fn agent(id: &str, args: &[&str]) -> serde_json::Value {
        json!({"id": id, "command": "/bin/cat", "args": args})
    }

    #[test]
    fn agents_are_added_removed_changed_or_kept_by_id() {
        let old = config(
            json!([
                agent("a", &[]),
                agent("b", &[]),
                agent("c", &[]),
                agent("d", &[])
            ]),
            json!({}),
        );
        // `d` moves in the file: where it comes from is no change.
        let new = config(
            json!([
                agent("d", &[]),
                agent("a", &[]),
                agent("b", &["-u"]),
                agent("e", &[])
            ]),
            json!({}),
        );
        let p = plan(&old, &new, false).expect("a plan");
        assert_eq!(
            p.added.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["e"]
        );
        assert_eq!(p.removed, ["c"]);
        assert_eq!(
            p.changed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(p.unchanged, 2);
        assert_eq!(
            p.summary(),
            "reloaded: 1 added, 1 removed, 1 changed, 2 unchanged"
        );
        assert_eq!(
            plan(&old, &old, false).expect("a plan").summary(),
            "reloaded: 0 added, 0 removed, 0 changed, 4 unchanged"
        );
    }

    #[test]
    fn replicas_are_agents_of_their_own() {
        let old = config(
            json!([{"id": "w", "command": "/bin/cat", "replicas": 3}]),
            json!({}),
        );
        let new = config(
            json!([{"id": "w", "command": "/bin/cat", "replicas": 2}]),
            json!({}),
        );
        let p = plan(&old, &new, false).expect("a plan");
        assert_eq!(p.removed, ["w-3"]);
        assert_eq!(p.unchanged, 2);
    }

    #[test]
    fn what_only_a_restart_can_change_is_refused_with_every_reason() {
        let old = config(json!([agent("a", &[])]), json!({}));
        let new = config(
            json!([{"id": "a", "command": "/bin/cat", "type": "other", "protocol": "none"}]),
            json!({"daemon_id": "e", "message": {"queue_capacity": 5}}),
        );
        let problems = plan(&old, &new, false).expect_err("refused");
        let all = problems.join("\n");
        for what in [
            "daemon_id changed",
            "message changed",
            "changes its type from claude to other",
            "changes its protocol from stream-json to none",
        ] {
            assert!(all.contains(what), "{what}: {all}");
        }
        assert!(problems
            .iter()
            .all(|p| p.starts_with("config /etc/ms.json: ")));
        assert_eq!(problems.len(), 4, "{all}");
    }

    #[test]
    fn durable_mode_keeps_its_agent_set() {
        let old = config(json!([agent("a", &[])]), json!({}));
        let more = config(json!([agent("a", &[]), agent("b", &[])]), json!({}));
        let changed = config(json!([agent("a", &["-u"])]), json!({}));
        assert!(plan(&old, &more, true).is_err());
        assert_eq!(plan(&old, &changed, true).expect("a plan").changed.len(), 1);
        assert_eq!(plan(&old, &more, false).expect("a plan").added.len(), 1);
    }
}

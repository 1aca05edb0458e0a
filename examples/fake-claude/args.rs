//! Argument parsing, modelled on commander.js (which the real CLI uses): the table of accepted
//! options, the parser with its exact error texts, and the `--help` text.

use std::collections::VecDeque;
use std::io::{self, Write};

use crate::output::{exit_now, fail};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    /// Boolean flag.
    Flag,
    /// `<value>`: always takes the next token, even one starting with `-`.
    Required,
    /// `[value]`: takes the next token unless it looks like an option.
    Optional,
    /// `<values...>`: like `Required`, then keeps taking tokens up to the next `-`-prefixed one.
    Variadic,
}

struct OptSpec {
    short: Option<char>,
    longs: &'static [&'static str],
    /// Key under which values are stored.
    key: &'static str,
    arity: Arity,
    /// The flags as commander prints them in error messages.
    display: &'static str,
    choices: &'static [&'static str],
}

const fn opt(
    short: Option<char>,
    longs: &'static [&'static str],
    arity: Arity,
    display: &'static str,
) -> OptSpec {
    OptSpec {
        short,
        longs,
        key: longs[0],
        arity,
        display,
        choices: &[],
    }
}

const fn choice(
    long: &'static [&'static str],
    display: &'static str,
    choices: &'static [&'static str],
) -> OptSpec {
    OptSpec {
        short: None,
        longs: long,
        key: long[0],
        arity: Arity::Required,
        display,
        choices,
    }
}

use Arity::{Flag, Optional, Required, Variadic};

/// Every option the fake accepts (`-h/--help` is handled like commander: outside this table).
const OPTIONS: &[OptSpec] = &[
    opt(Some('p'), &["--print"], Flag, "-p, --print"),
    choice(
        &["--output-format"],
        "--output-format <format>",
        &["text", "json", "stream-json"],
    ),
    choice(
        &["--input-format"],
        "--input-format <format>",
        &["text", "stream-json"],
    ),
    opt(None, &["--verbose"], Flag, "--verbose"),
    opt(None, &["--max-turns"], Required, "--max-turns <turns>"),
    opt(None, &["--model"], Required, "--model <model>"),
    opt(
        None,
        &["--allowedTools", "--allowed-tools"],
        Variadic,
        "--allowedTools, --allowed-tools <tools...>",
    ),
    opt(
        None,
        &["--disallowedTools", "--disallowed-tools"],
        Variadic,
        "--disallowedTools, --disallowed-tools <tools...>",
    ),
    opt(None, &["--tools"], Variadic, "--tools <tools...>"),
    choice(
        &["--permission-mode"],
        "--permission-mode <mode>",
        &[
            "acceptEdits",
            "auto",
            "bypassPermissions",
            "default",
            "dontAsk",
            "plan",
        ],
    ),
    opt(
        None,
        &["--append-system-prompt"],
        Required,
        "--append-system-prompt <prompt>",
    ),
    opt(
        None,
        &["--system-prompt"],
        Required,
        "--system-prompt <prompt>",
    ),
    opt(
        None,
        &["--append-system-prompt-file"],
        Required,
        "--append-system-prompt-file <file>",
    ),
    opt(
        None,
        &["--system-prompt-file"],
        Required,
        "--system-prompt-file <file>",
    ),
    opt(Some('r'), &["--resume"], Optional, "-r, --resume [value]"),
    opt(Some('c'), &["--continue"], Flag, "-c, --continue"),
    opt(None, &["--fork-session"], Flag, "--fork-session"),
    opt(None, &["--session-id"], Required, "--session-id <uuid>"),
    opt(
        None,
        &["--mcp-config"],
        Variadic,
        "--mcp-config <configs...>",
    ),
    opt(None, &["--strict-mcp-config"], Flag, "--strict-mcp-config"),
    opt(
        None,
        &["--dangerously-skip-permissions"],
        Flag,
        "--dangerously-skip-permissions",
    ),
    opt(
        None,
        &["--allow-dangerously-skip-permissions"],
        Flag,
        "--allow-dangerously-skip-permissions",
    ),
    opt(
        None,
        &["--include-partial-messages"],
        Flag,
        "--include-partial-messages",
    ),
    opt(
        None,
        &["--include-hook-events"],
        Flag,
        "--include-hook-events",
    ),
    opt(
        None,
        &["--replay-user-messages"],
        Flag,
        "--replay-user-messages",
    ),
    opt(
        None,
        &["--no-session-persistence"],
        Flag,
        "--no-session-persistence",
    ),
    opt(None, &["--bare"], Flag, "--bare"),
    opt(None, &["--settings"], Required, "--settings <file-or-json>"),
    opt(
        None,
        &["--setting-sources"],
        Required,
        "--setting-sources <sources>",
    ),
    opt(None, &["--add-dir"], Variadic, "--add-dir <directories...>"),
    opt(None, &["--betas"], Variadic, "--betas <betas...>"),
    opt(None, &["--file"], Variadic, "--file <specs...>"),
    opt(
        None,
        &["--fallback-model"],
        Required,
        "--fallback-model <model>",
    ),
    opt(
        None,
        &["--max-budget-usd"],
        Required,
        "--max-budget-usd <amount>",
    ),
    opt(None, &["--json-schema"], Required, "--json-schema <schema>"),
    opt(
        None,
        &["--permission-prompt-tool"],
        Required,
        "--permission-prompt-tool <tool>",
    ),
    opt(None, &["--agents"], Required, "--agents <json>"),
    opt(None, &["--agent"], Required, "--agent <agent>"),
    opt(None, &["--plugin-dir"], Variadic, "--plugin-dir <paths...>"),
    opt(
        None,
        &["--disable-slash-commands"],
        Flag,
        "--disable-slash-commands",
    ),
    opt(Some('d'), &["--debug"], Optional, "-d, --debug [filter]"),
    opt(None, &["--mcp-debug"], Flag, "--mcp-debug"),
    opt(None, &["--ide"], Flag, "--ide"),
    opt(Some('v'), &["--version"], Flag, "-v, --version"),
];

fn find_option(token: &str) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| {
        o.longs.contains(&token)
            || o.short.is_some_and(|c| {
                token.len() == 2 && token.strip_prefix('-') == Some(&*c.to_string())
            })
    })
}

fn find_short(c: char) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| o.short == Some(c))
}

/// commander's `maybeOption`.
fn looks_like_option(arg: &str) -> bool {
    arg.len() > 1 && arg.starts_with('-')
}

/// Raw result of parsing: values per option key (`None` for flags / absent optional values),
/// positional operands and unknown tokens.
#[derive(Default)]
pub(crate) struct Parsed {
    values: Vec<(&'static str, Option<String>)>,
    pub(crate) operands: Vec<String>,
    pub(crate) unknown: Vec<String>,
}

impl Parsed {
    pub(crate) fn has(&self, key: &str) -> bool {
        self.values.iter().any(|(k, _)| *k == key)
    }

    /// Last value given for `key` (commander keeps the last one for non-variadic options).
    pub(crate) fn last(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    /// commander's `option:<name>` event: validates choices, handles `--version` at once.
    fn set(&mut self, spec: &'static OptSpec, value: Option<String>, version: &str) {
        if spec.key == "--version" {
            let _ = writeln!(io::stdout().lock(), "{version} (Claude Code)");
            exit_now(0);
        }
        if let Some(v) = &value {
            if !spec.choices.is_empty() && !spec.choices.contains(&v.as_str()) {
                fail(&format!(
                    "error: option '{}' argument '{}' is invalid. Allowed choices are {}.",
                    spec.display,
                    v,
                    spec.choices.join(", ")
                ));
            }
        }
        self.values.push((spec.key, value));
    }
}

/// Parses argv (without argv0) the way commander's `parseOptions` does. Exits on errors that
/// commander reports while parsing (missing argument, bad choice) and on `--version`.
pub(crate) fn parse_argv(argv: &[String], version: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut args: VecDeque<String> = argv.iter().cloned().collect();
    let mut active_variadic: Option<&'static OptSpec> = None;
    let mut to_unknown = false;

    while let Some(arg) = args.pop_front() {
        if arg == "--" {
            let dest = if to_unknown {
                p.unknown.push(arg);
                &mut p.unknown
            } else {
                &mut p.operands
            };
            dest.extend(args.drain(..));
            break;
        }
        if let Some(spec) = active_variadic {
            if !looks_like_option(&arg) {
                p.set(spec, Some(arg), version);
                continue;
            }
        }
        active_variadic = None;

        if looks_like_option(&arg) {
            if let Some(spec) = find_option(&arg) {
                match spec.arity {
                    Required | Variadic => match args.pop_front() {
                        Some(v) => p.set(spec, Some(v), version),
                        None => fail(&format!(
                            "error: option '{}' argument missing",
                            spec.display
                        )),
                    },
                    Optional => {
                        let v = if args.front().is_some_and(|a| !looks_like_option(a)) {
                            args.pop_front()
                        } else {
                            None
                        };
                        p.set(spec, v, version);
                    }
                    Flag => p.set(spec, None, version),
                }
                if spec.arity == Variadic {
                    active_variadic = Some(spec);
                }
                continue;
            }
        }

        // Combined short options: `-pc`, `-rSESSION`.
        if arg.len() > 2 && arg.starts_with('-') && !arg.starts_with("--") {
            let mut chars = arg[1..].chars();
            if let Some(spec) = chars.next().and_then(find_short) {
                let rest: String = chars.collect();
                if spec.arity == Flag {
                    p.set(spec, None, version);
                    args.push_front(format!("-{rest}"));
                } else {
                    p.set(spec, Some(rest), version);
                }
                continue;
            }
        }

        // `--flag=value` (only for options that take a value; never starts a variadic run).
        if let Some(eq) = arg.find('=') {
            if arg.starts_with("--") && eq > 2 {
                if let Some(spec) = find_option(&arg[..eq]).filter(|s| s.arity != Flag) {
                    p.set(spec, Some(arg[eq + 1..].to_owned()), version);
                    continue;
                }
            }
        }

        // Unknown option: it and everything after it (except known options) is "unknown".
        if looks_like_option(&arg) {
            to_unknown = true;
        }
        if to_unknown {
            p.unknown.push(arg);
        } else {
            p.operands.push(arg);
        }
    }
    p
}

pub(crate) const HELP: &str = "Usage: claude [options] [command] [prompt]

Claude Code (fake-claude test double) - starts an interactive session by default, use -p/--print
for non-interactive output

Arguments:
  prompt                                            Your prompt

Options:
  -p, --print                                       Print response and exit (useful for pipes)
  --output-format <format>                          \"text\", \"json\" or \"stream-json\" (with --print)
  --input-format <format>                           \"text\" or \"stream-json\" (with --print)
  --verbose                                         Override verbose mode setting from config
  --include-partial-messages                        Include partial message chunks (stream-json)
  --replay-user-messages                            Re-emit user messages from stdin on stdout
  --model <model>                                   Model for the current session
  --allowedTools, --allowed-tools <tools...>        Tool names to allow
  --disallowedTools, --disallowed-tools <tools...>  Tool names to deny
  --tools <tools...>                                Built-in tools available (\"\" = none)
  --permission-mode <mode>                          acceptEdits, auto, bypassPermissions, default,
                                                    dontAsk, plan
  --dangerously-skip-permissions                    Bypass all permission checks
  --append-system-prompt <prompt>                   Append a system prompt
  --system-prompt <prompt>                          System prompt to use for the session
  --mcp-config <configs...>                         Load MCP servers from JSON files or strings
  --strict-mcp-config                               Only use MCP servers from --mcp-config
  --settings <file-or-json>                         Settings file or JSON string
  --setting-sources <sources>                       user, project, local
  --add-dir <directories...>                        Additional directories to allow tool access to
  -c, --continue                                    Continue the most recent conversation
  -r, --resume [value]                              Resume a conversation by session ID
  --fork-session                                    When resuming, create a new session ID
  --session-id <uuid>                               Use a specific session ID
  --no-session-persistence                          Do not save the session to disk
  --bare                                            Minimal mode
  -v, --version                                     Output the version number
  -h, --help                                        Display help for command
";

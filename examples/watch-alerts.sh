#!/usr/bin/env bash
# Watch the bus for alerts (an agent that spent its restart budget) and hand
# each to a command, one line per alert: "TIME AGENT CODE: MESSAGE".
#
#   examples/watch-alerts.sh [listen options...]      e.g. --count 1
#
# Set ALERT_COMMAND to what should receive the line (default: print it).
# Run it from systemd or tmux next to the daemon; it ends when listen does.
set -euo pipefail
alert_command=${ALERT_COMMAND:-cat}
mister-smith listen --type system_alert "$@" \
    | jq -r --unbuffered '"\(.timestamp) \(.payload.agent_id // "-") \(.payload.code): \(.payload.message)"' \
    | while IFS= read -r line; do
        printf '%s\n' "$line" | $alert_command
      done

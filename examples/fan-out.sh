#!/usr/bin/env bash
# Fan a list of prompts out to any agent of a type and collect the results.
#
#   examples/fan-out.sh prompts.txt [TYPE]      (or prompts on stdin)
#
# One prompt per line. Prints one tab-separated line per task, in completion
# order: task id, status, cost in USD, and the first line of the result.
# The exit code is send's: 0 all completed, 1 some failed, 75 timeouts or a
# full queue, 69 no agent of that type.
set -euo pipefail
input=${1:--}
type=${2:-claude}
if [ "$input" = "-" ]; then exec 3<&0; else exec 3<"$input"; fi
mister-smith send --agent-type "$type" --lines --wait <&3 \
    | jq -r '[.payload.task_id, .payload.status, (.payload.total_cost_usd // 0),
              ((.payload.result // (.payload.errors // [] | join("; "))) | split("\n")[0])] | @tsv'

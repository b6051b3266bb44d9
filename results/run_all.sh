#!/usr/bin/env bash
# The commands that produced results/<model>/{report.html,results.json}. Run from the repo root
# after `make install`. Stores and replies go to runs/ (not committed); each run resumes if killed.
# Limits were set so that the models fit one working session on 2 CPU cores.
set -euo pipefail
export HF_HUB_OFFLINE=1
SUITES=jailbreak,hallucination,deception,sysprompt
keep() { mkdir -p "results/$1" && cp "runs/results/$1/report.html" "runs/results/$1/results.json" "results/$1/"; }
run() {  # model limit dtype [extra study flags]
  .venv/bin/kvstate study --models "$1" --suites "$SUITES" --limit "$2" --dtype "$3" -o "runs/results/$1" "${@:4}"
  keep "$1"
}
case "${1:-all}" in
  smollm2-135m) run smollm2-135m 300 float32 ;;
  gemma3-270m) run gemma3-270m 120 float32 -c results/configs/no-taylor.toml ;;
  qwen2.5-0.5b) run qwen2.5-0.5b 120 float32 ;;
  qwen2.5-1.5b) run qwen2.5-1.5b 60 bfloat16 -c results/configs/no-taylor.toml ;;
  transfer-*)  # round 2: held-out transfer, benign thresholds, prefix monitors (results/configs/transfer.toml)
    m="${1#transfer-}"
    size=(--limit 80 --dtype bfloat16); [ "$m" = smollm2-135m ] && size=(--limit 120 --dtype float32)
    [ "$m" = qwen2.5-1.5b ] && size=(--limit 60 --dtype bfloat16)  # ~65 min on 2 CPU cores
    .venv/bin/kvstate study -c results/configs/transfer.toml --models "$m" "${size[@]}" -o "runs/results/transfer-$m"
    keep "transfer-$m" ;;
  request-*)  # deception for the qwens, which never give in to deception-pressure (results/configs/deception-request.toml)
    m="${1#request-}"
    .venv/bin/kvstate study -c results/configs/deception-request.toml --models "$m" --limit 490 --dtype bfloat16 -o "runs/results/request-$m"
    keep "request-$m" ;;
  bench-*)  # round 3: public benchmarks, leave-one-source-out, paired verdicts (kvstate benchmark; KVSTATE_DATA=../shared/benchmarks)
    rest="${1#bench-}"; task="${rest%%:*}"; m="${rest#*:}"   # bench-<task>:<model>
    case "$m:$task" in smollm2-135m:harmful-request) c=200 ;; smollm2-135m:*) c=120 ;; qwen2.5-0.5b:*) c=80 ;; *) c=40 ;; esac
    cap=(--max-per-source "$c")  # per source and label: what 2 shared CPU cores allowed in one session
    export KVSTATE_DATA="${KVSTATE_DATA:-$(cd .. && pwd)/shared/benchmarks}"
    .venv/bin/kvstate benchmark run -t "$task" -m "$m" "${cap[@]}" -o "runs/results/bench-$task-$m"
    mkdir -p "results/bench-$task-$m"
    cp runs/results/bench-"$task-$m"/{results.json,benchmark.md,benchmark.png} "results/bench-$task-$m/" ;;
  all) for m in smollm2-135m gemma3-270m qwen2.5-0.5b qwen2.5-1.5b; do "$0" "$m"; done ;;
esac

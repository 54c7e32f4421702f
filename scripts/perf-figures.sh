#!/usr/bin/env bash
# Runs the benchmark figures of docs/PERFORMANCE.md, each several times, and
# prints one summary line per figure with the median and the spread (min..max).
#
#   scripts/perf-figures.sh [redis-url]     (default redis://127.0.0.1:6379)
#
# Needs a release build (cargo build --release) and a Redis; run it on a quiet
# machine: every figure is CPU-bound on 2 cores. Raw JSON lines go to
# target/perf-figures/*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS=${1:-redis://127.0.0.1:6379}
BIN=target/release/dagflow
OUT=target/perf-figures
mkdir -p "$OUT"
RUNS=${RUNS:-5}

summary() { # file, then "label:json.path" pairs
  python3 - "$@" <<'PY'
import json, statistics, sys
path, fields = sys.argv[1], sys.argv[2:]
rows = [json.loads(l) for l in open(path) if l.startswith("{")]
def get(d, p):
    for k in p.split("."):
        d = d[k]
    return d
parts = []
for f in fields:
    label, p = f.split(":", 1)
    vals = [get(r, p) for r in rows]
    parts.append(f"{label} {statistics.median(vals):.4g} ({min(vals):.4g}..{max(vals):.4g})")
print(f"{path.split('/')[-1]}: n={len(rows)}; " + "; ".join(parts))
PY
}

bench() { # name, then bench args
  local name=$1; shift
  "$BIN" bench "$@" --redis-url "$REDIS" --no-progress > "$OUT/$name.jsonl" 2>/dev/null
}

# 1. Throughput and Redis commands: diamond W=10, 2,000 flows at once.
bench diamond-2000 diamond --width 10 --flows 2000 --runs "$RUNS"
summary "$OUT/diamond-2000.jsonl" "nodes/s:nodes_per_s" "cmds/node:redis_cmds_per_node" \
  "engine_us/node:cpu_us_per_node.process" "redis_us/node:cpu_us_per_node.redis" "rss_mb:peak_rss_mb"

# 2. Edge latency, one chain of 100 at a time.
bench chain-1 chain --depth 100 --flows 1 --runs "$RUNS"
summary "$OUT/chain-1.jsonl" "edge_p50:edge_latency_ms.p50" "edge_p99:edge_latency_ms.p99" \
  "edge_max:edge_latency_ms.max" "wall_s:wall_s"

# 3. Edge latency at half the maximum rate (RATE flows/s, diamond W=10).
RATE=${RATE:-1100}
bench rate-half diamond --width 10 --rate "$RATE" --duration 10 --runs 3
summary "$OUT/rate-half.jsonl" "flows/s:flows_per_s" "edge_p50:edge_latency_ms.p50" \
  "edge_p99:edge_latency_ms.p99" "flow_p99:flow_latency_ms.p99"

# 4. One flow of 10,000 nodes (1 -> 9,998 -> 1). The per-completion cost against a
#    10-node flow is measured by the criterion benches (cargo bench -p dagflow-actors).
bench wide-10k wide --width 9998 --flows 1 --runs 3
summary "$OUT/wide-10k.jsonl" "wall_s:wall_s" "nodes/s:nodes_per_s" \
  "engine_us/node:cpu_us_per_node.process" "rss_mb:peak_rss_mb"

# 5. Scaling: flow size (diamond width), flow count, worker concurrency.
for w in 10 100 1000; do
  bench "size-w$w" diamond --width "$w" --flows $((20000 / (w + 2))) --runs 3
  summary "$OUT/size-w$w.jsonl" "nodes/s:nodes_per_s" "engine_us/node:cpu_us_per_node.process" \
    "cmds/node:redis_cmds_per_node"
done
for f in 200 2000 10000; do
  bench "count-f$f" diamond --width 10 --flows "$f" --runs 3
  summary "$OUT/count-f$f.jsonl" "nodes/s:nodes_per_s" "engine_us/node:cpu_us_per_node.process" \
    "flow_p50:flow_latency_ms.p50" "rss_mb:peak_rss_mb"
done
for c in 4 16 64; do
  bench "conc-c$c" diamond --width 10 --flows 2000 --concurrency "$c" --runs 3
  summary "$OUT/conc-c$c.jsonl" "nodes/s:nodes_per_s" "engine_us/node:cpu_us_per_node.process" \
    "edge_p50:edge_latency_ms.p50"
done

# 6. POST /flows over HTTP, 64 connections, against a server on this machine that
#    also runs the flows.
DATA=$(mktemp -d)
PORT=${PORT:-7799}
"$BIN" serve --bind "127.0.0.1:$PORT" --redis-url "$REDIS" --prefix "perf-http-$$" \
  --data-dir "$DATA" --queues default=16 --log-filter warn &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
"$BIN" bench diamond --width 10 --flows 4000 --in-flight 64 --runs 3 \
  --over-http "http://127.0.0.1:$PORT" --redis-url "$REDIS" --no-progress \
  > "$OUT/http-64.jsonl" 2>/dev/null
summary "$OUT/http-64.jsonl" "creates/s:creates_per_s" "nodes/s:nodes_per_s" \
  "create_p99:create_latency_ms.p99"
kill $SERVER 2>/dev/null || true

# 7. 100,000 flows of 10 nodes (diamond W=8) waiting on a queue nobody serves:
#    memory once created, and once they all hibernated (10 s later).
bench idle-100k diamond --width 8 --idle --flows "${IDLE_FLOWS:-100000}" --runs 1
summary "$OUT/idle-100k.jsonl" "rss_mb:rss_mb" "kib/flow:rss_per_flow_kb" "flows/s:flows_per_s" \
  "hibernated_rss_mb:hibernated_rss_mb" "hibernated_kib/flow:hibernated_rss_per_flow_kb"

# 8. Restart with 10,000 unfinished flows: a server SIGKILLed, an engine started on
#    its data dir; time until every flow's actor is back, then until all complete.
bench restart-10k diamond --width 8 --restart --flows 10000 --runs 3
summary "$OUT/restart-10k.jsonl" "restart_s:restart_s" "complete_s:resumed_complete_s"

# 9. A run-time map of 9,998 items against the static diamond of the same size
#    (issue 12: within 10% of its nodes/s).
bench diamond-10k diamond --width 9998 --flows 10 --runs 3
summary "$OUT/diamond-10k.jsonl" "nodes/s:nodes_per_s" "engine_us/node:cpu_us_per_node.process" \
  "cmds/node:redis_cmds_per_node"
bench map-10k map --width 9998 --flows 10 --runs 3
summary "$OUT/map-10k.jsonl" "nodes/s:nodes_per_s" "engine_us/node:cpu_us_per_node.process" \
  "cmds/node:redis_cmds_per_node"

# 10. 100,000 flows waiting on a signal (a wait node, then one job): memory awake
#     and once hibernated.
bench signal-100k signal --idle --flows "${IDLE_FLOWS:-100000}" --runs 1
summary "$OUT/signal-100k.jsonl" "rss_mb:rss_mb" "kib/flow:rss_per_flow_kb" \
  "hibernated_rss_mb:hibernated_rss_mb" "hibernated_kib/flow:hibernated_rss_per_flow_kb"

# 11. The burst of issue 13 (flows that started go first) and what concurrency keys
#     cost: every node keyed, flows spread over 100 keys at limit 2, against the same
#     run without keys.
bench burst-10k diamond --width 10 --flows 10000 --concurrency 50 --runs 3
summary "$OUT/burst-10k.jsonl" "nodes/s:nodes_per_s" "edge_p50_ms:edge_latency_ms.p50" \
  "edge_p99_ms:edge_latency_ms.p99" "flow_p50_ms:flow_latency_ms.p50" "wall_s:wall_s" \
  "cmds/node:redis_cmds_per_node"
bench keys-100 diamond --width 10 --flows 10000 --concurrency 50 --keys 100 --key-limit 2 --runs 3
summary "$OUT/keys-100.jsonl" "nodes/s:nodes_per_s" "edge_p50_ms:edge_latency_ms.p50" \
  "flow_p50_ms:flow_latency_ms.p50" "cmds/node:redis_cmds_per_node" \
  "engine_us/node:cpu_us_per_node.process" "redis_us/node:cpu_us_per_node.redis"

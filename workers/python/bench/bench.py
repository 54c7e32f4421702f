"""End-to-end throughput of the Python worker: diamond flows (1 -> W -> 1) whose every
node runs a no-op handler on a queue only this worker serves.

It starts a redis-server on a free port (unless ``--redis-url``), a ``dagflow serve``
that serves no queue itself, and one ``python -m dagflow_worker`` process serving queue
``bench`` with ``--concurrency`` slots; submits ``--flows`` diamonds over HTTP (at most
``--in-flight`` creates outstanding), and waits until the server's ``/metrics`` count
them all finished. Prints one JSON line: nodes per second from the first submit to the
last flow finished, and the CPU each process used.

    python workers/python/bench/bench.py --flows 2000 --width 10 --concurrency 50

The dagflow binary: ``--dagflow-bin``, else ``$DAGFLOW_BIN``, else
``/tmp/dagflow-bin/dagflow-release``, ``target/release/dagflow``, ``target/debug/dagflow``
(the first that exists). Measure a release build: a debug engine is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import httpx
import redis

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
REPO = PACKAGE.parents[1]
QUEUE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(given: Optional[str]) -> Path:
    candidates = [given, os.environ.get("DAGFLOW_BIN"), "/tmp/dagflow-bin/dagflow-release",
                  str(REPO / "target" / "release" / "dagflow"), str(REPO / "target" / "debug" / "dagflow")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    sys.exit("no dagflow binary found: pass --dagflow-bin or set DAGFLOW_BIN (cargo build --release)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def diamond(width: int, i: int) -> dict[str, Any]:
    mids = [{"name": f"m{k}", "handler": "noop", "queue": QUEUE, "parents": ["source"]} for k in range(width)]
    return {"name": f"bench-{i}", "nodes": [
        {"name": "source", "handler": "noop", "queue": QUEUE},
        *mids,
        {"name": "sink", "handler": "noop", "queue": QUEUE, "parents": [m["name"] for m in mids]},
    ]}


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def finished_flows(metrics: str) -> int:
    total = 0
    for line in metrics.splitlines():
        if line.startswith("dagflow_flows_finished_total"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def drive(base_url: str, flows: int, width: int, in_flight: int, timeout: float) -> dict[str, Any]:
    """Submits the flows and waits until all finished; returns timings."""
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as http:
        before = finished_flows((await http.get("/metrics")).text)
        next_index = 0
        errors = 0

        async def submitter() -> None:
            nonlocal next_index, errors
            while next_index < flows:
                i = next_index
                next_index += 1
                response = await http.post("/flows", json=diamond(width, i))
                if response.status_code != 201:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*(submitter() for _ in range(in_flight)))
        created = time.monotonic()
        done = 0
        while True:
            done = finished_flows((await http.get("/metrics")).text) - before
            if done >= flows - errors or time.monotonic() - t0 > timeout:
                break
            await asyncio.sleep(0.05)
        wall = time.monotonic() - t0
        return {"wall_s": wall, "create_s": created - t0, "flows_finished": done, "create_errors": errors}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=2000)
    p.add_argument("--width", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=50, help="slots of the worker's queue")
    p.add_argument("--in-flight", type=int, default=64, help="creates outstanding at once")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--dagflow-bin")
    p.add_argument("--redis-url", help="use this Redis instead of starting one")
    p.add_argument("--uvloop", action="store_true", help="run the worker on uvloop")
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()

    binary = find_binary(args.dagflow_bin)
    tmp = Path(tempfile.mkdtemp(prefix="dagflow-pybench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_proc = None
        if args.redis_url:
            redis_url = args.redis_url
        else:
            port = free_port()
            redis_proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(redis_proc)
            redis_url = f"redis://127.0.0.1:{port}"
        r = redis.Redis.from_url(redis_url)
        wait_for(r.ping, 10, "redis")
        for run in range(1, args.runs + 1):
            prefix = f"pybench-{uuid.uuid4().hex[:8]}"
            api_port = free_port()
            server = subprocess.Popen(
                [str(binary), "serve", "--bind", f"127.0.0.1:{api_port}", "--redis-url", redis_url,
                 "--prefix", prefix, "--data-dir", str(tmp / f"data-{run}"), "--queues=",
                 "--log-filter", "warn"],
                stdout=subprocess.DEVNULL, stderr=open(tmp / f"server-{run}.log", "wb"))
            procs.append(server)
            base = f"http://127.0.0.1:{api_port}"
            wait_for(lambda: httpx.get(f"{base}/readyz", timeout=1).status_code == 200, 30, "dagflow serve")
            worker_cmd = [sys.executable, "-m", "dagflow_worker", "--redis-url", redis_url, "--prefix", prefix,
                          "--queues", f"{QUEUE}={args.concurrency}", "--handlers", "bench_handlers:handlers",
                          "--log-level", "WARNING"]
            if args.uvloop:
                worker_cmd.append("--uvloop")
            worker = subprocess.Popen(
                worker_cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / f"worker-{run}.log", "wb"),
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE / "src"), str(HERE)])})
            procs.append(worker)
            wait_for(lambda: r.hlen(f"{prefix}:workers") > 0, 30, "the worker's heartbeat")
            cpu0 = {name: cpu_seconds(pr.pid) for name, pr in
                    (("server", server), ("worker", worker), ("redis", redis_proc)) if pr is not None}
            timings = asyncio.run(drive(base, args.flows, args.width, args.in_flight, args.timeout))
            cpu = {f"{name}_cpu_s": round(cpu_seconds(pr.pid) - cpu0[name], 2) for name, pr in
                   (("server", server), ("worker", worker), ("redis", redis_proc)) if pr is not None}
            nodes_per_flow = args.width + 2
            nodes = timings["flows_finished"] * nodes_per_flow
            line = {
                "shape": "diamond", "width": args.width, "nodes_per_flow": nodes_per_flow,
                "flows_submitted": args.flows, **timings,
                "nodes_per_s": round(nodes / timings["wall_s"], 1),
                "flows_per_s": round(timings["flows_finished"] / timings["wall_s"], 1),
                "concurrency": args.concurrency, "in_flight": args.in_flight, **cpu,
                "worker_cpu_us_per_node": round(cpu["worker_cpu_s"] * 1e6 / max(nodes, 1), 1),
                "uvloop": args.uvloop, "hiredis": _has("hiredis"), "python": platform.python_version(),
                "dagflow_bin": str(binary), "run": run,
            }
            print(json.dumps(line), flush=True)
            for pr in (worker, server):
                pr.terminate()
                pr.wait(30)
            r.eval("for _, k in ipairs(redis.call('KEYS', ARGV[1] .. ':*')) do redis.call('DEL', k) end",
                   0, prefix)
            if timings["flows_finished"] < args.flows:
                return 1
        return 0
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())

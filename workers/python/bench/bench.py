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


def machine_cpu_seconds() -> float:
    """CPU time all processes of the machine used so far (user, nice, system, irq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # not idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


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


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client for the benchmark's own requests.

    httpx spends more CPU per request than the whole engine spends per flow, and the
    driver shares the machine with what it measures; this sends pre-encoded requests
    and reads ``Content-Length`` bodies, nothing more.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def drive(host: str, port: int, flows: int, width: int, in_flight: int, timeout: float) -> dict[str, Any]:
    """Submits the flows (at most ``in_flight`` creates outstanding) and waits until the
    server's metrics count them all finished; returns timings."""
    body = json.dumps(diamond(width, 0)).encode()
    probe = RawHttp(host, port)
    before = finished_flows((await probe.request("GET", "/metrics"))[1].decode())
    next_index = 0
    errors = 0

    async def submitter() -> None:
        nonlocal next_index, errors
        http = RawHttp(host, port)
        try:
            while next_index < flows:
                next_index += 1
                status, _ = await http.request("POST", "/flows", body)
                if status != 201:
                    errors += 1
        finally:
            http.close()

    t0 = time.monotonic()
    await asyncio.gather(*(submitter() for _ in range(in_flight)))
    created = time.monotonic()
    done = 0
    while True:
        done = finished_flows((await probe.request("GET", "/metrics"))[1].decode()) - before
        if done >= flows - errors or time.monotonic() - t0 > timeout:
            break
        await asyncio.sleep(0.02)
    wall = time.monotonic() - t0
    probe.close()
    return {"wall_s": round(wall, 3), "create_s": round(created - t0, 3), "flows_finished": done,
            "create_errors": errors}


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
            machine0 = machine_cpu_seconds()
            cpu0 = {name: cpu_seconds(pr.pid) for name, pr in
                    (("server", server), ("worker", worker), ("redis", redis_proc)) if pr is not None}
            timings = asyncio.run(drive("127.0.0.1", api_port, args.flows, args.width, args.in_flight,
                                        args.timeout))
            cpu = {f"{name}_cpu_s": round(cpu_seconds(pr.pid) - cpu0[name], 2) for name, pr in
                   (("server", server), ("worker", worker), ("redis", redis_proc)) if pr is not None}
            machine = machine_cpu_seconds() - machine0
            # Cores that other processes (this driver included) kept busy meanwhile: far
            # above 0 means the run shared the machine and the figure is low.
            background = (machine - sum(cpu.values())) / timings["wall_s"]
            nodes_per_flow = args.width + 2
            nodes = timings["flows_finished"] * nodes_per_flow
            line = {
                "shape": "diamond", "width": args.width, "nodes_per_flow": nodes_per_flow,
                "flows_submitted": args.flows, **timings,
                "nodes_per_s": round(nodes / timings["wall_s"], 1),
                "flows_per_s": round(timings["flows_finished"] / timings["wall_s"], 1),
                "concurrency": args.concurrency, "in_flight": args.in_flight, **cpu,
                "worker_cpu_us_per_node": round(cpu["worker_cpu_s"] * 1e6 / max(nodes, 1), 1),
                "background_cpu_cores": round(background, 2), "cores": os.cpu_count(),
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

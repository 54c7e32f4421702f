"""Test harness: real redis-server processes, a real ``dagflow serve``, worker processes.

Each test gets its own key prefix; tests that wipe or stop Redis get their own
redis-server. The dagflow binary comes from ``DAGFLOW_BIN`` (default
``target/debug/dagflow`` at the repository root); e2e tests fail, loudly, when it is
missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Optional

import httpx
import pytest
import redis
import redis.asyncio

from dagflow_worker import Worker
from dagflow_worker.protocol import DEFAULT_PRIORITY, Keys, lane_index
from dagflow_worker.scripts import Script

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
REPO = PACKAGE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0,
                     interval: float = 0.05, what: str = "condition") -> Any:
    """Polls ``check`` until it returns something truthy; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class RedisServer:
    """A redis-server on a free port, without persistence, in its own directory."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH; the tests need it (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dagflow-py-redis-")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (for FLUSHALL and outages)."""
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def prefix() -> str:
    return f"pytest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def r(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(shared_redis.url)
    yield client
    await client.aclose()


def engine_script(name: str) -> Script:
    """``lua/{name}.lua`` as the engine runs it: prefixed with ``limits.lua``, whose
    functions (``place_job``, ...) it calls."""
    source = Script.load("limits").source + Script.load(name).source
    return Script(name, source, hashlib.sha1(source).hexdigest())


ENQUEUE = engine_script("enqueue")


def default_lane(keys: Keys, queue: str) -> str:
    """The lane of a job of priority 5 whose flow has started, ``P:q:{queue}:5``:
    where :class:`Enqueuer` puts jobs unless told otherwise."""
    return keys.lane(queue, DEFAULT_PRIORITY, False)


@dataclass
class Enqueuer:
    """Adds jobs with the engine's own ``enqueue.lua``, as the engine does: each on
    the lane of its envelope's ``priority`` (5 when it has none), the started one
    unless ``new``."""

    client: redis.asyncio.Redis
    keys: Keys
    flow_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def envelope(self, node: str, handler: str, queue: str, *, data: Any = None,
                 parents: Optional[dict[str, Any]] = None, attempt: int = 1,
                 timeout_ms: Optional[int] = None, max_stalled: int = 1,
                 priority: Optional[int] = None, traceparent: Optional[str] = None) -> dict[str, Any]:
        env: dict[str, Any] = {
            "v": 1, "id": f"{self.flow_id}:{node}:{attempt}", "flowId": self.flow_id, "node": node,
            "attempt": attempt, "handler": handler, "queue": queue,
            "input": {"data": data, "parents": parents or {}}, "maxStalled": max_stalled,
            "enqueuedAtMs": int(time.time() * 1000),
        }
        if timeout_ms is not None:
            env["timeoutMs"] = timeout_ms
        if priority is not None:
            env["priority"] = priority
        if traceparent is not None:
            env["traceparent"] = traceparent
        return env

    def lane(self, env: dict[str, Any], new: bool = False) -> str:
        """The lane stream ``env`` goes to."""
        return self.keys.lane(env["queue"], env.get("priority", DEFAULT_PRIORITY), new)

    async def add(self, *envelopes: dict[str, Any], new: bool = False) -> None:
        import json

        keys = [self.keys.flow_jobs(self.flow_id)]
        args: list[Any] = ["workers"]
        for env in envelopes:
            priority = env.get("priority", DEFAULT_PRIORITY)
            keys += [self.lane(env, new), self.keys.delayed(env["queue"])]
            # Ready now (due 0), no concurrency or rate limits ("").
            args += [f"{env['node']}:{env['attempt']}", env["queue"], 0, lane_index(priority, new), "",
                     json.dumps(env)]
        keys.append(self.keys.delayed_queues)
        await ENQUEUE.call(self.client, keys, args)


@contextlib.asynccontextmanager
async def running_worker(worker: Worker) -> AsyncIterator[Worker]:
    """Runs ``worker`` in this loop for the block, then shuts it down gracefully."""
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        yield worker
    finally:
        worker.close()
        await asyncio.wait_for(task, worker.shutdown_timeout + 10)


async def completion_records(client: redis.asyncio.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every record on ``P:completions``, fields decoded, outcome parsed."""
    import json

    out = []
    for _id, fields in await client.xrange(keys.completions):
        rec = {k.decode(): v.decode() for k, v in fields.items()}
        rec["outcome"] = json.loads(rec["outcome"])
        out.append(rec)
    return out


# ------------------------------------------------------------------ dagflow serve


def dagflow_bin() -> Path:
    path = Path(os.environ.get("DAGFLOW_BIN") or REPO / "target" / "debug" / "dagflow")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"dagflow binary not found at {path}: build it (cargo build) or set DAGFLOW_BIN "
            "to a dagflow executable; the end-to-end tests run a real `dagflow serve`"
        )
    return path


@dataclass
class DagflowServer:
    proc: subprocess.Popen[bytes]
    base_url: str
    redis_url: str
    prefix: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def dagflow_server(shared_redis: RedisServer, prefix: str, tmp_path: Path) -> Iterator[Callable[..., DagflowServer]]:
    """Starts ``dagflow serve`` (Rust handlers on queue ``default``) on a free port."""
    started: list[DagflowServer] = []

    def start(lease: str = "30s", queues: str = "default", redis_url: Optional[str] = None,
              extra_args: tuple[str, ...] = (), env: Optional[dict[str, str]] = None) -> DagflowServer:
        binary = dagflow_bin()
        port = free_port()
        log_path = tmp_path / f"dagflow-{len(started)}.log"
        url = redis_url or shared_redis.url
        proc = subprocess.Popen(
            [str(binary), "serve", "--bind", f"127.0.0.1:{port}", "--redis-url", url,
             "--prefix", prefix, "--data-dir", str(tmp_path / f"data-{len(started)}"),
             "--queues", queues, "--lease", lease, "--shutdown-timeout", "2s", *extra_args],
            stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), **(env or {})},
        )
        server = DagflowServer(proc, f"http://127.0.0.1:{port}", url, prefix, log_path)
        started.append(server)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagflow serve exited with {proc.returncode}:\n{server.log()[-3000:]}")
            try:
                if httpx.get(f"{server.base_url}/readyz", timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagflow serve not ready after 30 s:\n{server.log()[-3000:]}")
            time.sleep(0.05)

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(10)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts ``python -m dagflow_worker`` with the handlers of ``e2e_handlers``."""
    started: list[WorkerProcess] = []

    def start(redis_url: str, prefix: str, queues: str = "py=4", *extra: str,
              env: Optional[dict[str, str]] = None) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagflow_worker", "--redis-url", redis_url, "--prefix", prefix,
             "--queues", queues, "--handlers", "e2e_handlers:handlers", "--log-level", "DEBUG", *extra],
            stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
            env={**os.environ, **(env or {}),
                 "PYTHONPATH": os.pathsep.join([str(PACKAGE / "src"), str(HERE)])},
        )
        wp = WorkerProcess(proc, log_path)
        started.append(wp)
        return wp

    yield start
    for wp in started:
        if wp.proc.poll() is None:
            wp.proc.kill()
            wp.proc.wait()

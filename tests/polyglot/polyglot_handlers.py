"""Python handlers of the cross-language test (tests/polyglot/polyglot.test.mjs).

Served by ``python3 -m dagflow_worker --handlers polyglot_handlers:handlers``. Every
result carries ``"lang": "py"`` and this process's id, so the test can tell which
language and which process ran a node; every handler prints one line on stdout per
run (``<event> <job id> <pid>``), which the test reads to see attempts and runs the
engine's view does not show (a run cut short by SIGKILL leaves no result).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from dagflow_worker import Job, Retryable

#: Attempts this process has run, per node of a flow: the retry handler returns them,
#: so the result proves all three attempts ran here, in Python.
_attempts_seen: dict[str, list[int]] = {}


def _say(event: str, job: Job) -> None:
    # flush: the test reads these lines while the process runs.
    print(f"{event} {job.id} {os.getpid()}", flush=True)


async def py_side(job: Job) -> Any:
    """One side of the diamond: triples the root's ``n`` and returns what it saw."""
    _say("ran", job)
    n = job.parents["src"]["data"]["n"]
    return {"lang": "py", "pid": os.getpid(), "job": job.id, "value": n * 3, "sawParents": job.parents}


async def flaky(job: Job) -> Any:
    """Fails retryably on attempts 1 and 2, succeeds on attempt 3."""
    seen = _attempts_seen.setdefault(f"{job.flow_id}:{job.node}", [])
    seen.append(job.attempt)
    _say("attempt", job)
    if job.attempt < 3:
        raise Retryable(f"python flaky failure on attempt {job.attempt}")
    return {"lang": "py", "pid": os.getpid(), "attempt": job.attempt, "attemptsSeen": list(seen)}


async def slow(job: Job) -> Any:
    """Sleeps ``data["ms"]``: long enough for the test to SIGKILL the process mid-job."""
    _say("started", job)
    await asyncio.sleep(job.data["ms"] / 1000)
    _say("finished", job)
    return {"lang": "py", "pid": os.getpid(), "job": job.id, "sleptMs": job.data["ms"]}


handlers = {"py-side": py_side, "flaky": flaky, "slow": slow}

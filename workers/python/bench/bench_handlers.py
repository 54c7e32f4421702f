"""Handlers of the benchmark's worker process: a no-op, so that what is measured is
the worker, the engine and Redis, not the job."""

from __future__ import annotations

from typing import Any

from dagflow_worker import Job


async def noop(job: Job) -> Any:
    return None


handlers = {"noop": noop}

"""Handlers of the worker processes the end-to-end tests start
(``python -m dagflow_worker --handlers e2e_handlers:handlers``)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

from dagflow_worker import Job


async def slow(job: Job) -> Any:
    """Leaves a marker file per run in ``data["dir"]`` (so a test can count runs and
    see which process ran them), then sleeps ``data["ms"]``."""
    marker = Path(job.data["dir"]) / f"{job.node}.{os.getpid()}.{uuid.uuid4().hex[:6]}.started"
    marker.write_text(str(time.time()))
    await asyncio.sleep(job.data["ms"] / 1000)
    marker.with_suffix(".finished").write_text(str(time.time()))
    return {"pid": os.getpid(), "sleptMs": job.data["ms"]}


handlers = {"slow": slow}

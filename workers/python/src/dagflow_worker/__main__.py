"""``python -m dagflow_worker``: run a worker from the command line.

    python -m dagflow_worker --redis-url redis://127.0.0.1:6379 --queues py=4 \\
        --handlers mymodule:handlers

``--handlers module:attribute`` names a dict of handler name -> async function
(``module`` alone means ``module:handlers``); the current directory is importable.
Every flag has an environment twin (``DAGFLOW_REDIS_URL``, ``DAGFLOW_PREFIX``,
``DAGFLOW_QUEUES``, ...), as ``dagflow worker`` has. Exit codes: 0 after a graceful
shutdown, 2 for bad arguments, 3 when the worker failed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from .worker import Worker

#: Concurrency of a queue given without ``=N`` (the same as ``dagflow worker``).
DEFAULT_CONCURRENCY = 16


def parse_queues(text: str) -> dict[str, int]:
    """``"py=4,gpu"`` -> ``{"py": 4, "gpu": 16}``; raises ``ValueError`` with the reason."""
    queues: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, count = part.partition("=")
        name = name.strip()
        if name in queues:
            raise ValueError(f"queue {name!r} is given twice")
        try:
            concurrency = int(count) if count else DEFAULT_CONCURRENCY
        except ValueError:
            raise ValueError(f"queue {name!r}: concurrency {count!r} is not a number") from None
        if concurrency < 1:
            raise ValueError(f"queue {name!r}: concurrency must be at least 1")
        queues[name] = concurrency
    if not queues:
        raise ValueError("no queue given")
    return queues


def load_handlers(ref: str) -> Mapping[str, Any]:
    """Imports ``module:attribute`` (default attribute ``handlers``), a dict of handlers."""
    module_name, _, attr = ref.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import handlers module {module_name!r}: {e}") from None
    handlers = getattr(module, attr or "handlers", None)
    if not isinstance(handlers, Mapping):
        raise ValueError(f"{module_name}:{attr or 'handlers'} is not a dict of handler name -> function")
    return handlers


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m dagflow_worker", description="Serve dagflow queues with Python handlers.")
    p.add_argument("--redis-url", default=env("DAGFLOW_REDIS_URL", "redis://127.0.0.1:6379"),
                   help="Redis of the dagflow deployment [DAGFLOW_REDIS_URL]")
    p.add_argument("--prefix", default=env("DAGFLOW_PREFIX", "dagflow"),
                   help="key prefix, the same as the server's [DAGFLOW_PREFIX]")
    p.add_argument("--queues", default=env("DAGFLOW_QUEUES"), required=env("DAGFLOW_QUEUES") is None,
                   help="comma list of name or name=concurrency [DAGFLOW_QUEUES]")
    p.add_argument("--handlers", default=env("DAGFLOW_HANDLERS"), required=env("DAGFLOW_HANDLERS") is None,
                   help="module:attribute naming a dict of handlers [DAGFLOW_HANDLERS]")
    p.add_argument("--consumer", default=env("DAGFLOW_CONSUMER"),
                   help="stable consumer name, unique per process: a restart under it resumes "
                        "unfinished jobs at once [DAGFLOW_CONSUMER]")
    p.add_argument("--lease-ms", type=int, default=None,
                   help="override the lease the engine publishes in P:config")
    p.add_argument("--shutdown-timeout", type=float, default=float(env("DAGFLOW_SHUTDOWN_TIMEOUT_S", "30")),
                   help="seconds running jobs get to finish on SIGTERM/SIGINT [DAGFLOW_SHUTDOWN_TIMEOUT_S]")
    p.add_argument("--log-level", default=env("DAGFLOW_LOG_LEVEL", "INFO"), help="[DAGFLOW_LOG_LEVEL]")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (must be installed)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        queues = parse_queues(args.queues)
        handlers = load_handlers(args.handlers)
        worker = Worker(args.redis_url, queues, handlers, prefix=args.prefix, consumer=args.consumer,
                        lease_ms=args.lease_ms, shutdown_timeout=args.shutdown_timeout)
    except (ValueError, TypeError) as e:
        print(f"dagflow_worker: {e}", file=sys.stderr)
        return 2
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(worker.run())
        else:
            asyncio.run(worker.run())
    except Exception as e:  # one line, as the dagflow CLI reports failures
        logging.getLogger("dagflow_worker").debug("worker failed", exc_info=True)
        print(f"dagflow_worker: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

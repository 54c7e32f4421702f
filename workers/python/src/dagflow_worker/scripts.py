"""The engine's Lua scripts, shipped inside the package, and how they are called.

The files in ``lua/`` are byte-for-byte copies of ``actors/src/queue/lua/`` (the
normative text of every atomic step of the protocol); ``scripts/sync_lua.py`` copies
them and a test fails while they differ. Scripts run with ``EVALSHA``; a Redis that
does not know one yet (new, restarted, ``SCRIPT FLUSH``) answers ``NOSCRIPT``, and the
script is loaded and the call repeated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError


@dataclass(frozen=True)
class Script:
    """One Lua script: its text and SHA1."""

    name: str
    source: bytes
    sha: str

    @classmethod
    def load(cls, name: str) -> "Script":
        """Reads ``lua/{name}.lua`` from the installed package."""
        source = resources.files(__package__).joinpath("lua").joinpath(f"{name}.lua").read_bytes()
        return cls(name, source, hashlib.sha1(source).hexdigest())

    async def call(self, redis: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Runs the script once, loading it first if Redis does not have it."""
        try:
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.execute_command("SCRIPT", "LOAD", self.source)
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


def is_noscript(error: BaseException) -> bool:
    """True for a ``NOSCRIPT`` reply (inside a pipeline it may arrive as a plain
    ``ResponseError``)."""
    return isinstance(error, NoScriptError) or (
        isinstance(error, ResponseError) and str(error).startswith("NOSCRIPT")
    )


TAKE = Script.load("take")
REPORT = Script.load("report")
HEARTBEAT = Script.load("heartbeat")

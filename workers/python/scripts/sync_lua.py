"""Copy the normative Lua scripts of the engine into the package.

The scripts in ``actors/src/queue/lua/`` are the protocol's normative text; the
package ships byte-for-byte copies so that it works when installed away from the
repository. Run this after any change there (``python workers/python/scripts/sync_lua.py``);
``tests/test_lua_sync.py`` fails while the copies differ.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2] / "actors" / "src" / "queue" / "lua"
TARGET = HERE.parent / "src" / "dagflow_worker" / "lua"


def main() -> int:
    if not SOURCE.is_dir():
        print(f"no Lua scripts at {SOURCE}: run this inside the dagflow repository", file=sys.stderr)
        return 1
    TARGET.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in SOURCE.glob("*.lua"))
    for stale in TARGET.glob("*.lua"):
        if stale.name not in names:
            stale.unlink()
    for name in names:
        shutil.copyfile(SOURCE / name, TARGET / name)
    print(f"copied {len(names)} scripts into {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

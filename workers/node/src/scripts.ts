/**
 * The protocol's Lua scripts, read from `dist/lua/` next to this module. The build
 * (`scripts/build.mjs`) copies them there from the repository's
 * `actors/src/queue/lua/`: they are the normative text of every atomic operation,
 * so they are never re-typed here.
 *
 * @module
 */

import { readFileSync } from "node:fs";

/** The scripts a worker runs, by name. */
export interface LuaScripts {
  /** `take.lua`: up to n ready jobs of a queue, best lane first, or the ids to block after. */
  take: string;
  /** `report.lua`: a completion record, plus ack, delete and `done` for a final outcome. */
  report: string;
  /** `heartbeat.lua`: the worker's `P:workers` entry, stamped with the Redis clock. */
  heartbeat: string;
}

let cached: LuaScripts | undefined;

/** Reads the scripts once; throws with the path when the package was built without them. */
export function luaScripts(): LuaScripts {
  if (!cached) {
    const read = (name: string): string => {
      const url = new URL(`./lua/${name}`, import.meta.url);
      try {
        return readFileSync(url, "utf8");
      } catch (e) {
        throw new Error(
          `dagflow: cannot read the protocol script ${url.pathname} (${(e as Error).message}); ` +
            "build the package with `npm run build` inside the dagflow repository",
        );
      }
    };
    cached = { take: read("take.lua"), report: read("report.lua"), heartbeat: read("heartbeat.lua") };
  }
  return cached;
}

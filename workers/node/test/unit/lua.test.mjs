// The package runs the protocol's own Lua scripts: the build copies them from the
// repository, and this checks that the copies in dist/lua are byte-for-byte those of
// actors/src/queue/lua (a stale build would speak an old protocol).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";

import { packageRoot } from "../helpers.mjs";

it("ships byte-for-byte copies of take.lua, report.lua and heartbeat.lua", () => {
  const repo = join(packageRoot, "..", "..", "actors", "src", "queue", "lua");
  for (const name of ["take.lua", "report.lua", "heartbeat.lua"]) {
    const shipped = readFileSync(join(packageRoot, "dist", "lua", name));
    const normative = readFileSync(join(repo, name));
    assert.ok(shipped.equals(normative), `dist/lua/${name} differs from ${join(repo, name)}: run npm run build`);
  }
});

// Builds the package: copies the protocol's Lua scripts from the repository into
// dist/lua (they are normative and change with the engine, so they are never copied
// by hand into TypeScript strings), then compiles src/ with tsc.
//
// Outside the repository (the package was packed and installed elsewhere) the Lua
// directory is absent; then the copy already in dist/lua, made when the package was
// packed, is kept.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const luaSource = join(root, "..", "..", "actors", "src", "queue", "lua");
const luaTarget = join(root, "dist", "lua");
const needed = ["take.lua", "report.lua", "heartbeat.lua"];

if (existsSync(luaSource)) {
  mkdirSync(luaTarget, { recursive: true });
  for (const name of readdirSync(luaSource)) {
    if (name.endsWith(".lua")) copyFileSync(join(luaSource, name), join(luaTarget, name));
  }
} else if (!needed.every((name) => existsSync(join(luaTarget, name)))) {
  console.error(
    `build: the protocol's Lua scripts are neither in ${luaSource} (the dagflow repository) ` +
      `nor already in ${luaTarget}; build the package inside the repository`,
  );
  process.exit(1);
}

let tsc;
try {
  tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
} catch {
  if (existsSync(join(root, "dist", "index.js"))) {
    // Installed without dev dependencies but already built: nothing to compile.
    process.exit(0);
  }
  console.error("build: typescript is not installed; run `npm install` in workers/node first");
  process.exit(1);
}
const args = [tsc, "-p", join(root, "tsconfig.json"), ...process.argv.slice(2)];
const result = spawnSync(process.execPath, args, { stdio: "inherit" });
process.exit(result.status ?? 1);

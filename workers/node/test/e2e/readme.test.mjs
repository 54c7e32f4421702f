// The README's example runs as written: it is examples/quickstart.ts verbatim (checked
// here), compiled with tsc the way the README says, in a fresh directory that
// installs this package, and run against a real dagflow serve and Redis.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, it } from "node:test";

import { packageRoot, startRedis, startServer, uniquePrefix } from "../helpers.mjs";

let redisServer;
let server;
let prefix;
let dir;

before(async () => {
  redisServer = await startRedis();
  prefix = uniquePrefix("readme");
  server = await startServer({ redisUrl: redisServer.url, prefix });
  dir = mkdtempSync(join(tmpdir(), "dfnode-readme-"));
  // A project that installed the package (npm links a local path the same way) and
  // ran `npm install -D typescript @types/node`, as the README says (taken from this
  // package's dev dependencies).
  mkdirSync(join(dir, "node_modules", "@dagflow"), { recursive: true });
  symlinkSync(packageRoot, join(dir, "node_modules", "@dagflow", "node"), "dir");
  mkdirSync(join(dir, "node_modules", "@types"), { recursive: true });
  symlinkSync(join(packageRoot, "node_modules", "@types", "node"), join(dir, "node_modules", "@types", "node"), "dir");
  writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module", private: true }));
});

after(async () => {
  await server?.stop();
  await redisServer?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Sets up `dir` as a project that installed this package, compiles `file` there with tsc and runs it. */
function compileAndRun(file) {
  const name = file.replace(/^.*\//, "");
  writeFileSync(join(dir, name), readFileSync(file, "utf8"));
  const tsc = createRequire(join(packageRoot, "package.json")).resolve("typescript/bin/tsc");
  // The README's compile command.
  const compiled = spawnSync(process.execPath, [tsc, "--strict", "--module", "nodenext", "--target", "es2022", name], {
    cwd: dir,
    encoding: "utf8",
  });
  assert.equal(compiled.status, 0, `tsc ${name} failed:\n${compiled.stdout}${compiled.stderr}`);
  const run = spawnSync(process.execPath, [name.replace(/\.ts$/, ".js")], {
    cwd: dir,
    encoding: "utf8",
    timeout: 60_000,
    env: { ...process.env, DAGFLOW_REDIS_URL: redisServer.url, DAGFLOW_SERVER: server.baseUrl, DAGFLOW_PREFIX: prefix },
  });
  assert.equal(run.status, 0, `${name} failed:\n${run.stdout}${run.stderr}`);
  return run.stdout.trim();
}

it("the README example is examples/quickstart.ts, and it compiles and runs as written", () => {
  const example = readFileSync(join(packageRoot, "examples", "quickstart.ts"), "utf8");
  const readme = readFileSync(join(packageRoot, "README.md"), "utf8");
  assert.ok(readme.includes(example.trim()), "README.md must contain examples/quickstart.ts verbatim");
  assert.equal(
    compileAndRun(join(packageRoot, "examples", "quickstart.ts")),
    'completed {"data":null,"parents":{"count-words":{"longest":"quick","words":5}}}',
  );
});

it("docs/FROM-BULLMQ.md's translated flow is examples/from-bullmq.ts, and it runs as written", () => {
  const example = readFileSync(join(packageRoot, "examples", "from-bullmq.ts"), "utf8");
  const doc = readFileSync(join(packageRoot, "..", "..", "docs", "FROM-BULLMQ.md"), "utf8");
  assert.ok(doc.includes(example.trim()), "docs/FROM-BULLMQ.md must contain examples/from-bullmq.ts verbatim");
  assert.equal(compileAndRun(join(packageRoot, "examples", "from-bullmq.ts")), 'completed "margin 500 on costs 700"');
});

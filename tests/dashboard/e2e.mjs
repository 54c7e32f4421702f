// Drives the dagflow dashboard in headless Chromium (playwright-core, the system
// Chromium). Spawned by tests/dashboard.rs, which starts the servers and passes:
//
//   DAGFLOW_URL          a server without a token
//   DAGFLOW_TOKEN_URL    a server that wants DAGFLOW_TOKEN
//   DAGFLOW_TOKEN
//   CHROMIUM_PATH        default /usr/bin/chromium
//   DASHBOARD_SCREENSHOT when set, where to save the flow-page screenshot (docs/dashboard.png)
//   DASHBOARD_ARTIFACTS  where a failure screenshot goes (default: the temp dir)
//
// Prints one line `RESULT {json}` with the ids of the flows it made, for the Rust
// side to check over the API, and exits non-zero on the first failed check.

import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import os from 'node:os';

const here = path.dirname(fileURLToPath(import.meta.url));
const URL_PLAIN = mustEnv('DAGFLOW_URL');
const URL_TOKEN = mustEnv('DAGFLOW_TOKEN_URL');
const TOKEN = mustEnv('DAGFLOW_TOKEN');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT || '';
const ARTIFACTS = process.env.DASHBOARD_ARTIFACTS || os.tmpdir();
const WAIT = 20000;

function mustEnv(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`missing environment variable ${name} (this script is run by tests/dashboard.rs)`);
    process.exit(2);
  }
  return v;
}

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

const started = Date.now();
function log(...args) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
}

async function rest(base, method, p, body, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** A layered DAG: `layers` × `width` nodes, each with 1 to 3 parents in the layer before. */
function layeredFlow(name, layers, width, seed) {
  const r = rng(seed);
  const nodes = [];
  for (let l = 0; l < layers; l++) {
    for (let i = 0; i < width; i++) {
      const node = { name: `n${l}-${i}`, handler: 'noop' };
      if (l > 0) {
        const parents = new Set();
        const k = 1 + Math.floor(r() * 3);
        for (let j = 0; j < k; j++) parents.add(`n${l - 1}-${Math.floor(r() * width)}`);
        node.parents = [...parents];
      }
      nodes.push(node);
    }
  }
  return { name, nodes };
}

// ------------------------------------------------------------------ layout

function checkLayout() {
  const require = createRequire(import.meta.url);
  require(path.join(here, '../../src/dashboard/assets/layout.js'));
  const L = globalThis.DagLayout;
  const diamond = L.layout(4, [[0, 1], [0, 2], [1, 3], [2, 3]]);
  check(diamond.crossings === 0, `diamond has ${diamond.crossings} crossings`);
  check(diamond.layers === 3, 'diamond has 3 layers');
  check(diamond.x[0] < diamond.x[1] && diamond.x[1] === diamond.x[2] && diamond.x[2] < diamond.x[3], 'diamond runs left to right by depth');
  check(Math.abs(diamond.y[0] - diamond.y[3]) < 1, 'diamond ends are level');
  // A tree drawn with shuffled ids can always be drawn without crossings.
  const tree = [];
  const perm = [...Array(63).keys()].sort((a, b) => ((a * 37) % 63) - ((b * 37) % 63));
  for (let i = 1; i < 63; i++) tree.push([perm[Math.floor((i - 1) / 2)], perm[i]]);
  check(L.layout(63, tree).crossings === 0, 'a tree gets no crossings');
  const big = layeredFlow('big', 20, 50, 7);
  const index = new Map(big.nodes.map((n, i) => [n.name, i]));
  const edges = [];
  big.nodes.forEach((n, i) => (n.parents || []).forEach((p) => edges.push([index.get(p), i])));
  const t = Date.now();
  const lay = L.layout(big.nodes.length, edges);
  const ms = Date.now() - t;
  check(ms < 3000, `1,000-node layout took ${ms} ms`);
  edges.forEach(([a, b]) => check(lay.x[a] < lay.x[b], 'every edge points right'));
  log(`layout: diamond 0 crossings; 1,000 nodes / ${edges.length} edges in ${ms} ms, ${lay.crossings} crossings`);
}

// ----------------------------------------------------------------- browser

async function main() {
  checkLayout();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  log(`chromium ${browser.version()}`);
  const pageErrors = [];
  const dialogs = [];
  const newPage = async (context) => {
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT);
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('dialog', (d) => {
      dialogs.push(d.message());
      d.accept();
    });
    return page;
  };
  const context = await browser.newContext({ viewport: { width: 1400, height: 860 } });
  const page = await newPage(context);
  const result = {};
  try {
    await run(page, result);
    await tokenScenario(browser, newPage);
    check(pageErrors.length === 0, `page errors: ${pageErrors.join(' | ')}`);
    check(dialogs.some((m) => m.startsWith('Cancel flow')), 'cancel asked for confirmation');
    check(dialogs.some((m) => m.startsWith('Delete flow')), 'delete asked for confirmation');
    check(dialogs.some((m) => m.startsWith('Retry flow')), 'retry asked for confirmation');
  } catch (e) {
    const shot = path.join(ARTIFACTS, 'dagflow-dashboard-failure.png');
    await page.screenshot({ path: shot }).catch(() => {});
    console.error(`FAILED: ${e.stack || e}`);
    console.error(`page: ${page.url()}; screenshot: ${shot}`);
    if (pageErrors.length) console.error(`page errors: ${pageErrors.join(' | ')}`);
    await browser.close();
    process.exit(1);
  }
  await browser.close();
  console.log(`RESULT ${JSON.stringify(result)}`);
}

const statusOf = (page, name) => page.getAttribute(`g.node[data-name="${name}"]`, 'data-status');
const waitNode = (page, name, status, timeout) =>
  page.waitForSelector(`g.node[data-name="${name}"][data-status="${status}"]`, { timeout: timeout || WAIT });
const waitFlowStatus = (page, status, timeout) =>
  page.waitForFunction((s) => document.querySelector('#flow-status')?.textContent === s, status, { timeout: timeout || WAIT });

/** Submits `spec` through the submit page; returns the new flow's id. */
async function submitThroughPage(page, spec) {
  await page.click('nav a[data-nav="submit"]');
  await page.waitForSelector('#spec-input');
  await page.fill('#spec-input', JSON.stringify(spec, null, 2));
  await page.click('#submit-flow');
  await page.waitForFunction(() => /^#\/flows\/[^/]+$/.test(location.hash));
  const id = decodeURIComponent(new URL(page.url()).hash.replace('#/flows/', ''));
  await page.waitForSelector('g.node');
  return id;
}

/** Records every status each node element shows, to prove the page changed live. */
async function watchTransitions(page) {
  await page.evaluate(() => {
    window.__transitions = {};
    const seen = (g) => {
      const list = (window.__transitions[g.dataset.name] ||= []);
      if (list[list.length - 1] !== g.dataset.status) list.push(g.dataset.status);
    };
    document.querySelectorAll('g.node').forEach(seen);
    new MutationObserver((records) => records.forEach((r) => seen(r.target)))
      .observe(document.querySelector('#dag'), { subtree: true, attributes: true, attributeFilter: ['data-status'] });
  });
}

async function run(page, result) {
  // Flows list, empty, with a live connection.
  await page.goto(`${URL_PLAIN}/`);
  await page.waitForSelector('#flows-table');
  await page.waitForSelector('#flows-empty:not([hidden])');
  await page.waitForSelector('#conn[data-state="live"]');
  await page.evaluate(() => { window.__sameDocument = true; });
  log('flows list loaded, live');

  // A diamond, submitted through the page, turns completed without reload or polling.
  const restCalls = [];
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/flows/')) restCalls.push(`${r.method()} ${u.pathname}`);
  });
  const diamond = {
    name: 'diamond',
    nodes: [
      { name: 'a', handler: 'sleep', data: { ms: 1000 } },
      { name: 'b', handler: 'sleep', parents: ['a'], data: { ms: 600 } },
      { name: 'c', handler: 'echo', parents: ['a'], data: { side: 'c' } },
      { name: 'd', handler: 'echo', parents: ['b', 'c'], data: { sink: true } },
    ],
  };
  const diamondId = await submitThroughPage(page, diamond);
  result.diamond = diamondId;
  await watchTransitions(page);
  const first = await statusOf(page, 'd');
  check(first === 'pending', `d starts pending, was ${first}`);
  await page.waitForFunction(() => {
    const gs = [...document.querySelectorAll('g.node')];
    return gs.length === 4 && gs.every((g) => g.dataset.status === 'completed');
  });
  await waitFlowStatus(page, 'completed');
  const transitions = await page.evaluate(() => window.__transitions);
  check(transitions.d.length >= 2 && transitions.d.at(-1) === 'completed', `d changed live: ${JSON.stringify(transitions)}`);
  check(transitions.b.includes('active'), `b was seen running: ${JSON.stringify(transitions.b)}`);
  check(await page.evaluate(() => window.__sameDocument === true), 'the page was not reloaded');
  check(restCalls.length === 0, `the flow page used no REST polling: ${restCalls.join(', ')}`);
  check((await page.textContent('.chip[data-status="completed"] .n')) === '4', 'status counts show 4 completed');
  log(`diamond ${diamondId} completed live:`, JSON.stringify(transitions));

  // Open a node: its result, input and timings.
  await page.click('g.node[data-name="d"]');
  await page.waitForSelector('#node-result');
  const resultText = await page.textContent('#node-result');
  check(resultText.includes('"sleptMs": 600') && resultText.includes('"side": "c"'), `d's result holds b's and c's results: ${resultText}`);
  check((await page.textContent('#node-detail-status')) === 'completed', 'detail status');
  check((await page.textContent('#node-data')).includes('"sink": true'), 'node data shown');
  check((await page.textContent('#node-panel')).includes('ran'), 'timings shown');
  check(restCalls.some((c) => c === `GET /flows/${diamondId}/nodes/d`), 'details come from GET /flows/{id}/nodes/{name}');
  await page.click('#close-panel');
  log('node d shows its result');

  // A slow flow, cancelled from its page.
  const slowId = await submitThroughPage(page, {
    name: 'slow',
    nodes: [
      { name: 'nap', handler: 'sleep', data: { ms: 60000 } },
      { name: 'after', handler: 'noop', parents: ['nap'] },
    ],
  });
  result.slow = slowId;
  await waitNode(page, 'nap', 'active');
  check(await page.isEnabled('#cancel-flow'), 'cancel is enabled while running');
  await page.click('#cancel-flow');
  await waitFlowStatus(page, 'cancelled');
  await waitNode(page, 'nap', 'cancelled');
  await waitNode(page, 'after', 'cancelled');
  check(await page.isDisabled('#cancel-flow'), 'cancel is disabled once cancelled');
  check(await page.isEnabled('#retry-flow'), 'retry is enabled once cancelled');
  log(`slow ${slowId} cancelled`);

  // Invalid flows: every problem from the API next to the input.
  await page.click('nav a[data-nav="submit"]');
  await page.fill('#spec-input', JSON.stringify({
    nodes: [
      { name: 'x', parents: ['y'] },
      { name: 'y', parents: ['x'] },
      { name: 'z', parents: ['ghost'] },
      { name: 'z' },
    ],
  }));
  await page.click('#submit-flow');
  await page.waitForSelector('#spec-errors li.problem');
  const problems = await page.$$eval('#spec-errors li.problem', (lis) => lis.map((li) => li.textContent));
  check(problems.length >= 3, `all problems listed: ${JSON.stringify(problems)}`);
  const all = problems.join('\n');
  check(/cycle/.test(all) && /ghost/.test(all) && /duplicate/i.test(all), `cycle, unknown parent and duplicate shown: ${all}`);
  check((await page.textContent('#spec-errors-title')).startsWith('Invalid flow'), 'titled invalid flow');
  check(page.url().endsWith('#/submit'), 'stays on the submit page');
  await page.fill('#spec-input', '{\n  "nodes": [\n    {"name": "a",}\n  ]\n}');
  await page.click('#submit-flow');
  await page.waitForFunction(() => document.querySelector('#spec-errors-title')?.textContent === 'Not valid JSON');
  check((await page.textContent('#spec-errors')).includes('line 3'), 'malformed JSON says where');
  log('invalid flows show', problems.length, 'problems; malformed JSON shows its line');

  // A failing flow, retried from its page.
  const flakyId = await submitThroughPage(page, {
    name: 'flaky',
    nodes: [
      { name: 'boom', handler: 'fail', data: { message: 'kaboom', times: 1 } },
      { name: 'next', handler: 'echo', parents: ['boom'] },
    ],
  });
  result.flaky = flakyId;
  await waitFlowStatus(page, 'failed');
  await waitNode(page, 'boom', 'failed');
  await waitNode(page, 'next', 'skipped');
  await page.click('g.node[data-name="boom"]');
  await page.waitForSelector('#node-error');
  check((await page.textContent('#node-error')).includes('kaboom'), 'the error is shown');
  await page.click('#retry-flow');
  await waitFlowStatus(page, 'completed');
  await waitNode(page, 'next', 'completed');
  // The open panel follows the node live.
  await page.waitForSelector('#node-result');
  log(`flaky ${flakyId} failed, retried, completed`);

  // The list: rows, live updates, filter, paging.
  await page.click('nav a[data-nav="flows"]');
  await page.waitForSelector(`tr[data-id="${diamondId}"]`);
  const rowText = (id) => page.textContent(`tr[data-id="${id}"]`);
  check((await rowText(diamondId)).includes('4/4') && (await rowText(diamondId)).includes('completed'), 'diamond row');
  check((await rowText(slowId)).includes('cancelled'), 'slow row');
  const created = await rest(URL_PLAIN, 'POST', '/flows', {
    name: 'live-row', nodes: [{ name: 'x', handler: 'sleep', data: { ms: 700 } }],
  });
  check(created.status === 201, `create over REST: ${JSON.stringify(created)}`);
  const liveId = created.body.flowId;
  result.liveRow = liveId;
  await page.waitForSelector(`tr[data-id="${liveId}"]`);
  await page.waitForFunction((id) => {
    const tr = document.querySelector(`tr[data-id="${id}"]`);
    return tr && tr.querySelector('.badge').textContent === 'completed' && tr.querySelector('.count').textContent === '1/1';
  }, liveId);
  check(await page.evaluate(() => window.__sameDocument === true), 'the list updated without reload');
  log('a flow created elsewhere appeared and completed in the list');

  await page.selectOption('#status-filter', 'cancelled');
  await page.waitForFunction((id) => {
    const rows = document.querySelectorAll('#flow-rows tr');
    return rows.length === 1 && rows[0].dataset.id === id;
  }, slowId);
  await page.evaluate(() => { location.hash = '#/?limit=2'; });
  await page.waitForFunction(() => document.querySelectorAll('#flow-rows tr').length === 2);
  const seen = [];
  for (let p = 0; p < 10; p++) {
    const ids = await page.$$eval('#flow-rows tr', (rows) => rows.map((r) => r.dataset.id));
    seen.push(...ids);
    if (await page.isDisabled('#next-page')) break;
    await page.click('#next-page');
    await page.waitForFunction((before) => {
      const first = document.querySelector('#flow-rows tr');
      return first && first.dataset.id !== before;
    }, ids[0]);
  }
  check(seen.length === 4 && new Set(seen).size === 4, `paging shows every flow once: ${seen}`);
  check(seen.indexOf(liveId) < seen.indexOf(diamondId), 'newest first');
  await page.click('#prev-page');
  await page.waitForSelector('#page-label:text("Page 1")');
  log('filter and paging work');

  // Delete from the flow page.
  await page.evaluate((id) => { location.hash = `#/flows/${id}`; }, slowId);
  await waitFlowStatus(page, 'cancelled');
  await page.click('#delete-flow');
  await page.waitForFunction(() => location.hash === '#/');
  await page.waitForSelector('#flows-table');
  const gone = await rest(URL_PLAIN, 'GET', `/flows/${slowId}`);
  check(gone.status === 404, `deleted flow is gone: ${gone.status}`);
  await page.waitForSelector(`tr[data-id="${diamondId}"]`);
  check((await page.$(`tr[data-id="${slowId}"]`)) === null, 'deleted row is not listed');
  log(`slow ${slowId} deleted`);

  // 1,000 nodes: rendered once, then updated element by element.
  const big = await rest(URL_PLAIN, 'POST', '/flows', layeredFlow('thousand', 20, 50, 11));
  check(big.status === 201, `create big flow: ${JSON.stringify(big.body)}`);
  const bigId = big.body.flowId;
  result.big = bigId;
  const t0 = Date.now();
  await page.evaluate((id) => { location.hash = `#/flows/${id}`; }, bigId);
  await page.waitForFunction(() => document.querySelectorAll('g.node').length === 1000);
  const renderMs = Date.now() - t0;
  await page.evaluate(() => {
    window.__firstNode = document.querySelector('g.node');
    window.__frames = 0;
    const tick = () => { window.__frames++; requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
  });
  const t1 = Date.now();
  await page.waitForFunction(() => document.querySelector('#flow-status')?.textContent === 'completed', null, { timeout: 90000 });
  await page.waitForFunction(() => document.querySelector('.chip[data-status="completed"] .n').textContent === '1000');
  const runMs = Date.now() - t1;
  const frames = await page.evaluate(() => window.__frames);
  check(await page.evaluate(() => window.__firstNode === document.querySelector('g.node') && document.querySelectorAll('g.node').length === 1000),
    'events updated the node elements in place (no re-render)');
  check(renderMs < 15000, `1,000 nodes rendered in ${renderMs} ms`);
  const tc = Date.now();
  await page.click('g.node[data-name="n19-7"]', { force: true });
  await page.waitForSelector('#node-detail-name:text("n19-7")');
  await page.fill('#node-search', 'n10-25');
  await page.press('#node-search', 'Enter');
  await page.waitForSelector('#node-detail-name:text("n10-25")');
  log(`1,000 nodes: rendered in ${renderMs} ms, ran live for ${runMs} ms at ${(frames / Math.max(1, runMs / 1000)).toFixed(0)} frames/s, details in ${Date.now() - tc} ms`);

  if (SCREENSHOT) await screenshot(page, result);
}

/** A realistic flow mid-run, its page with one node open, saved for the README. */
async function screenshot(page, result) {
  const sleep = (ms) => ({ handler: 'sleep', data: { ms } });
  const spec = {
    name: 'nightly sales report',
    nodes: [
      { name: 'extract-orders', ...sleep(300) },
      { name: 'extract-customers', ...sleep(450) },
      { name: 'extract-inventory', ...sleep(600) },
      { name: 'clean-orders', handler: 'echo', parents: ['extract-orders'], data: { dropTest: true } },
      { name: 'join-customers', handler: 'echo', parents: ['clean-orders', 'extract-customers'] },
      { name: 'enrich-inventory', ...sleep(400), parents: ['extract-inventory'] },
      { name: 'fraud-check', handler: 'fail', parents: ['join-customers'], data: { message: 'scoring service answered 503' } },
      { name: 'flag-accounts', handler: 'echo', parents: ['fraud-check'] },
      { name: 'compute-revenue', handler: 'echo', parents: ['join-customers', 'enrich-inventory'], data: { currency: 'EUR' } },
      { name: 'forecast-demand', ...sleep(120000), parents: ['enrich-inventory'] },
      { name: 'archive-raw', handler: 'echo', parents: ['extract-orders', 'extract-customers', 'extract-inventory'], data: { bucket: 'raw-archive' } },
      { name: 'build-report', handler: 'echo', parents: ['compute-revenue', 'forecast-demand'] },
      { name: 'publish-dashboard', handler: 'echo', parents: ['build-report'] },
      { name: 'email-finance', handler: 'echo', parents: ['build-report'] },
    ],
  };
  const created = await rest(URL_PLAIN, 'POST', '/flows', spec);
  check(created.status === 201, 'create screenshot flow');
  const id = created.body.flowId;
  result.screenshot = id;
  await page.setViewportSize({ width: 1600, height: 900 });
  await page.evaluate((fid) => { location.hash = `#/flows/${fid}`; }, id);
  await waitNode(page, 'flag-accounts', 'skipped');
  await waitNode(page, 'forecast-demand', 'active');
  await waitNode(page, 'archive-raw', 'completed');
  await waitNode(page, 'compute-revenue', 'completed');
  await page.click('g.node[data-name="compute-revenue"]');
  await page.waitForSelector('#node-result');
  await page.waitForTimeout(300);
  await page.screenshot({ path: SCREENSHOT });
  await rest(URL_PLAIN, 'POST', `/flows/${id}/cancel`);
  log(`screenshot saved to ${SCREENSHOT}`);
}

/** A server with a token: the page asks once, keeps it for the tab, and uses it for REST and /ws. */
async function tokenScenario(browser, newPage) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await newPage(context);
  await page.goto(`${URL_TOKEN}/`);
  await page.waitForSelector('#token-dialog[open]');
  await page.fill('#token-input', 'wrong-token');
  await page.click('#token-submit');
  await page.waitForFunction(() => document.querySelector('#token-dialog').open
    && document.querySelector('#token-message').textContent.includes('refused'));
  await page.fill('#token-input', TOKEN);
  await page.click('#token-submit');
  await page.waitForSelector('#flows-empty:not([hidden])');
  await page.waitForSelector('#conn[data-state="live"]');
  check(!(await page.evaluate(() => document.querySelector('#token-dialog').open)), 'dialog closed');
  await page.reload();
  await page.waitForSelector('#flows-empty:not([hidden])');
  await page.waitForSelector('#conn[data-state="live"]');
  check(!(await page.evaluate(() => document.querySelector('#token-dialog').open)), 'the token is kept for the session');
  const id = await submitThroughPage(page, { name: 'guarded', nodes: [{ name: 'one', handler: 'noop' }, { name: 'two', handler: 'noop', parents: ['one'] }] });
  await waitFlowStatus(page, 'completed');
  await waitNode(page, 'two', 'completed');
  const stored = await page.evaluate(() => sessionStorage.getItem('dagflow.token'));
  check(stored === TOKEN, 'token in sessionStorage');
  await context.close();
  log(`token server: asked once, refused a wrong token, flow ${id} ran live over an authenticated /ws`);
}

main().catch((e) => {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
});

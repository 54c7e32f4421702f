// Drives the dagflow dashboard in headless Chromium (playwright-core, the system
// Chromium). Spawned by tests/dashboard.rs, which starts the servers and passes:
//
//   DAGFLOW_URL          a server without a token
//   DAGFLOW_TOKEN_URL    a server that wants DAGFLOW_TOKEN
//   DAGFLOW_TOKEN
//   CHROMIUM_PATH        default /usr/bin/chromium
//   DASHBOARD_SCREENSHOT when set, where to save the flow-page screenshot (docs/dashboard.png)
//   DASHBOARD_MAP_SCREENSHOT when set, where to save a page with a map group expanded
//                        mid-run (docs/dashboard-map.png)
//   DASHBOARD_TIMELINE_SCREENSHOT when set, where to save a flow's timeline mid-run
//                        (docs/dashboard-timeline.png)
//   DASHBOARD_BIG_SCREENSHOT when set, where to save a 1,000-node flow at Fit mid-run
//                        (docs/dashboard-big.png; bigflow.mjs)
//   DASHBOARD_ARTIFACTS  where a failure screenshot goes (default: the temp dir)
//
// Prints one line `RESULT {json}` with the ids of the flows it made, for the Rust
// side to check over the API, and exits non-zero on the first failed check.

import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import os from 'node:os';
import { schedulesScenario } from './schedules.mjs';
import { pageScenario } from './page.mjs';
import { timelineScenario } from './timeline.mjs';
import { bigFlowScenario } from './bigflow.mjs';
import { listSubmitScenario } from './listsubmit.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const URL_PLAIN = mustEnv('DAGFLOW_URL');
const URL_TOKEN = mustEnv('DAGFLOW_TOKEN_URL');
const TOKEN = mustEnv('DAGFLOW_TOKEN');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT || '';
const MAP_SCREENSHOT = process.env.DASHBOARD_MAP_SCREENSHOT || '';
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
  // Nodes of their own size (an expanded map group): no overlaps, the next layer further right.
  const sized = L.layout(4, [[0, 1], [0, 2], [1, 3], [2, 3]], { widths: [0, 400], heights: [0, 300] });
  const [x1, y1, y2] = [sized.x[1], sized.y[1], sized.y[2]];
  const apart = y1 < y2 ? y1 + 300 <= y2 : y2 + L.defaults.nodeHeight <= y1;
  check(apart && sized.x[2] === x1, `a 300 px tall node does not overlap its layer: ${[...sized.y]}`);
  check(sized.x[3] >= x1 + 400 + L.defaults.rankGap, `a 400 px wide node pushes the next layer: ${[...sized.x]}`);
  check(sized.height >= 300 + L.defaults.nodeHeight, 'the drawing is tall enough for both');
  log(`layout: diamond 0 crossings; 1,000 nodes / ${edges.length} edges in ${ms} ms, ${lay.crossings} crossings; sized nodes fit`);
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
    await pageScenario(browser, newPage, { base: URL_PLAIN, rest, check, log, result });
    check(pageErrors.length === 0, `page errors: ${pageErrors.join(' | ')}`);
    check(dialogs.some((m) => m.startsWith('Cancel flow')), 'cancel asked for confirmation');
    check(dialogs.some((m) => m.startsWith('Delete flow')), 'delete asked for confirmation');
    check(dialogs.some((m) => m.startsWith('Retry flow')), 'retry asked for confirmation');
    check(dialogs.some((m) => m.startsWith('Re-run “collect”')), 're-run asked for confirmation');
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
  // Its attempts: the first one's error is still there after the retry.
  await page.waitForFunction(() => document.querySelectorAll('#node-attempts tr.attempt').length === 2);
  const attempts = await page.$$eval('#node-attempts tr.attempt', (rows) => rows.map((r) => ({
    attempt: r.dataset.attempt,
    outcome: r.querySelector('.attempt-outcome')?.textContent,
    worker: r.querySelector('.attempt-worker')?.textContent || '',
    error: r.querySelector('.attempt-error')?.textContent || '',
  })));
  check(attempts[0].attempt === '1' && attempts[0].outcome === 'failed', `first attempt failed: ${JSON.stringify(attempts)}`);
  check(attempts[0].error.includes('kaboom'), `the first attempt's error is shown after the retry: ${JSON.stringify(attempts)}`);
  check(attempts[1].attempt === '2' && attempts[1].outcome === 'completed' && attempts[1].error === '', `second attempt completed: ${JSON.stringify(attempts)}`);
  check(attempts.every((a) => a.worker.length > 0), `each attempt names its worker: ${JSON.stringify(attempts)}`);
  log(`flaky ${flakyId} failed, retried, completed; both attempts shown`);

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

  await mapScenario(page, result);
  await failingMapScenario(page, result);
  await wideMapScenario(page, result);
  await hugeMapScenario(page, result);
  await queuesScenario(page, result);
  await schedulesScenario(page, result, { base: URL_PLAIN, rest, check, log });
  await timelineScenario(page, result, { base: URL_PLAIN, rest, check, log, screenshot: process.env.DASHBOARD_TIMELINE_SCREENSHOT || '' });
  await bigFlowScenario(page, result, { base: URL_PLAIN, rest, check, log });
  await listSubmitScenario(page, result, { base: URL_PLAIN, rest, check, log });

  if (SCREENSHOT) await screenshot(page, result);
  if (MAP_SCREENSHOT) await mapScreenshot(page, result);
}

/**
 * Run-time nodes: a map drawn as one group node (counts, expand to its element
 * chips, collapse), a node skipped by its condition (the reason in its panel), a
 * wait node signalled from its panel (bad JSON caught before sending, a 409 from
 * the server shown), and a re-run from a node with its confirmation.
 */
async function mapScenario(page, result) {
  const items = Array.from({ length: 20 }, (_, i) => ({ id: i, name: `item-${i}` }));
  const spec = {
    name: 'map and wait',
    nodes: [
      { name: 'crawl', handler: 'echo', data: { items } },
      { name: 'resize', handler: 'echo', parents: ['crawl'], map: { from: 'crawl', path: '/data/items' } },
      { name: 'collect', handler: 'echo', parents: ['resize'] },
      { name: 'audit', handler: 'echo', parents: ['collect'], when: 'size(parents.collect.parents.resize) > 100' },
      { name: 'approve', parents: ['collect'], wait: { signal: 'approve', timeoutMs: 3600000 } },
      // Still running a moment after approve completes: a late signal meets a running flow.
      { name: 'publish', handler: 'sleep', parents: ['approve'], data: { ms: 1000 } },
    ],
  };
  const id = await submitThroughPage(page, spec);
  result.mapFlow = id;
  const signalCalls = [];
  page.on('request', (r) => {
    if (r.method() === 'POST' && new URL(r.url()).pathname.endsWith('/signal')) signalCalls.push(r.postData());
  });

  // The map is one group node: 6 nodes drawn for the DAG's 6, none for the 20 elements.
  await waitNode(page, 'approve', 'waiting');
  await waitNode(page, 'resize', 'completed');
  await waitNode(page, 'audit', 'skipped');
  await page.waitForFunction(() => document.querySelector('g.node[data-name="resize"] text.counts')?.textContent.startsWith('20 done'));
  const drawn = await page.$$eval('g.node', (gs) => gs.map((g) => g.dataset.name));
  check(drawn.length === 6 && drawn.every((n) => !n.includes('[')), `one node per DAG node, the map as one group: ${drawn}`);
  const groupText = await page.$eval('g.node[data-name="resize"]', (g) => [g.querySelector('text.counts').textContent, g.querySelector('text.sub').textContent]);
  check(groupText[0] === '20 done · 0 running · 0 failed', `map counts: ${groupText[0]}`);
  check(groupText[1].startsWith('of 20'), `map total: ${groupText[1]}`);
  const legend = await page.$$eval('.chip', (cs) => Object.fromEntries(cs.map((c) => [c.dataset.status, c.querySelector('.n').textContent])));
  check(legend.waiting === '1' && legend.skipped === '1' && legend.completed === '3' && legend.pending === '1', `legend counts DAG nodes, waiting its own: ${JSON.stringify(legend)}`);
  const fills = await page.evaluate(() => {
    const fill = (name) => getComputedStyle(document.querySelector(`g.node[data-name="${name}"] rect.box`)).fill;
    const sw = getComputedStyle(document.querySelector('.chip[data-status="waiting"] .sw')).backgroundColor;
    return { approve: fill('approve'), collect: fill('collect'), audit: fill('audit'), sw };
  });
  check(fills.approve !== fills.collect && fills.approve !== fills.audit && fills.approve === fills.sw,
    `waiting has its own colour, the legend's: ${JSON.stringify(fills)}`);
  check((await page.getAttribute('g.node[data-name="approve"]', 'data-status')) === 'waiting', 'approve waits');
  check((await page.textContent('g.node[data-name="approve"] text.sub')).includes('signal approve'), 'the wait node says what it waits for');
  log('map group: 20 done in one node; approve waiting in its own colour');

  // Expand: 20 element chips inside the group, coloured by status; collapse again.
  await page.click('g.node[data-name="resize"] g.toggle');
  await page.waitForFunction(() => document.querySelectorAll('g.node[data-name="resize"] .elgrid .el').length === 20);
  const chipStates = await page.$$eval('g.node[data-name="resize"] .elgrid .el', (cs) => cs.map((c) => c.dataset.status));
  check(chipStates.every((s) => s === 'completed'), `every element chip completed: ${chipStates}`);
  check((await page.$$eval('g.node', (gs) => gs.length)) === 6, 'expanded, still 6 nodes laid out');
  const chipColour = await page.$eval('g.node[data-name="resize"] .elgrid .el', (c) => getComputedStyle(c).backgroundColor);
  check(chipColour === 'rgb(22, 163, 74)', `a completed chip is green: ${chipColour}`);
  await mapShot(page);
  await page.click('g.node[data-name="resize"] .elgrid .el[data-k="3"]');
  await page.waitForSelector('#node-detail-name:text("resize[3]")');
  await page.waitForSelector('#node-item');
  check((await page.textContent('#node-item')).includes('"item-3"'), 'an element shows its item');
  check((await page.textContent('#node-result')).includes('"index": 3'), 'and its result (echo: item and index)');
  check((await page.$('#rerun-node')) === null, 'an element offers no re-run (the map node does)');
  await page.click('#node-map-link');
  await page.waitForSelector('#node-detail-name:text("resize")');
  check((await page.textContent('#map-counts')) === '20 done · 0 running · 0 failed of 20', 'the map panel counts its elements');
  check((await page.textContent('#map-toggle')) === 'Hide elements', 'the panel toggle says it is open');
  await page.click('#map-toggle');
  await page.waitForFunction(() => !document.querySelector('g.node[data-name="resize"] .elgrid')
    && document.querySelector('g.node[data-name="resize"]').dataset.expanded === 'false');
  check((await page.textContent('#map-toggle')) === 'Show elements', 'collapsed from the panel');
  log('map group expanded to 20 element chips, an element opened, collapsed from the panel');

  // The skipped node says why, in its panel and on its graph node.
  await page.click('#fit');
  await page.click('g.node[data-name="audit"]');
  await page.waitForSelector('#node-reason');
  const reason = await page.textContent('#node-reason');
  check(reason === 'condition `size(parents.collect.parents.resize) > 100` is false', `skip reason: ${reason}`);
  check((await page.textContent('g.node[data-name="audit"] title')).includes(reason), 'the reason is the graph node\'s tooltip');
  check((await page.textContent('#node-when')) === spec.nodes[3].when, 'the condition is shown');

  // The wait node: what it waits for and until when; a signal from its panel.
  await page.click('g.node[data-name="approve"]');
  await page.waitForSelector('#signal-send');
  check((await page.textContent('#node-wait')) === 'signal “approve”, for at most 1h 0m', `waits for: ${await page.textContent('#node-wait')}`);
  const approveView = await rest(URL_PLAIN, 'GET', `/flows/${id}/nodes/approve`);
  check(approveView.status === 200 && approveView.body.status === 'waiting' && approveView.body.dueAt > Date.now(), `approve over REST: ${JSON.stringify(approveView.body)}`);
  const dueShown = await page.textContent('#node-due');
  const dueWanted = await page.evaluate((ms) => {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }, approveView.body.dueAt);
  check(dueShown.startsWith(`${dueWanted} (in `), `deadline shown as a time: ${dueShown}, want ${dueWanted}`);
  check((await page.$('#rerun-node')) === null, 'a waiting node of a running flow cannot be re-run');
  await page.fill('#signal-payload', '{ok: true');
  await page.click('#signal-send');
  await page.waitForSelector('#action-error:not([hidden])');
  check((await page.textContent('#action-error')).includes('not valid JSON'), 'bad JSON is caught in the page');
  check(signalCalls.length === 0, 'and not sent');
  await page.fill('#signal-payload', '{"ok":true}');
  await page.click('#signal-send');
  await waitFlowStatus(page, 'completed');
  await waitNode(page, 'approve', 'completed');
  await waitNode(page, 'publish', 'completed');
  check(signalCalls.length === 1 && JSON.parse(signalCalls[0]).ok === true, `one signal sent: ${signalCalls}`);
  await page.waitForSelector('#node-result');
  check(JSON.parse(await page.textContent('#node-result')).ok === true, 'the payload is approve\'s result');
  check((await page.$('#action-error:not([hidden])')) === null, 'no error left after a delivered signal');
  log('approve signalled from its panel (bad JSON caught first); the flow completed');

  // Re-run from collect: confirmed, collect runs again (attempt 2) and approve waits again.
  await page.click('g.node[data-name="collect"]');
  await page.waitForSelector('#rerun-node');
  await page.click('#rerun-node');
  await page.waitForFunction(() => document.querySelector('#node-detail-name')?.textContent === 'collect'
    && document.querySelector('#node-attempt')?.textContent === '2'
    && document.querySelector('#node-detail-status')?.textContent === 'completed');
  await page.waitForFunction(() => document.querySelector('g.node[data-name="collect"] text.sub').textContent.includes('try 2'));
  await waitNode(page, 'approve', 'waiting');
  const afterRerun = await rest(URL_PLAIN, 'GET', `/flows/${id}`);
  const byName = Object.fromEntries(afterRerun.body.nodes.map((n) => [n.name, n]));
  check(byName.collect.attempt === 2 && byName.collect.status === 'completed', `collect re-ran: ${JSON.stringify(byName.collect)}`);
  check(byName.resize.attempt === 1 && byName.crawl.attempt === 1, 'upstream nodes kept their results');
  check(byName.approve.status === 'waiting' && afterRerun.body.status === 'running', 'approve waits again');
  log('collect re-run from its panel: attempt 2, approve waiting again');

  // A signal the server refuses (409): the page shows the server's error. (It reaches
  // the flow while `publish` sleeps: a signal that meets a flow as its actor stops after
  // the end gets a 500 instead, an engine race reported separately.)
  await page.click('g.node[data-name="approve"]');
  await page.waitForSelector('#signal-send');
  const isSignal = (u) => u.pathname === `/flows/${id}/nodes/approve/signal`;
  await page.route(isSignal, async (route) => {
    // Someone else signals first; the page's request then reaches the server too late.
    const first = await rest(URL_PLAIN, 'POST', `/flows/${id}/nodes/approve/signal`, { ok: 'elsewhere' });
    check(first.status === 200, `signal over REST: ${JSON.stringify(first)}`);
    await route.continue();
  });
  await page.fill('#signal-payload', '{"ok": true, "second": true}');
  await page.click('#signal-send');
  await page.waitForSelector('#action-error:not([hidden])');
  const refused = await page.textContent('#action-error');
  check(refused === 'Signal refused (HTTP 409): node \'approve\' is completed in a running flow; only a waiting node takes a signal',
    `the server's 409 is shown: ${refused}`);
  await page.unroute(isSignal);
  await waitFlowStatus(page, 'completed');
  log('a late signal shows the server\'s 409:', refused);

  // Re-run the map node itself, expanded: its elements go, then come back, 20 again.
  await page.click('#fit');
  await page.click('g.node[data-name="resize"] g.toggle');
  await page.waitForFunction(() => document.querySelectorAll('g.node[data-name="resize"] .elgrid .el').length === 20);
  await page.click('g.node[data-name="resize"] text.name', { force: true });
  await page.waitForSelector('#node-detail-name:text("resize")');
  await page.click('#rerun-node');
  await page.waitForFunction(() => {
    const g = document.querySelector('g.node[data-name="resize"]');
    return g.querySelector('text.sub').textContent.includes('try 2')
      && g.querySelector('text.counts').textContent === '20 done · 0 running · 0 failed'
      && g.querySelectorAll('.elgrid .el[data-status="completed"]').length === 20;
  });
  await waitNode(page, 'approve', 'waiting');
  const last = await rest(URL_PLAIN, 'POST', `/flows/${id}/nodes/approve/signal`, { ok: 'final' });
  check(last.status === 200, `signal over REST: ${JSON.stringify(last)}`);
  await waitFlowStatus(page, 'completed');
  check((await page.$$eval('g.node', (gs) => gs.length)) === 6, 'still one node per DAG node');
  log('the map node re-run from its panel: 20 elements again, attempt 2');
}

/** A map whose elements all fail, retried from the page: only its elements run again. */
async function failingMapScenario(page, result) {
  const created = await rest(URL_PLAIN, 'POST', '/flows', {
    name: 'failing map',
    nodes: [
      { name: 'list', handler: 'echo', data: { items: [1, 2, 3, 4, 5, 6] } },
      { name: 'flaky', handler: 'fail', parents: ['list'], data: { times: 1, message: 'first try fails' },
        map: { from: 'list', path: '/data/items' }, opts: { attempts: 1 } },
      { name: 'after', handler: 'noop', parents: ['flaky'] },
    ],
  });
  check(created.status === 201, `create failing map: ${JSON.stringify(created.body)}`);
  const id = created.body.flowId;
  result.failingMap = id;
  await page.evaluate((fid) => { location.hash = `#/flows/${fid}`; }, id);
  await waitFlowStatus(page, 'failed');
  await waitNode(page, 'flaky', 'failed');
  await waitNode(page, 'after', 'skipped');
  await page.waitForFunction(() => document.querySelector('g.node[data-name="flaky"] text.counts')?.textContent === '0 done · 0 running · 6 failed');
  await page.click('g.node[data-name="flaky"] g.toggle');
  await page.waitForFunction(() => document.querySelectorAll('g.node[data-name="flaky"] .elgrid .el[data-status="failed"]').length === 6);
  await page.click('g.node[data-name="after"]');
  await page.waitForSelector('#node-reason');
  check((await page.textContent('#node-reason')).includes('flaky'), `skipped for its failed parent: ${await page.textContent('#node-reason')}`);
  await page.click('g.node[data-name="flaky"] .elgrid .el[data-k="2"]');
  await page.waitForSelector('#node-detail-name:text("flaky[2]")');
  await page.waitForSelector('#node-error');
  check((await page.textContent('#node-error')).includes('first try fails'), 'a failed element shows its error');
  await page.click('#retry-flow');
  await waitFlowStatus(page, 'completed');
  await page.waitForFunction(() => document.querySelectorAll('g.node[data-name="flaky"] .elgrid .el[data-status="completed"]').length === 6
    && document.querySelector('g.node[data-name="flaky"] text.counts').textContent === '6 done · 0 running · 0 failed');
  await waitNode(page, 'after', 'completed');
  log('a map whose 6 elements failed: counted, shown red, retried from the page, completed');
}

/** A map of 10,000 elements parked on a queue no worker serves: one node, chips 1,000 a page. */
async function hugeMapScenario(page, result) {
  const created = await rest(URL_PLAIN, 'POST', '/flows', {
    name: 'huge map',
    nodes: [
      { name: 'source', handler: 'echo', data: { items: Array.from({ length: 10000 }, (_, i) => i) } },
      { name: 'parked', handler: 'noop', queue: 'nobody-serves-this', parents: ['source'], map: { from: 'source', path: '/data/items', maxParallel: 10 } },
      { name: 'join', handler: 'noop', parents: ['parked'] },
    ],
  });
  check(created.status === 201, `create huge map: ${JSON.stringify(created.body)}`);
  const id = created.body.flowId;
  result.hugeMap = id;
  const t0 = Date.now();
  await page.evaluate((fid) => { location.hash = `#/flows/${fid}`; }, id);
  await page.waitForFunction(() => document.querySelector('g.node[data-name="parked"] text.sub')?.textContent.startsWith('of 10000'));
  const shownMs = Date.now() - t0;
  check((await page.textContent('g.node[data-name="parked"] text.counts')) === '0 done · 10 running · 0 failed', 'ten queued at a time');
  check((await page.$$eval('g.node', (gs) => gs.length)) === 3, '3 nodes laid out for a map of 10,000');
  const t1 = Date.now();
  await page.click('g.node[data-name="parked"] g.toggle');
  await page.waitForFunction(() => document.querySelectorAll('g.node[data-name="parked"] .elgrid .el').length === 1000);
  const expandMs = Date.now() - t1;
  check((await page.textContent('g.node[data-name="parked"] .el-range')) === '1–1,000 of 10,000', 'the first page of chips');
  check((await page.$$eval('g.node[data-name="parked"] .elgrid .el[data-status="queued"]', (cs) => cs.length)) === 10, 'ten queued chips');
  await page.click('g.node[data-name="parked"] .el-pager [data-page="1"]');
  await page.waitForFunction(() => document.querySelector('g.node[data-name="parked"] .el-range').textContent === '1,001–2,000 of 10,000');
  check((await page.getAttribute('g.node[data-name="parked"] .elgrid .el', 'data-k')) === '1000', 'the second page starts at element 1000');
  await page.click('g.node[data-name="parked"] .elgrid .el[data-k="1234"]');
  await page.waitForSelector('#node-detail-name:text("parked[1234]")');
  check((await page.textContent('#node-detail-status')) === 'pending', 'a pending element');
  await page.click('#cancel-flow');
  await waitFlowStatus(page, 'cancelled');
  log(`10,000-element map: one node, shown ${shownMs} ms after opening, 1,000 chips in ${expandMs} ms, paged`);
}

/**
 * Queues: a queued node on a queue nobody serves says how many jobs are ready
 * ahead of it and that no worker serves the queue, linking to the Queues page,
 * which lists every queue and follows new jobs; a node its concurrency key
 * cancelled says why, and shows its key.
 */
async function queuesScenario(page, result) {
  const Q = 'e2e-unserved';
  const ids = [];
  for (const [name, priority] of [['urgent', 9], ['first', 5], ['second', 5]]) {
    const created = await rest(URL_PLAIN, 'POST', '/flows', { name, nodes: [{ name: 'job', handler: 'noop', queue: Q, priority }] });
    check(created.status === 201, `create ${name}: ${JSON.stringify(created.body)}`);
    ids.push(created.body.flowId);
  }
  result.queuedUrgent = ids[0];
  result.queuedSecond = ids[2];
  const deadline = Date.now() + WAIT;
  for (;;) {
    const q = await rest(URL_PLAIN, 'GET', `/queues/${Q}`);
    if (q.status === 200 && q.body.ready.total === 3) break;
    check(Date.now() < deadline, `the three jobs reach ${Q}: ${JSON.stringify(q)}`);
    await new Promise((r) => setTimeout(r, 50));
  }

  // The last one's panel: one job of priority 9 ahead, and the one before it in its lane.
  await page.evaluate((fid) => { location.hash = `#/flows/${fid}`; }, ids[2]);
  await waitNode(page, 'job', 'queued');
  await page.click('g.node[data-name="job"]');
  await page.waitForSelector('#node-queue-link');
  const hint = await page.textContent('#node-queue-hint');
  check(hint.includes(`about 2 jobs ready ahead in ${Q} (priority ≥ 5)`) && hint.includes(`0 workers serving ${Q}`), `queue hint: ${hint}`);
  check((await page.textContent('#node-priority')) === '5', 'the node shows its priority');
  check(await page.$eval('#node-queue-hint', (p) => p.classList.contains('warn')), 'no worker: a warning');
  await page.click('#node-queue-link');
  await page.waitForFunction((q) => location.hash === `#/queues/${q}`, Q);
  const card = `section.queue[data-queue="${Q}"]`;
  await page.waitForSelector(card);
  const cell = (priority, lane) => page.textContent(`${card} td[data-priority="${priority}"][data-lane="${lane}"]`);
  check((await page.textContent(`${card} [data-figure="ready"]`)) === '3', 'three ready');
  check((await cell(9, 'new')) === '1' && (await cell(5, 'new')) === '2' && (await cell(5, 'started')) === '0', 'ready by priority and lane');
  check((await page.textContent(`${card} [data-figure="workers"]`)).startsWith('0 workers'), 'no workers');
  check(await page.isVisible(`${card} .queue-warn`), 'the page says nobody serves it');
  log('a queued node points to its queue: 2 jobs ahead, no worker; the queue page shows its lanes');

  // Every queue, following new jobs without a reload.
  await page.click('nav a[data-nav="queues"]');
  await page.waitForSelector('section.queue[data-queue="default"]');
  await page.waitForSelector(card);
  check((await page.textContent('section.queue[data-queue="default"] [data-figure="workers"]')).startsWith('1 worker · 4 slots'), 'default: one worker of 4 slots');
  const more = await rest(URL_PLAIN, 'POST', '/flows', { name: 'late', nodes: [{ name: 'job', handler: 'noop', queue: Q, priority: 7 }] });
  check(more.status === 201, 'create late');
  ids.push(more.body.flowId);
  await page.waitForFunction((sel) => document.querySelector(`${sel} [data-figure="ready"]`)?.textContent === '4'
    && document.querySelector(`${sel} td[data-priority="7"][data-lane="new"]`)?.textContent === '1', card, { timeout: 10000 });
  check(await page.evaluate(() => window.__sameDocument === true), 'the queues page updated without reload');
  log('the queues page lists every queue and follows new jobs');

  // A concurrency key of one that cancels newcomers: the second job is cancelled, with the reason.
  const solo = { nodes: [{ name: 'job', handler: 'noop', queue: Q, concurrency: { key: "'solo'", limit: 1, strategy: 'cancelNewest' } }] };
  for (const name of ['holder', 'newcomer']) {
    const created = await rest(URL_PLAIN, 'POST', '/flows', { name, ...solo });
    check(created.status === 201, `create ${name}: ${JSON.stringify(created.body)}`);
    ids.push(created.body.flowId);
  }
  result.cancelledByKey = ids[ids.length - 1];
  await page.evaluate((fid) => { location.hash = `#/flows/${fid}`; }, result.cancelledByKey);
  await waitNode(page, 'job', 'cancelled');
  await page.click('g.node[data-name="job"]');
  await page.waitForSelector('#node-reason');
  const reason = await page.textContent('#node-reason');
  check(reason.includes('concurrency key "solo"') && reason.includes('cancelNewest'), `the reason is shown: ${reason}`);
  check((await page.textContent('#node-panel')).includes('Why cancelled'), 'titled why cancelled');
  const limit = await page.textContent('#node-concurrency');
  check(limit.includes("'solo'") && limit.includes('"solo"') && limit.includes('1 at once, cancelNewest'), `the key is shown: ${limit}`);
  check((await page.textContent('g.node[data-name="job"] text.sub')).includes('by its key'), 'the graph says so too');
  log(`a node its concurrency key cancelled shows why: ${reason}`);

  for (const id of ids) {
    if (id !== result.cancelledByKey) await rest(URL_PLAIN, 'POST', `/flows/${id}/cancel`);
  }
}

/** The test's expanded map group, with the artifacts. */
async function mapShot(page) {
  const file = path.join(ARTIFACTS, 'dagflow-dashboard-map.png');
  await page.waitForTimeout(100);
  const box = await page.$eval('#graph', (g) => {
    const r = g.getBoundingClientRect();
    return { x: r.x, y: r.y, width: r.width, height: r.height };
  });
  await page.screenshot({ path: file, clip: box });
  log(`expanded map group saved to ${file}`);
}

/** 1,000 elements: one group node, expanded before the map starts, its chips following the run live. */
async function wideMapScenario(page, result) {
  const created = await rest(URL_PLAIN, 'POST', '/flows', {
    name: 'wide map',
    nodes: [
      { name: 'gate', wait: { signal: 'go' } },
      { name: 'source', handler: 'echo', parents: ['gate'], data: { items: Array.from({ length: 1000 }, (_, i) => i) } },
      { name: 'each', handler: 'noop', parents: ['source'], map: { from: 'source', path: '/data/items', maxParallel: 50 } },
      { name: 'join', handler: 'noop', parents: ['each'] },
    ],
  });
  check(created.status === 201, `create wide map: ${JSON.stringify(created.body)}`);
  const id = created.body.flowId;
  result.wideMap = id;
  await page.evaluate((fid) => { location.hash = `#/flows/${fid}`; }, id);
  await waitNode(page, 'gate', 'waiting');
  await page.click('g.node[data-name="each"] g.toggle');
  await page.waitForSelector('g.node[data-name="each"] .el-none');
  // Count the chips that turn completed in place, from events.
  await page.evaluate(() => {
    window.__chipsDone = 0;
    new MutationObserver((records) => records.forEach((r) => {
      if (r.target.classList.contains('el') && r.target.dataset.status === 'completed') window.__chipsDone++;
    })).observe(document.querySelector('#graph'), { subtree: true, attributes: true, attributeFilter: ['data-status'] });
  });
  const go = await rest(URL_PLAIN, 'POST', `/flows/${id}/nodes/gate/signal`, null);
  check(go.status === 200, `signal the gate: ${JSON.stringify(go)}`);
  const t0 = Date.now();
  await page.waitForFunction(() => document.querySelectorAll('g.node[data-name="each"] .elgrid .el').length === 1000, null, { timeout: 60000 });
  const shownMs = Date.now() - t0;
  await waitFlowStatus(page, 'completed', 90000);
  await page.waitForFunction(() => document.querySelectorAll('g.node[data-name="each"] .elgrid .el[data-status="completed"]').length === 1000);
  const runMs = Date.now() - t0;
  const live = await page.evaluate(() => window.__chipsDone);
  check(live > 0, 'chips turned completed live, from events');
  check((await page.textContent('g.node[data-name="each"] text.counts')) === '1000 done · 0 running · 0 failed', 'counts of 1,000');
  check((await page.$$eval('g.node', (gs) => gs.length)) === 4, '4 nodes laid out for a map of 1,000');
  const tc = Date.now();
  await page.click('g.node[data-name="each"] .elgrid .el[data-k="999"]');
  await page.waitForSelector('#node-detail-name:text("each[999]")');
  await page.fill('#node-search', 'each[500]');
  await page.press('#node-search', 'Enter');
  await page.waitForSelector('#node-detail-name:text("each[500]")');
  log(`1,000-element map: chips shown ${shownMs} ms after the gate opened, ran in ${runMs} ms, ${live} chips turned completed live; element details in ${Date.now() - tc} ms`);
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

/** A map group expanded mid-run, its panel open, saved for the docs. */
async function mapScreenshot(page, result) {
  const created = await rest(URL_PLAIN, 'POST', '/flows', {
    name: 'thumbnails',
    nodes: [
      { name: 'list-images', handler: 'echo', data: { items: Array.from({ length: 120 }, (_, i) => `img-${i}.png`) } },
      { name: 'thumbnail', handler: 'sleep', parents: ['list-images'], data: { ms: 300 },
        map: { from: 'list-images', path: '/data/items', maxParallel: 12 } },
      { name: 'zip', handler: 'echo', parents: ['thumbnail'] },
      { name: 'notify', handler: 'echo', parents: ['list-images'] },
      { name: 'approve-release', parents: ['zip'], wait: { signal: 'release', timeoutMs: 86400000 } },
    ],
  });
  check(created.status === 201, 'create the map screenshot flow');
  const id = created.body.flowId;
  result.mapScreenshot = id;
  await page.setViewportSize({ width: 1400, height: 820 });
  await page.evaluate((fid) => { location.hash = `#/flows/${fid}`; }, id);
  await page.waitForSelector('g.node[data-name="thumbnail"]');
  await page.click('g.node[data-name="thumbnail"] g.toggle');
  await page.waitForFunction(() => {
    const t = document.querySelector('g.node[data-name="thumbnail"] text.counts')?.textContent || '';
    const done = parseInt(t, 10);
    return done >= 60 && done < 90;
  }, null, { polling: 50 });
  await page.click('g.node[data-name="thumbnail"] text.name', { force: true });
  await page.waitForSelector('#map-counts');
  await page.screenshot({ path: MAP_SCREENSHOT });
  await rest(URL_PLAIN, 'POST', `/flows/${id}/cancel`);
  log(`map screenshot saved to ${MAP_SCREENSHOT}`);
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

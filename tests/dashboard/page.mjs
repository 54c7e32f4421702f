// The flow page on any screen (called by e2e.mjs with its helpers), in a browser
// context of its own whose WebSocket goes through a route the test can cut:
//
// - why a node waits: 0 workers on its queue and its place there; a retry's
//   ticking countdown, then every attempt with its error; a skipped node's reason;
// - node actions: Retry this node, Re-run from here, Signal (checked over the API);
// - the spec: shown as submitted, copied, cloned into the Submit page;
// - deep links: selecting a node changes the URL, back closes it, loading it opens it;
// - stale data: with the WebSocket cut the page says so and disables its actions,
//   and enables them again once it has reconnected and resynced;
// - any screen: at 400x800 (and 360) the panel is a bottom sheet, the graph keeps
//   its size, nothing overflows, controls are 40 px tall; at 2560 the space is used;
// - dark mode follows prefers-color-scheme.
//
// DASHBOARD_NARROW_SCREENSHOT and DASHBOARD_DARK_SCREENSHOT, when set, are where
// the 400 px page with its bottom sheet and the dark page are saved.

const WAIT = 20000;
const NARROW_SHOT = process.env.DASHBOARD_NARROW_SCREENSHOT || '';
const DARK_SHOT = process.env.DASHBOARD_DARK_SCREENSHOT || '';

export async function pageScenario(browser, newPage, { base, rest, check, log, result }) {
  const context = await browser.newContext({ viewport: { width: 1600, height: 900 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  const page = await newPage(context);
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });

  // Every /ws of the page goes through here: passed on to the server, unless cut.
  const socket = { cut: false, open: [] };
  await page.routeWebSocket(/\/ws(\?|$)/, (ws) => {
    if (socket.cut) {
      ws.close({ code: 1012, reason: 'cut by the test' });
      return;
    }
    const server = ws.connectToServer();
    socket.open.push({ ws, server });
  });
  const cutSocket = async () => {
    socket.cut = true;
    const open = socket.open.splice(0);
    for (const { ws, server } of open) {
      await server.close().catch(() => {});
      await ws.close({ code: 1012, reason: 'cut by the test' }).catch(() => {});
    }
  };

  const waitNode = (name, status) => page.waitForSelector(`g.node[data-name="${name}"][data-status="${status}"]`, { timeout: WAIT });
  const open = async (id) => {
    await page.evaluate((fid) => { location.hash = `#/flows/${encodeURIComponent(fid)}`; }, id);
    await page.waitForSelector('g.node');
  };
  const create = async (spec) => {
    const res = await rest(base, 'POST', '/flows', spec);
    check(res.status === 201, `create ${spec.name}: ${JSON.stringify(res.body)}`);
    return res.body.flowId;
  };
  const node = async (id, name) => (await rest(base, 'GET', `/flows/${id}/nodes/${encodeURIComponent(name)}`)).body;
  const until = async (what, fn) => {
    const deadline = Date.now() + WAIT;
    for (;;) {
      const v = await fn();
      if (v) return v;
      check(Date.now() < deadline, what);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  await page.goto(`${base}/`);
  await page.waitForSelector('#conn[data-state="live"]');

  // ---- a queue nobody serves: the node says so, and where it stands; the URL follows the panel
  const Q = 'e2e-page-nobody';
  const ahead = await create({ name: 'ahead', nodes: [{ name: 'job', handler: 'noop', queue: Q }] });
  const lonely = await create({ name: 'lonely', nodes: [{ name: 'job', handler: 'noop', queue: Q }] });
  await until(`two jobs on ${Q}`, async () => {
    const q = await rest(base, 'GET', `/queues/${Q}`);
    return q.status === 200 && q.body.ready.total === 2;
  });
  await open(lonely);
  await waitNode('job', 'queued');
  await page.click('g.node[data-name="job"]');
  await page.waitForSelector('#node-queue-link');
  const hint = await page.textContent('#node-queue-hint');
  check(hint.includes(`0 workers serving ${Q}`) && hint.includes(`1 job ready ahead in ${Q}`), `queue hint: ${hint}`);
  check(page.url().endsWith(`#/flows/${lonely}/nodes/job`), `selecting a node changes the URL: ${page.url()}`);
  await page.goBack();
  await page.waitForSelector('#node-panel', { state: 'hidden' });
  check(page.url().endsWith(`#/flows/${lonely}`), `back closes the panel: ${page.url()}`);
  await page.goForward();
  await page.waitForSelector('#node-detail-name:text("job")');
  // The link on its own, in a fresh load: the flow opens with the node's panel.
  await page.goto(`${base}/#/flows/${lonely}/nodes/job`);
  await page.reload();
  await page.waitForSelector('#node-detail-name:text("job")');
  check(await page.$eval('g.node[data-name="job"]', (g) => g.classList.contains('selected')), 'the deep-linked node is selected');
  log(`a node on an unserved queue says "0 workers serving ${Q}" and its place; its URL opens it, back closes it`);
  for (const id of [ahead, lonely]) await rest(base, 'POST', `/flows/${id}/cancel`);

  // ---- a concurrency key holding a job back: who holds it, how many run and wait
  const keyed = { nodes: [{ name: 'job', handler: 'sleep', data: { ms: 4000 }, concurrency: { key: "'tenant-a'", limit: 1 } }] };
  const holder = await create({ name: 'holder', ...keyed });
  await until('the holder runs', async () => (await node(holder, 'job')).status === 'active');
  const heldFlow = await create({ name: 'held', ...keyed });
  await until('tenant-a holds a job back', async () => {
    const q = await rest(base, 'GET', '/queues/default');
    return q.body.heldBack.some((h) => h.key === 'tenant-a' && h.waiting === 1);
  });
  await open(heldFlow);
  await page.click('g.node[data-name="job"]');
  await page.waitForSelector('.held-by[data-kind="concurrency"]');
  const held = await page.textContent('.held-by');
  check(held === 'Held by key tenant-a: 1 of 1 running, 1 waiting.', `the key holding it back: ${held}`);
  log(`a job its key holds back says so: ${held}`);
  await waitNode('job', 'completed');

  // ---- a retry's countdown, ticking; then every attempt with its error
  const retrying = await create({
    name: 'retrying',
    nodes: [{ name: 'flaky', handler: 'fail', data: { message: 'upstream said 503', times: 2 },
      opts: { attempts: 3, backoff: { type: 'fixed', delayMs: 4000 } } }],
  });
  await open(retrying);
  await page.click('g.node[data-name="flaky"]');
  // The spec gives the "of 3"; the countdown starts from the 4 s backoff.
  await page.waitForFunction(() => /^Retry 2 of 3 in \d+ s$/.test(document.querySelector('#node-retry')?.textContent || ''));
  const first = await page.textContent('#node-retry');
  const m = /^Retry 2 of 3 in (\d+) s$/.exec(first);
  check(m && Number(m[1]) <= 4, `retry countdown: ${first}`);
  await page.waitForFunction((n) => {
    const t = document.querySelector('#node-retry')?.textContent || '';
    const s = /in (\d+) s$/.exec(t);
    return s && Number(s[1]) < n;
  }, Number(m[1]), { timeout: 5000 });
  await waitNode('flaky', 'completed');
  await page.waitForFunction(() => document.querySelectorAll('#node-attempts tr.attempt').length === 3);
  const attempts = await page.$$eval('#node-attempts tr.attempt', (rows) => rows.map((r) => ({
    outcome: r.querySelector('.attempt-outcome').textContent, error: r.querySelector('.attempt-error')?.textContent || '',
  })));
  check(attempts[0].error === 'upstream said 503' && attempts[1].error === 'upstream said 503'
    && attempts[0].outcome === 'failed' && attempts[2].outcome === 'completed', `every attempt with its error: ${JSON.stringify(attempts)}`);
  check((await page.$('#node-retry')) === null, 'no countdown once it ran');
  log(`a retry counts down (${first}, ticking), then each of the 3 attempts is listed with its error`);

  // ---- a failed node: skipped child with its reason, Retry this node, Re-run from here
  const failing = await create({
    name: 'failing',
    nodes: [
      { name: 'extract', handler: 'fail', data: { message: 'disk full', times: 1 } },
      { name: 'load', handler: 'echo', parents: ['extract'] },
    ],
  });
  await open(failing);
  await waitNode('load', 'skipped');
  await page.click('g.node[data-name="load"]');
  await page.waitForSelector('#node-reason');
  const reason = await page.textContent('#node-reason');
  check(reason.includes('extract'), `a skipped node says why: ${reason}`);
  check((await page.textContent('#node-panel')).includes('Why skipped'), 'titled why skipped');
  await page.click('g.node[data-name="extract"]');
  await page.waitForSelector('#retry-node');
  check(await page.isVisible('#rerun-node'), 'a failed node offers both Retry this node and Re-run from here');
  await page.click('#retry-node');
  await waitNode('load', 'completed');
  const extract = await node(failing, 'extract');
  check(extract.status === 'completed' && extract.attempt === 2, `retried over the API: ${JSON.stringify(extract)}`);
  await page.click('g.node[data-name="load"]');
  await page.waitForSelector('#rerun-node');
  check((await page.$('#retry-node')) === null, 'a completed node offers no Retry this node');
  const loadBefore = (await node(failing, 'load')).attempt;
  await page.click('#rerun-node');
  await until('load re-ran', async () => {
    const n = await node(failing, 'load');
    return n.status === 'completed' && n.attempt === loadBefore + 1;
  });
  check((await node(failing, 'extract')).attempt === 2, 'upstream kept its result');
  log(`a skipped node says why (${reason}); Retry this node and Re-run from here reach the server`);

  // ---- the spec: as submitted, copied, cloned into Submit
  const waitSpec = {
    name: 'approval',
    nodes: [
      { name: 'prepare', handler: 'echo', data: { region: 'eu-west', items: [1, 2, 3] } },
      { name: 'approve', parents: ['prepare'], wait: { signal: 'go' } },
      { name: 'ship', handler: 'echo', parents: ['approve'] },
    ],
  };
  const approval = await create(waitSpec);
  result.pageApproval = approval;
  await open(approval);
  await page.click('#show-spec');
  await page.waitForSelector('#spec-copy:not([disabled])');
  const shown = JSON.parse(await page.textContent('#spec-json'));
  const served = (await rest(base, 'GET', `/flows/${approval}/spec`)).body;
  check(JSON.stringify(shown) === JSON.stringify(served), 'the dialog shows the served spec');
  check(shown.name === waitSpec.name && shown.nodes.map((n) => n.name).join() === 'prepare,approve,ship'
    && canonical(shown.nodes[0].data) === canonical(waitSpec.nodes[0].data)
    && shown.nodes[1].wait.signal === 'go', `the spec is the one posted: ${JSON.stringify(shown)}`);
  await page.click('#spec-copy');
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check(JSON.stringify(JSON.parse(copied)) === JSON.stringify(served), 'Copy puts the spec on the clipboard');
  await page.click('#spec-clone');
  await page.waitForFunction(() => location.hash === '#/submit');
  const draft = JSON.parse(await page.inputValue('#spec-input'));
  check(JSON.stringify(draft) === JSON.stringify(served), 'Clone and edit prefills Submit with the spec');
  await page.fill('#spec-input', JSON.stringify({ ...draft, name: 'approval (edited)' }));
  await page.click('#submit-flow');
  await page.waitForFunction(() => /^#\/flows\/[^/]+$/.test(location.hash));
  const cloned = decodeURIComponent(new URL(page.url()).hash.replace('#/flows/', ''));
  const clonedFlow = (await rest(base, 'GET', `/flows/${cloned}`)).body;
  check(cloned !== approval && clonedFlow.name === 'approval (edited)' && clonedFlow.nodes.length === 3, `the edited clone was submitted: ${JSON.stringify(clonedFlow.name)}`);
  await rest(base, 'POST', `/flows/${cloned}/cancel`);
  // The flow page's own Clone and edit does the same in one click.
  await open(approval);
  await page.click('#clone-flow');
  await page.waitForFunction(() => location.hash === '#/submit');
  check(JSON.stringify(JSON.parse(await page.inputValue('#spec-input'))) === JSON.stringify(served), 'Clone and edit on the flow page prefills Submit');
  log('Spec shows the submitted spec, Copy copies it, Clone and edit opened it in Submit, edited and submitted');

  // ---- stale while the WebSocket is cut: actions off, then on again after the resync
  await open(approval);
  await waitNode('approve', 'waiting');
  await page.click('g.node[data-name="approve"]');
  await page.waitForSelector('#signal-send:not([disabled])');
  check(!(await page.isDisabled('#cancel-flow')), 'cancel enabled while live');
  await cutSocket();
  await page.waitForSelector('#stale-banner', { state: 'visible' });
  for (const sel of ['#cancel-flow', '#delete-flow', '#signal-send']) check(await page.isDisabled(sel), `${sel} disabled while stale`);
  check(await page.evaluate(() => document.body.classList.contains('stale')), 'the page is marked stale');
  // Something changes meanwhile: the resync must show it.
  const meanwhile = await rest(base, 'POST', `/flows/${approval}/nodes/approve/signal`, { by: 'someone else' });
  check(meanwhile.status === 200, `signal over REST: ${JSON.stringify(meanwhile.body)}`);
  await until('the flow completes', async () => (await rest(base, 'GET', `/flows/${approval}`)).body.status === 'completed');
  check(await page.isDisabled('#delete-flow'), 'still disabled until reconnected');
  socket.cut = false;
  await page.waitForSelector('#stale-banner', { state: 'hidden', timeout: WAIT });
  await page.waitForSelector('#delete-flow:not([disabled])');
  await waitNode('ship', 'completed');
  check(await page.isDisabled('#cancel-flow'), 'cancel follows the resynced state (completed)');
  // The list too.
  await page.click('nav a[data-nav="flows"]');
  await page.waitForSelector(`tr[data-id="${approval}"]`);
  await page.waitForSelector('#conn[data-state="live"]');
  await cutSocket();
  await page.waitForSelector('#stale-banner', { state: 'visible' });
  socket.cut = false;
  await page.waitForSelector('#stale-banner', { state: 'hidden', timeout: WAIT });
  log('a cut WebSocket marks the flow page and the list stale and disables actions; they come back after the resync');

  // ---- signal from the panel (a second wait flow)
  const signalled = await create({ name: 'signalled', nodes: [{ name: 'gate', wait: { signal: 'open' } }] });
  await open(signalled);
  await waitNode('gate', 'waiting');
  await page.click('g.node[data-name="gate"]');
  await page.waitForSelector('#signal-send:not([disabled])');
  await page.fill('#signal-payload', '{"opened": "from the page"}');
  await page.click('#signal-send');
  await waitNode('gate', 'completed');
  const gate = await node(signalled, 'gate');
  check(gate.result && gate.result.opened === 'from the page', `signal reached the node: ${JSON.stringify(gate)}`);
  log('Signal from the panel delivered its JSON payload');

  // A flow in every state, for the screenshots.
  const showcase = NARROW_SHOT || DARK_SHOT ? await create({
    name: 'checkout',
    nodes: [
      { name: 'reserve-stock', handler: 'echo', data: { sku: 'A-42' } },
      { name: 'charge-card', handler: 'echo', parents: ['reserve-stock'] },
      { name: 'retry-payment', handler: 'fail', parents: ['reserve-stock'], data: { message: 'gateway timeout', times: 2 },
        opts: { attempts: 5, backoff: { type: 'fixed', delayMs: 60000 } } },
      { name: 'fraud-check', handler: 'fail', parents: ['charge-card'], data: { message: 'scoring service answered 503' } },
      { name: 'notify-customer', handler: 'echo', parents: ['fraud-check'] },
      { name: 'pack-order', handler: 'sleep', parents: ['charge-card'], data: { ms: 120000 } },
      { name: 'manager-approval', parents: ['charge-card'], wait: { signal: 'approve' } },
      { name: 'ship', handler: 'echo', parents: ['pack-order', 'manager-approval'] },
    ],
    opts: { onFailure: 'continue' },
  }) : null;

  // ---- any screen: 400x800, the panel a bottom sheet over an unchanged graph
  await page.setViewportSize({ width: 400, height: 800 });
  await open(failing);
  await page.waitForFunction(() => location.hash.split('/').length === 3);
  const before = await page.$eval('#graph', (g) => g.getBoundingClientRect().toJSON());
  check(before.width > 300 && before.height > 200, `the graph has room at 400 px: ${JSON.stringify(before)}`);
  await page.click('g.node[data-name="extract"]');
  await page.waitForSelector('#node-detail-name:text("extract")');
  await page.waitForSelector('#node-attempts');
  const sheet = await page.evaluate(() => {
    const p = document.querySelector('#node-panel').getBoundingClientRect();
    const g = document.querySelector('#graph').getBoundingClientRect();
    return {
      position: getComputedStyle(document.querySelector('#node-panel')).position,
      top: p.top, bottom: p.bottom, left: p.left, right: p.right, height: p.height,
      graph: g.toJSON(), innerWidth, innerHeight,
      scrollWidth: document.documentElement.scrollWidth,
    };
  });
  check(sheet.position === 'fixed' && Math.abs(sheet.bottom - sheet.innerHeight) < 1 && sheet.left === 0
    && Math.abs(sheet.right - sheet.innerWidth) < 1, `a bottom sheet: ${JSON.stringify(sheet)}`);
  check(sheet.height <= sheet.innerHeight * 0.6 + 1, `at most 60% high: ${sheet.height}`);
  check(Math.abs(sheet.graph.width - before.width) < 1 && Math.abs(sheet.graph.height - before.height) < 1,
    `the graph keeps its size: ${JSON.stringify(before)} then ${JSON.stringify(sheet.graph)}`);
  check(sheet.scrollWidth <= sheet.innerWidth, `nothing overflows at 400 px: ${sheet.scrollWidth}`);
  const targets = await page.$$eval('header.topbar a, header.topbar button, .flow-head button, .flow-head a, .flow-head input, #node-panel button, #node-panel a', (els) => els
    .filter((e) => e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden')
    .map((e) => ({ what: e.id || e.textContent.trim().slice(0, 20), h: e.getBoundingClientRect().height })));
  const small = targets.filter((e) => e.h < 40);
  check(targets.length >= 14 && small.length === 0, `tap targets under 40 px: ${JSON.stringify(small)} of ${targets.length}`);
  const nodeHeight = await page.$eval('g.node[data-name="extract"] rect.box', (r) => r.getBoundingClientRect().height);
  check(nodeHeight >= 40, `a graph node is a 40 px tap target: ${nodeHeight}`);
  if (NARROW_SHOT) {
    await shotFlow(page, showcase, 'fraud-check');
    await page.screenshot({ path: NARROW_SHOT });
    log(`narrow screenshot saved to ${NARROW_SHOT}`);
  }
  await page.click('#close-panel');
  await page.waitForSelector('#node-panel', { state: 'hidden' });
  for (const width of [360, 400]) {
    await page.setViewportSize({ width, height: 740 });
    for (const hash of [`#/flows/${failing}`, '#/', '#/queues', '#/submit']) {
      await page.evaluate((h) => { location.hash = h; }, hash);
      await page.waitForSelector(hash === '#/' ? '#flows-table' : hash === '#/queues' ? '#queues' : hash === '#/submit' ? '#spec-input' : 'g.node');
      const sw = await page.evaluate(() => document.documentElement.scrollWidth);
      check(sw <= width, `${hash} fits ${width} px: scrollWidth ${sw}`);
    }
  }
  log('at 400x800 the panel is a bottom sheet over an unchanged graph, controls are 40 px, 360 and 400 px do not overflow');

  // ---- 2560 px: the page uses the width
  await page.setViewportSize({ width: 2560, height: 1300 });
  await open(failing);
  await page.click('g.node[data-name="extract"]');
  await page.waitForSelector('#node-detail-name:text("extract")');
  const wide = await page.evaluate(() => ({
    graph: document.querySelector('#graph').getBoundingClientRect().width,
    panel: document.querySelector('#node-panel').getBoundingClientRect().width,
  }));
  check(wide.graph + wide.panel > 2400 && wide.panel >= 500, `2560 px used: ${JSON.stringify(wide)}`);

  // ---- dark mode follows the system
  await page.setViewportSize({ width: 1600, height: 900 });
  const colours = () => page.evaluate(() => {
    const chip = (s) => {
      const sw = document.querySelector(`.chip[data-status="${s}"] .sw`);
      const cs = getComputedStyle(sw);
      return `${cs.backgroundColor}/${cs.borderTopColor}`;
    };
    const statuses = ['pending', 'queued', 'active', 'waiting', 'completed', 'failed', 'skipped', 'cancelled'];
    return {
      bg: getComputedStyle(document.body).backgroundColor,
      text: getComputedStyle(document.body).color,
      panel: getComputedStyle(document.querySelector('#node-panel')).backgroundColor,
      node: getComputedStyle(document.querySelector('g.node[data-name="extract"] rect.box')).fill,
      statuses: statuses.map(chip),
    };
  });
  const light = await colours();
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.waitForFunction((bg) => getComputedStyle(document.body).backgroundColor !== bg, light.bg);
  const dark = await colours();
  const lum = (rgb) => {
    const [r, g, b] = rgb.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map((c) => {
      const v = c / 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  check(lum(dark.bg) < 0.05 && lum(dark.panel) < 0.05, `dark backgrounds: ${dark.bg}, ${dark.panel}`);
  const contrast = (lum(dark.text) + 0.05) / (lum(dark.bg) + 0.05);
  check(contrast >= 7, `text contrast in dark mode ${contrast.toFixed(1)}:1`);
  check(new Set(dark.statuses).size === dark.statuses.length, `status colours stay distinct: ${dark.statuses.join(' ')}`);
  check(dark.statuses.every((c, i) => c !== light.statuses[i]) && dark.node !== light.node, 'status colours change with the theme');
  if (DARK_SHOT) {
    await shotFlow(page, showcase, 'retry-payment');
    await page.screenshot({ path: DARK_SHOT });
    log(`dark screenshot saved to ${DARK_SHOT}`);
  }
  await page.emulateMedia({ colorScheme: 'light' });
  log(`dark mode: body ${dark.bg}, text contrast ${contrast.toFixed(1)}:1, 8 distinct status colours`);

  check(consoleErrors.length === 0, `console errors: ${consoleErrors.join(' | ')}`);
  await context.close();
}

/** The showcase flow with `name` open, once its states have settled, for a screenshot. */
async function shotFlow(page, id, name) {
  await page.evaluate((fid) => { location.hash = `#/flows/${encodeURIComponent(fid)}`; }, id);
  await page.waitForSelector('g.node[data-name="notify-customer"][data-status="skipped"]');
  await page.waitForSelector('g.node[data-name="pack-order"][data-status="active"]');
  await page.waitForSelector('g.node[data-name="manager-approval"][data-status="waiting"]');
  await page.waitForSelector('g.node[data-name="retry-payment"][data-status="queued"]');
  await page.click(`g.node[data-name="${name}"]`);
  await page.waitForSelector(`#node-detail-name:text("${name}")`);
  await page.waitForSelector('#node-attempts');
  await page.waitForSelector('#toast', { state: 'hidden' });
}

/** JSON with object keys sorted: the server keeps `data` as a map sorted by key. */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

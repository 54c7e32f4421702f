// Big flows at a glance, in the browser (called by e2e.mjs with its helpers):
//
//   - a 1,000-node fan-out (1 -> 998 -> 1, built-in handlers) shows its 998
//     same-shape siblings as one group with live counts, expanding on click and
//     collapsing back; expanded at Fit it is too small for labels and the density
//     canvas shows status colours (running colours mid-run, green once done);
//   - the minimap is shown for it (hidden for a small flow) and a click on it
//     moves the view there;
//   - the "show" filter keeps the failed (or running) nodes and groups, in the URL;
//   - hovering a node highlights its ancestors and descendants;
//   - Tab reaches a node, arrows move along the edges, Enter opens its panel,
//     Escape closes it;
//   - a 10,000-node flow keeps frames under 50 ms (p95) while its events stream in;
//   - the same at 1600x900 and at 400x800.
//
// DASHBOARD_BIG_SCREENSHOT: where to save the 1,000-node flow at Fit mid-run.

const WAIT = 20000;

/** Counts the canvas's pixels of each status colour (exact, opaque). Runs in the page. */
function pixelsInPage(sel) {
  const c = document.querySelector(sel);
  if (!c || !c.width || !c.height) return null;
  const style = getComputedStyle(document.documentElement);
  const probe = document.createElement('canvas').getContext('2d');
  const want = new Map();
  for (const s of ['pending', 'queued', 'active', 'waiting', 'completed', 'failed', 'skipped', 'cancelled']) {
    probe.fillStyle = style.getPropertyValue(`--${s}-s`).trim();
    const hex = probe.fillStyle; // normalised to #rrggbb
    const key = parseInt(hex.slice(1), 16);
    if (!want.has(key)) want.set(key, s);
  }
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const counts = { total: 0, faint: 0, area: c.width * c.height };
  for (let p = 0; p < d.length; p += 4) {
    if (d[p + 3] === 0) continue;
    if (d[p + 3] !== 255) {
      counts.faint++; // a dimmed block
      continue;
    }
    const s = want.get((d[p] << 16) | (d[p + 1] << 8) | d[p + 2]);
    if (s) counts[s] = (counts[s] || 0) + 1;
    counts.total++;
  }
  return counts;
}

const pixels = (page, sel) => page.evaluate(pixelsInPage, sel);

/** The share of the density canvas's middle pixel column that is painted: the fan-out's extent. */
const columnCover = (page) => page.evaluate(() => {
  const c = document.querySelector('#graph canvas.density');
  const d = c.getContext('2d').getImageData(Math.floor(c.width / 2), 0, 1, c.height).data;
  let painted = 0;
  for (let p = 3; p < d.length; p += 4) if (d[p] === 255) painted++;
  return painted / c.height;
});

/** Waits until the canvas's pixel counts satisfy `pred`; fails saying what it saw. */
async function waitPixels(page, sel, pred, what, timeout) {
  const deadline = Date.now() + (timeout || WAIT);
  let seen = null;
  for (;;) {
    seen = await pixels(page, sel);
    if (seen && pred(seen)) return seen;
    if (Date.now() > deadline) throw new Error(`check failed: ${what}: ${JSON.stringify(seen)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The view's transform and the layout point at the graph's centre. */
async function viewCentre(page) {
  return page.evaluate(() => {
    const t = document.querySelector('#viewport').getAttribute('transform');
    const m = /translate\(([-\d.]+),([-\d.]+)\) scale\(([-\d.]+)\)/.exec(t);
    const r = document.querySelector('#graph').getBoundingClientRect();
    const [x, y, k] = [Number(m[1]), Number(m[2]), Number(m[3])];
    return { k, cx: (r.width / 2 - x) / k, cy: (r.height / 2 - y) / k };
  });
}

/** 1 -> width -> 1; `gate` makes the first node wait for signal "go". */
function fanOut(name, width, handler, data, gate) {
  const parts = Array.from({ length: width }, (_, i) => ({ name: `part-${i}`, handler, parents: ['split'], data }));
  return {
    name,
    nodes: [
      gate ? { name: 'split', wait: { signal: 'go' } } : { name: 'split', handler: 'echo' },
      ...parts,
      { name: 'merge', handler: 'noop', parents: parts.map((p) => p.name) },
    ],
  };
}

async function openFlow(page, id, query) {
  await page.evaluate(([fid, q]) => { location.hash = `#/flows/${fid}${q || ''}`; }, [id, query]);
  await page.waitForSelector('#dag');
}

const flowStatusIs = (page, s, timeout) =>
  page.waitForFunction((x) => document.querySelector('#flow-status')?.textContent === x, s, { timeout: timeout || WAIT });

export async function bigFlowScenario(page, result, helpers) {
  await fanOutAndFilters(page, result, helpers);
  await tenThousandNodes(page, result, helpers);
}

async function fanOutAndFilters(page, result, { base, rest, check, log }) {
  const shot = process.env.DASHBOARD_BIG_SCREENSHOT || '';
  const open = (id, query) => openFlow(page, id, query);
  const flowStatus = (s, timeout) => flowStatusIs(page, s, timeout);

  // ---- the 1,000-node fan-out, at 1600x900
  await page.setViewportSize({ width: 1600, height: 900 });
  const fan = await rest(base, 'POST', '/flows', fanOut('fan-out 1,000', 998, 'sleep', { ms: 40 }));
  check(fan.status === 201, `create the 1,000-node fan-out: ${JSON.stringify(fan.body)}`);
  const fanId = fan.body.flowId;
  result.bigFanOut = fanId;
  await open(fanId);
  const group = 'g.node.shape[data-size="998"]';
  await page.waitForSelector(group);
  check((await page.$$eval('g.node', (gs) => gs.length)) === 3, 'split, the group and merge: 3 nodes drawn');
  check((await page.textContent(`${group} text.name`)) === '998 × sleep', 'the group names its size and handler');
  check((await page.textContent(`${group} text.sub`)).startsWith('of 998 · default'), 'the group says of how many, on which queue');
  // Live counts: running members while it runs, then more done.
  await page.waitForFunction((g) => /^\d+ done · [1-9]\d* running · 0 failed$/.test(document.querySelector(`${g} text.counts`).textContent), group);
  const doneAt = async () => parseInt(await page.textContent(`${group} text.counts`), 10);
  const d0 = await doneAt();
  await page.waitForFunction(([g, d]) => parseInt(document.querySelector(`${g} text.counts`).textContent, 10) > d + 20, [group, d0]);
  check(['active', 'queued'].includes(await page.getAttribute(group, 'data-status')), 'a running group shows as running');
  log(`1,000-node fan-out ${fanId}: 998 siblings drawn as one group, counting live`);

  // Expanded, at Fit: far too small for labels, so the density layer draws it.
  await page.click(group);
  await page.waitForFunction(() => document.querySelectorAll('g.node').length === 1000);
  await page.click('#fit');
  await page.waitForSelector('#graph.dense canvas.density');
  check(await page.isHidden('#dag #viewport'), 'the SVG nodes are not painted in the density view');
  const mid = await waitPixels(page, '#graph canvas.density',
    (c) => (c.active || 0) + (c.queued || 0) > 50 && (c.completed || 0) > 50, 'running and completed colours mid-run');
  // Regions, not a sliver: the fan-out covers a good part of the graph's box, all of its height in view.
  check(mid.total > mid.area * 0.1, `the density view covers ${((100 * mid.total) / mid.area).toFixed(1)}% of the graph`);
  const cover = await columnCover(page);
  check(cover > 0.85, `at Fit the whole fan-out is in view: ${(cover * 100).toFixed(0)}% of the height painted`);
  log(`density view mid-run: ${JSON.stringify(mid)}`);
  if (shot) {
    // Without an earlier step's toast over the minimap (it goes after 3 s; the run takes ~10 s).
    await page.waitForSelector('#toast', { state: 'hidden' });
    await page.screenshot({ path: shot });
    log(`big flow screenshot saved to ${shot}`);
  }
  // The minimap: there, with the same colours, and a click on it moves the view.
  await page.waitForSelector('#graph canvas.minimap:not([hidden])');
  const mini = await page.$eval('#graph canvas.minimap', (c) => {
    const r = c.getBoundingClientRect();
    return { x: r.x, y: r.y, w: r.width, h: r.height };
  });
  const before = await viewCentre(page);
  const layoutH = await page.evaluate(() => {
    const g = document.querySelector('#dag #viewport');
    return g.getBBox().height;
  });
  // page.click waits until nothing covers it (a toast from an earlier step may).
  await page.click('#graph canvas.minimap', { position: { x: mini.w / 2, y: mini.h * 0.8 } });
  await page.waitForFunction(() => !document.querySelector('#graph').classList.contains('dense'));
  const after = await viewCentre(page);
  check(after.k >= 1, `a click on the minimap zooms in to a readable scale: ${after.k}`);
  check(after.cy > layoutH * 0.65 && after.cy < layoutH * 0.95 && Math.abs(after.cy - before.cy) > layoutH * 0.2,
    `the view moved to the clicked point: centre ${before.cy.toFixed(0)} -> ${after.cy.toFixed(0)} of ${layoutH.toFixed(0)}`);
  check(await page.isVisible('#graph canvas.minimap'), 'the minimap stays while the graph overflows the view');
  // A drag on it pans the view along, at the same scale.
  const m2 = await page.$eval('#graph canvas.minimap', (c) => c.getBoundingClientRect().toJSON());
  await page.mouse.move(m2.x + m2.width / 2, m2.y + m2.height * 0.8);
  await page.mouse.down();
  await page.mouse.move(m2.x + m2.width / 2, m2.y + m2.height * 0.5, { steps: 5 });
  await page.mouse.move(m2.x + m2.width / 2, m2.y + m2.height * 0.3, { steps: 5 });
  await page.mouse.up();
  const dragged = await viewCentre(page);
  check(dragged.k === after.k && dragged.cy < layoutH * 0.4 && dragged.cy < after.cy - layoutH * 0.3,
    `a drag on the minimap pans the view: centre ${after.cy.toFixed(0)} -> ${dragged.cy.toFixed(0)} at scale ${dragged.k}`);
  // Labels are drawn again where we landed.
  const shown = await page.evaluate(() => {
    const r = document.querySelector('#graph').getBoundingClientRect();
    const e = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    const g = e && e.closest && e.closest('g.node');
    return g ? g.dataset.name : null;
  });
  log(`minimap click: centre y ${before.cy.toFixed(0)} -> ${after.cy.toFixed(0)}, scale ${after.k}, node at centre ${shown}`);

  await flowStatus('completed', 60000);
  await page.click('#fit');
  await page.waitForSelector('#graph.dense');
  const done = await waitPixels(page, '#graph canvas.density',
    (c) => (c.completed || 0) > 2000 && !c.active && !c.queued && !c.pending, 'the finished fan-out all green');
  const miniDone = await pixels(page, '#graph canvas.minimap');
  check((miniDone.completed || 0) > 50, `the minimap shows the status colours: ${JSON.stringify(miniDone)}`);
  log(`density view when done: ${JSON.stringify(done)}; minimap ${JSON.stringify(miniDone)}`);
  // The filter dims the density blocks too: nothing failed here, so no full-colour block is left.
  await page.selectOption('#graph-show', 'failed');
  await waitPixels(page, '#graph canvas.density', (c) => !c.completed && c.faint > 2000, 'show: failed dims the completed blocks');
  await page.selectOption('#graph-show', 'all');
  await waitPixels(page, '#graph canvas.density', (c) => (c.completed || 0) > 2000, 'show: all brings them back');
  // Collapse back from the frame's header.
  check((await page.textContent('#graph .shape-bar button')) === '▾ 998 × sleep · collapse', 'an expanded group can be collapsed at any zoom');
  await page.click('#graph .shape-bar button');
  await page.waitForFunction(() => document.querySelectorAll('g.node').length === 3);
  check((await page.textContent(`${group} text.counts`)) === '998 done · 0 running · 0 failed', 'collapsed again, with its final counts');
  check(await page.isHidden('#graph canvas.minimap'), 'no minimap once the graph fits at a readable scale');
  log('group expanded to 998 nodes on click, collapsed back from its button');

  // ---- failures and a running branch: filter, tracing, keyboard
  const shards = Array.from({ length: 13 }, (_, i) => ({ name: `shard-${i}`, handler: 'fail', parents: ['load'], data: { message: `shard ${i} broke` } }));
  const mixed = await rest(base, 'POST', '/flows', {
    name: 'mixed',
    nodes: [
      { name: 'load', handler: 'echo' },
      { name: 'clean', handler: 'echo', parents: ['load'] },
      { name: 'report', handler: 'echo', parents: ['clean'] },
      { name: 'audit', handler: 'echo', parents: ['load'] },
      { name: 'bad', handler: 'fail', parents: ['clean'], data: { message: 'nope' } },
      { name: 'after-bad', handler: 'echo', parents: ['bad'] },
      ...shards,
      { name: 'nap', handler: 'sleep', data: { ms: 60000 } },
      { name: 'wake', handler: 'echo', parents: ['nap'] },
    ],
  });
  check(mixed.status === 201, `create the mixed flow: ${JSON.stringify(mixed.body)}`);
  const mixedId = mixed.body.flowId;
  result.bigMixed = mixedId;
  await open(mixedId);
  const node = (n) => `g.node[data-name="${n}"]`;
  const shardGroup = 'g.node.shape[data-size="13"]';
  await page.waitForSelector(`${node('bad')}[data-status="failed"]`);
  await page.waitForSelector(`${node('nap')}[data-status="active"]`);
  await page.waitForSelector(`${node('report')}[data-status="completed"]`);
  await page.waitForFunction((g) => document.querySelector(`${g} text.counts`)?.textContent === '0 done · 0 running · 13 failed', shardGroup);
  check(await page.isHidden('#graph canvas.minimap'), 'no minimap for a flow that fits');

  const opacity = (sel) => page.$eval(sel, (e) => Number(getComputedStyle(e).opacity));
  await page.mouse.move(0, 0);
  await page.selectOption('#graph-show', 'failed');
  await page.waitForFunction(() => location.hash.endsWith('?show=failed'));
  const kept = async () => page.$$eval('g.node', (gs) => gs.filter((g) => Number(getComputedStyle(g).opacity) > 0.5)
    .map((g) => g.dataset.name || `group of ${g.dataset.size}`).sort());
  let visible = await kept();
  check(JSON.stringify(visible) === JSON.stringify(['bad', 'group of 13']), `"failed" keeps the failed node and the failed group: ${visible}`);
  check((await page.textContent(`${shardGroup} text.counts`)) === '0 done · 0 running · 13 failed', 'the group keeps its counts');
  await page.selectOption('#graph-show', 'running');
  visible = await kept();
  check(JSON.stringify(visible) === JSON.stringify(['nap']), `"running" keeps the running node: ${visible}`);
  // The filter is in the URL: a fresh page starts with it.
  await page.evaluate(() => { location.hash = '#/'; });
  await page.waitForSelector('#flows-table');
  await open(mixedId, '?show=failed');
  await page.waitForSelector(`${node('bad')}[data-status="failed"]`);
  check((await page.inputValue('#graph-show')) === 'failed', 'the filter comes back from the URL');
  visible = await kept();
  check(JSON.stringify(visible) === JSON.stringify(['bad', 'group of 13']), `the URL's filter applies: ${visible}`);
  await page.selectOption('#graph-show', 'all');
  await page.waitForFunction(() => !location.hash.includes('show='));
  check((await kept()).length === 9, 'all: every node (and the group) shown');
  log('filter: failed keeps the failed node and group, running the running node; kept in the URL');

  // Hover: the node's ancestors and descendants light up, the rest is dimmed.
  await page.hover(node('clean'));
  await page.waitForSelector('#graph.tracing g.node.hl-origin[data-name="clean"]');
  const lit = await page.$$eval('g.node.hl', (gs) => gs.map((g) => g.dataset.name || `group of ${g.dataset.size}`).sort());
  check(JSON.stringify(lit) === JSON.stringify(['after-bad', 'bad', 'clean', 'load', 'report']), `hover lights ancestors and descendants: ${lit}`);
  const litEdges = await page.$$eval('path.edge.hl', (es) => es.length);
  check(litEdges === 4, `and the 4 edges between them: ${litEdges}`);
  check((await opacity(node('audit'))) < 0.5 && (await opacity(node('report'))) === 1, 'the rest is dimmed');
  await page.mouse.move(2, 2);
  await page.waitForFunction(() => !document.querySelector('#graph').classList.contains('tracing'));
  check((await page.$$eval('g.node.hl', (gs) => gs.length)) === 0, 'leaving the node clears the highlight');
  log('hover highlights the paths through a node');

  // Keyboard: Tab reaches the graph, arrows follow the edges, Enter opens, Escape closes.
  await page.focus('#fit');
  let focused = null;
  for (let k = 0; k < 8 && !focused; k++) {
    await page.keyboard.press('Tab');
    focused = await page.evaluate(() => document.activeElement?.closest?.('g.node')?.dataset.name || null);
  }
  check(focused === 'load' || focused === 'nap', `Tab reaches a first node of the graph: ${focused}`);
  const active = () => page.evaluate(() => document.activeElement?.closest?.('g.node')?.dataset.name || document.activeElement?.dataset?.size || null);
  if (focused === 'nap') {
    await page.keyboard.press('ArrowUp');
    check((await active()) === 'load', `ArrowUp moves to the node above: ${await active()}`);
  }
  const ring = await page.$eval('g.node:focus rect.box', (r) => [getComputedStyle(r).stroke, getComputedStyle(r).strokeWidth]);
  const accent = await page.evaluate(() => {
    const p = document.createElement('canvas').getContext('2d');
    p.fillStyle = getComputedStyle(document.documentElement).getPropertyValue('--accent').trim();
    const h = parseInt(p.fillStyle.slice(1), 16);
    return `rgb(${h >> 16}, ${(h >> 8) & 255}, ${h & 255})`;
  });
  check(ring[0] === accent && parseFloat(ring[1]) >= 3, `a visible focus ring: ${ring} (accent ${accent})`);
  check(await page.isVisible('#graph.tracing g.node.hl-origin[data-name="load"]'), 'the focused node is traced');
  const walked = [];
  for (const key of ['ArrowRight', 'ArrowDown', 'ArrowDown', 'ArrowUp']) {
    await page.keyboard.press(key);
    walked.push(await active());
  }
  check(walked.every((n) => n !== null) && new Set(walked).size >= 2, `arrows move between nodes: ${walked}`);
  // Back to a child of load, then along to clean's child.
  await page.keyboard.press('ArrowLeft');
  check((await active()) === 'load', `ArrowLeft goes back to the parent: ${await active()}`);
  // To the top of load's children (Home), then down the column to clean.
  await page.keyboard.press('ArrowRight');
  await page.keyboard.press('Home');
  let target = await active();
  for (let k = 0; k < 6 && target !== 'clean'; k++) {
    await page.keyboard.press('ArrowDown');
    target = await active();
  }
  check(target === 'clean', `reached clean with the arrows: ${walked} then ${target}`);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#node-detail-name:text("clean")');
  check(await page.isVisible('#node-panel'), 'Enter opens the node panel');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#node-panel', { state: 'hidden' });
  check((await active()) === 'clean', 'the focus stays on the node after Escape');
  // Enter on a group expands it, and the focus goes to its first member.
  await page.keyboard.press('ArrowLeft');
  await page.keyboard.press('ArrowRight');
  await page.keyboard.press('Home');
  let onGroup = await active();
  for (let k = 0; k < 6 && onGroup !== '13'; k++) {
    await page.keyboard.press('ArrowDown');
    onGroup = await active();
  }
  check(onGroup === '13', `reached the group of 13 with the arrows: ${onGroup}`);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelectorAll('g.node[data-name^="shard-"]').length === 13);
  check((await active()) === 'shard-0', `the focus moved to the group's first member: ${await active()}`);
  await page.click('#graph .shape-bar button');
  await page.waitForSelector(shardGroup);
  log(`keyboard: Tab to load, arrows ${walked.join(' ')}, Enter opened clean, Escape closed it, Enter expanded a group`);
  await rest(base, 'POST', `/flows/${mixedId}/cancel`);

  // ---- mobile: the same flow, 400x800
  await page.setViewportSize({ width: 400, height: 800 });
  await open(fanId);
  await page.waitForSelector(group);
  await page.click(group);
  await page.waitForFunction(() => document.querySelectorAll('g.node').length === 1000);
  await page.click('#fit');
  await page.waitForSelector('#graph.dense');
  await waitPixels(page, '#graph canvas.density', (c) => (c.completed || 0) > 1000, 'green at Fit on a phone');
  const box = await page.$eval('#graph', (g) => g.getBoundingClientRect().toJSON());
  const mbox = await page.$eval('#graph canvas.minimap:not([hidden])', (c) => c.getBoundingClientRect().toJSON());
  check(box.width > 300 && box.height > 200, `the graph has room on a phone: ${JSON.stringify(box)}`);
  check(mbox.left >= box.left && mbox.right <= box.right && mbox.bottom <= box.bottom && mbox.width < box.width / 2,
    `the minimap sits inside the graph, small: ${JSON.stringify(mbox)}`);
  const show = await page.$eval('#graph-show', (s) => s.getBoundingClientRect().toJSON());
  check(show.right <= 400 && show.left >= 0, `the filter is on screen: ${JSON.stringify(show)}`);
  const cBefore = await viewCentre(page);
  await page.click('#graph canvas.minimap', { position: { x: mbox.width / 2, y: mbox.height * 0.25 } });
  await page.waitForFunction(() => !document.querySelector('#graph').classList.contains('dense'));
  const cAfter = await viewCentre(page);
  check(cAfter.cy < cBefore.cy, `the minimap moves the view on a phone too: ${cBefore.cy} -> ${cAfter.cy}`);
  log('400x800: density colours, minimap inside the graph, filter on screen');
  await page.setViewportSize({ width: 1600, height: 900 });
}

/** A 10,000-node flow keeps its frames short while its events stream in (density view). */
export async function tenThousandNodes(page, result, { base, rest, check, log }) {
  const open = (id, query) => openFlow(page, id, query);
  const flowStatus = (s, timeout) => flowStatusIs(page, s, timeout);
  await page.setViewportSize({ width: 1600, height: 900 });
  // ---- 10,000 nodes running: frame times while events stream in. The flow waits
  // for a signal until its page is drawn, so that the measure sees the run.
  // Its jobs take 10 ms (4 at a time): a steady stream of about a thousand events a second.
  const huge = await rest(base, 'POST', '/flows', fanOut('fan-out 10,000', 9998, 'sleep', { ms: 10 }, true));
  check(huge.status === 201, `create the 10,000-node flow: ${JSON.stringify(huge.body)}`);
  const hugeId = huge.body.flowId;
  result.bigTenThousand = hugeId;
  await open(hugeId);
  const hugeGroup = 'g.node.shape[data-size="9998"]';
  await page.waitForSelector(hugeGroup);
  await page.click(hugeGroup);
  await page.waitForFunction(() => document.querySelectorAll('g.node').length === 10000, null, { timeout: 60000 });
  await page.waitForSelector('#graph.dense');
  const go = await rest(base, 'POST', `/flows/${hugeId}/nodes/split/signal`, { go: true });
  check(go.status === 200, `signal the 10,000-node flow: ${JSON.stringify(go.body)}`);
  // Past the burst of 9,998 "queued" events: measure the steady run.
  await page.waitForFunction(() => Number(document.querySelector('.chip[data-status="completed"] .n').textContent) > 20, null, { timeout: 60000 });
  const seq0 = Number(await page.textContent('#flow-seq'));
  const frames = await page.evaluate(() => new Promise((resolve) => {
    const deltas = [];
    let last = performance.now();
    const end = last + 5000;
    const tick = (t) => {
      deltas.push(t - last);
      last = t;
      if (t < end && document.querySelector('#flow-status')?.textContent === 'running') requestAnimationFrame(tick);
      else resolve(deltas);
    };
    requestAnimationFrame(tick);
  }));
  const seq1 = Number(await page.textContent('#flow-seq'));
  frames.sort((a, b) => a - b);
  const p95 = frames[Math.floor(frames.length * 0.95)];
  const seconds = frames.reduce((a, b) => a + b, 0) / 1000;
  log(`10,000 nodes (density view): ${frames.length} frames over ${seconds.toFixed(1)} s while ${seq1 - seq0} events arrived (${((seq1 - seq0) / seconds).toFixed(0)}/s); frame time p95 ${p95.toFixed(1)} ms, max ${frames.at(-1).toFixed(1)} ms`);
  check(seq1 - seq0 > 1000, `events streamed in while measuring: ${seq1 - seq0}`);
  check(seconds > 2, `measured for long enough: ${seconds} s`);
  check(p95 <= 50, `frame time p95 ${p95.toFixed(1)} ms is over 50 ms`);
  // At Fit, mid-run: done and still-queued regions in their colours.
  const colours = await waitPixels(page, '#graph canvas.density', (c) => (c.completed || 0) > 1000 && (c.queued || 0) + (c.active || 0) > 1000,
    'the running 10,000 nodes show done and queued regions');
  const cover = await columnCover(page);
  check(cover > 0.85, `at Fit all 10,000 nodes are in view: ${(cover * 100).toFixed(0)}% of the height painted`);
  log(`10,000 nodes at Fit mid-run: ${JSON.stringify(colours)}, ${(cover * 100).toFixed(0)}% of the height`);
  const cancelled = await rest(base, 'POST', `/flows/${hugeId}/cancel`);
  check(cancelled.status === 200, `cancel the 10,000-node flow: ${JSON.stringify(cancelled.body)}`);
  await flowStatus('cancelled', 60000);
}

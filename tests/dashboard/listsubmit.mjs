// The flows list and the submit editor in the browser (called by e2e.mjs with its
// helpers). Flows in every state are made over REST under a name prefix of their
// own, so that a search for the prefix shows exactly them whatever else the run
// made. The list: search, status and date filters (a bad range says so), sort by
// duration both ways, counts per status equal to the API's, split progress bars
// for failed and cancelled flows, the state kept in the URL across a reload and
// back/forward, bulk cancel and delete with a confirm (checked over the API), and
// no horizontal overflow at 400 px. The submit editor: a misspelt parent
// suggests the right one on the right line, three type problems are three
// problems, the preview follows the text, and a valid spec opens its flow page.

const WAIT = 20000;

export async function listSubmitScenario(page, result, { base, rest, check, log }) {
  await page.setViewportSize({ width: 1600, height: 900 });
  const P = `lsx${Math.floor(Math.random() * 1e6)}`;
  const make = async (suffix, nodes) => {
    const res = await rest(base, 'POST', '/flows', { name: `${P}-${suffix}`, nodes });
    check(res.status === 201, `create ${suffix}: ${JSON.stringify(res.body)}`);
    return res.body.flowId;
  };
  const statusOf = async (id) => (await rest(base, 'GET', `/flows/${id}`)).body?.status;
  const waitStatus = async (id, want) => {
    const deadline = Date.now() + WAIT;
    for (;;) {
      const s = await statusOf(id);
      if (s === want) return;
      check(Date.now() < deadline, `flow ${id} reaches ${want} (is ${s})`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const ids = {
    fast: await make('done-fast', [{ name: 'x', handler: 'noop' }]),
    slow: await make('done-slow', [{ name: 'x', handler: 'sleep', data: { ms: 1500 } }]),
    broken: await make('broken', [
      { name: 'a', handler: 'noop' },
      { name: 'b', handler: 'fail', parents: ['a'], data: { message: 'no' } },
      { name: 'c', handler: 'echo', parents: ['b'] },
    ]),
    stopped: await make('stopped', [{ name: 'nap', handler: 'sleep', data: { ms: 60000 } }]),
    run1: await make('run-1', [{ name: 'nap', handler: 'sleep', data: { ms: 60000 } }]),
    run2: await make('run-2', [{ name: 'nap', handler: 'sleep', data: { ms: 60000 } }]),
  };
  result.listSubmit = ids;
  await waitStatus(ids.fast, 'completed');
  await waitStatus(ids.slow, 'completed');
  await waitStatus(ids.broken, 'failed');
  check((await rest(base, 'POST', `/flows/${ids.stopped}/cancel`)).status < 300, 'cancel over REST');
  await waitStatus(ids.stopped, 'cancelled');
  const mine = new Set(Object.values(ids));

  const rowIds = () => page.$$eval('#flow-rows tr', (trs) => trs.map((tr) => tr.dataset.id));
  const waitRows = async (want, what) => {
    await page.waitForFunction((w) => {
      const got = [...document.querySelectorAll('#flow-rows tr')].map((tr) => tr.dataset.id).sort();
      return JSON.stringify(got) === JSON.stringify([...w].sort());
    }, want, { timeout: WAIT }).catch(async () => {
      throw new Error(`check failed: ${what}: rows ${JSON.stringify(await rowIds())}, wanted ${JSON.stringify(want)}`);
    });
  };
  const hashParams = async () => new URLSearchParams((await page.evaluate(() => location.hash)).replace(/^#\/\??/, ''));

  // Search by name narrows the list, and the URL holds it.
  await page.click('nav a[data-nav="flows"]');
  await page.waitForSelector('#flow-search');
  await page.fill('#flow-search', P);
  await waitRows([...mine], 'a search for the prefix shows exactly its flows');
  check((await hashParams()).get('q') === P, 'the search is in the URL');
  await page.fill('#flow-search', `${P}-DONE`);
  await waitRows([ids.fast, ids.slow], 'a longer search (any case) narrows the list');
  await page.fill('#flow-search', P);
  await waitRows([...mine], 'back to the prefix');
  log('list: the name search narrows the rows and sits in the URL');

  // Counts per status equal the API's for the same search.
  const apiCounts = (await rest(base, 'GET', `/flows/counts?q=${P}`)).body;
  check(JSON.stringify(apiCounts) === JSON.stringify({ running: 2, completed: 2, failed: 1, cancelled: 1 }), `API counts: ${JSON.stringify(apiCounts)}`);
  await page.waitForFunction((c) => Object.entries(c).every(([s, n]) =>
    document.querySelector(`#flow-counts .count-chip[data-status="${s}"] .n`)?.textContent === String(n))
    && document.querySelector('#flow-counts .count-chip[data-status=""] .n')?.textContent === '6', apiCounts);
  log('list: counts per status match GET /flows/counts');

  // Status filter (from a count chip and from the select).
  await page.click('#flow-counts .count-chip[data-status="failed"]');
  await waitRows([ids.broken], 'the failed chip shows the failed flow');
  check((await hashParams()).get('status') === 'failed', 'the status is in the URL');
  await page.selectOption('#status-filter', 'running');
  await waitRows([ids.run1, ids.run2], 'the running filter');
  await page.selectOption('#status-filter', '');
  await waitRows([...mine], 'every status again');

  // Progress bars: the failed flow is split (1 completed, 1 failed, 1 skipped of 3), never a full green bar; the cancelled one grey.
  const bar = (id) => page.waitForSelector(`tr[data-id="${id}"] .pbar[data-exact="true"]`, { timeout: WAIT })
    .then(() => page.$eval(`tr[data-id="${id}"] .pbar`, (b) => {
      const w = (k) => b.querySelector(`.seg.${k}`).getBoundingClientRect().width;
      return { total: b.getBoundingClientRect().width, ok: w('ok'), fail: w('fail'), cancel: w('cancel'), skip: w('skip'), run: w('run') };
    }));
  const broken = await bar(ids.broken);
  const third = broken.total / 3;
  check(Math.abs(broken.ok - third) < 2 && Math.abs(broken.fail - third) < 2 && Math.abs(broken.skip - third) < 2,
    `the failed flow's bar is a third green, a third red, a third skipped: ${JSON.stringify(broken)}`);
  const stopped = await bar(ids.stopped);
  check(stopped.ok === 0 && stopped.fail === 0 && Math.abs(stopped.cancel - stopped.total) < 1,
    `the cancelled flow's bar is grey, not green: ${JSON.stringify(stopped)}`);
  const fast = await page.$eval(`tr[data-id="${ids.fast}"] .pbar`, (b) => [b.querySelector('.seg.ok').getBoundingClientRect().width, b.getBoundingClientRect().width]);
  check(Math.abs(fast[0] - fast[1]) < 1, `a completed flow's bar is full green: ${fast}`);
  const colours = await page.$eval(`tr[data-id="${ids.broken}"] .pbar`, (b) => ['ok', 'fail'].map((k) => getComputedStyle(b.querySelector(`.seg.${k}`)).backgroundColor));
  check(colours[0] !== colours[1], `failed and completed shares differ in colour: ${colours}`);
  log('list: failed and cancelled flows have split progress bars');

  // Sort by duration, both ways: the rows follow the API's durations.
  const durations = async () => {
    const flows = (await rest(base, 'GET', `/flows?q=${P}`)).body.flows;
    const now = Date.now();
    return new Map(flows.map((f) => [f.id, (f.finishedAt || now) - f.createdAt]));
  };
  await page.click('button.sort[data-sort="duration"]');
  await page.waitForFunction(() => location.hash.includes('sort=duration'));
  await page.waitForSelector('th[data-sort="duration"][aria-sort="descending"]');
  let d = await durations();
  let order = (await rowIds()).map((id) => d.get(id));
  check(order.length === 6 && order.every((v, i) => i === 0 || order[i - 1] >= v), `longest first: ${order}`);
  await page.click('button.sort[data-sort="duration"]');
  await page.waitForSelector('th[data-sort="duration"][aria-sort="ascending"]');
  d = await durations();
  order = (await rowIds()).map((id) => d.get(id));
  check(order.every((v, i) => i === 0 || order[i - 1] <= v), `shortest first: ${order}`);
  check((await hashParams()).get('dir') === 'asc', 'the direction is in the URL');
  log('list: sort by duration orders the rows both ways');

  // Reload keeps the URL's state; back and forward restore the earlier ones.
  await page.reload();
  await page.waitForSelector('#flow-search');
  await waitRows([...mine], 'the reloaded list shows the same flows');
  check((await page.inputValue('#flow-search')) === P, 'the reloaded search box holds the search');
  check((await page.inputValue('#sort-select')) === 'duration:asc', 'the reloaded sort');
  await page.waitForSelector('th[data-sort="duration"][aria-sort="ascending"]');
  await page.goBack();
  await page.waitForSelector('th[data-sort="duration"][aria-sort="descending"]');
  await page.goBack();
  await page.waitForSelector('th[data-sort="created"][aria-sort="descending"]');
  check((await page.inputValue('#sort-select')) === 'created:desc', 'back restores the default sort');
  await page.goForward();
  await page.waitForSelector('th[data-sort="duration"][aria-sort="descending"]');
  log('list: reload, back and forward restore the view');

  // Date filter: a range after today shows nothing; one that starts after it ends says so.
  const [today, tomorrow] = await page.evaluate(() => {
    const iso = (t) => `${t.getFullYear()}-${String(t.getMonth() + 1).padStart(2, '0')}-${String(t.getDate()).padStart(2, '0')}`;
    const t = new Date();
    const n = new Date(t.getFullYear(), t.getMonth(), t.getDate() + 1);
    return [iso(t), iso(n)];
  });
  await page.fill('#date-from', tomorrow);
  await page.waitForFunction((day) => location.hash.includes(`from=${day}`), tomorrow);
  await waitRows([], 'a range after today shows no flow');
  await page.waitForSelector('#flows-empty:not([hidden])');
  await page.waitForFunction(() => document.querySelector('#flow-counts .count-chip[data-status=""] .n')?.textContent === '0');
  await page.fill('#date-to', today);
  await page.waitForFunction(() => /start date is after the end date/.test(document.querySelector('#flows-empty').textContent));
  check(await page.isVisible('#list-problem'), 'a range that ends before it starts is named');
  await page.fill('#date-from', today);
  await waitRows([...mine], 'today shows them again');
  await page.click('#clear-search');
  await page.waitForFunction(() => !location.hash.includes('from=') && !location.hash.includes('q='));
  log('list: the date filter narrows by creation day and names a bad range');

  // Bulk cancel: select both running flows, confirm, then they are cancelled on the server.
  await page.evaluate((p) => { location.hash = `#/?q=${p}&status=running`; }, P);
  await waitRows([ids.run1, ids.run2], 'the running flows');
  check(await page.isDisabled('#bulk-cancel'), 'nothing selected: bulk cancel is disabled');
  await page.click('th.sel label.tap');
  await page.waitForFunction(() => document.querySelector('#selection-count').textContent === '2 selected');
  await page.click('#bulk-cancel');
  await page.waitForSelector('#bulk-dialog[open]');
  check((await page.textContent('#bulk-title')) === 'Cancel 2 flows?', `the confirm names how many: ${await page.textContent('#bulk-title')}`);
  await page.click('#bulk-confirm');
  await page.waitForFunction(() => document.querySelector('#toast')?.textContent === 'Cancelled 2 flows.');
  await waitStatus(ids.run1, 'cancelled');
  await waitStatus(ids.run2, 'cancelled');
  await waitRows([], 'cancelled flows leave the running list');
  log('list: bulk cancel with a confirm cancelled both flows on the server');

  // Bulk delete: two of the three cancelled flows, one by one.
  await page.selectOption('#status-filter', 'cancelled');
  await waitRows([ids.stopped, ids.run1, ids.run2], 'the cancelled flows');
  await page.click(`tr[data-id="${ids.run1}"] label.tap`);
  await page.click(`tr[data-id="${ids.run2}"] label.tap`);
  await page.click('#bulk-delete');
  await page.waitForSelector('#bulk-dialog[open]');
  check((await page.textContent('#bulk-title')) === 'Delete 2 flows?', 'the delete confirm names how many');
  const listed = await page.$$eval('#bulk-dialog .bulk-names li', (lis) => lis.map((li) => li.textContent).sort());
  check(JSON.stringify(listed) === JSON.stringify([`${P}-run-1`, `${P}-run-2`]), `the confirm lists them: ${listed}`);
  await page.click('#bulk-confirm');
  await page.waitForFunction(() => document.querySelector('#toast')?.textContent === 'Deleted 2 flows.');
  for (const id of [ids.run1, ids.run2]) {
    const gone = await rest(base, 'GET', `/flows/${id}`);
    check(gone.status === 404, `deleted flow ${id} is gone: ${gone.status}`);
  }
  await waitRows([ids.stopped], 'the deleted rows left the list');
  // A failure is reported, not hidden: cancelling a finished flow.
  await page.click(`tr[data-id="${ids.stopped}"] label.tap`);
  await page.click('#bulk-cancel');
  await page.click('#bulk-confirm');
  await page.waitForFunction(() => /^Cancelled 0 of 1 flow\. Failed: /.test(document.querySelector('#toast')?.textContent || ''));
  check((await page.textContent('#toast')).includes(`${P}-stopped`), 'the failure names the flow');
  log('list: bulk delete removed both flows; a failed cancel is reported');

  // 400 px: nothing wider than the viewport, names readable, tap targets of 40 px.
  await page.evaluate((p) => { location.hash = `#/?q=${p}`; }, P);
  await page.setViewportSize({ width: 400, height: 800 });
  await waitRows([ids.fast, ids.slow, ids.broken, ids.stopped], 'the list at 400 px');
  const narrow = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth,
    name: document.querySelector('#flow-rows td.name').getBoundingClientRect().width,
    taps: [...document.querySelectorAll('#flow-rows label.tap, th.sel label.tap')].map((l) => {
      const r = l.getBoundingClientRect();
      return Math.min(r.width, r.height);
    }),
    buttons: [...document.querySelectorAll('.list-toolbar button, .list-toolbar select, .list-toolbar input, #bulk-cancel, #bulk-delete')]
      .map((b) => b.getBoundingClientRect().height),
  }));
  check(narrow.scroll <= narrow.inner, `no horizontal overflow at 400 px: ${narrow.scroll} > ${narrow.inner}`);
  check(narrow.name > 150, `a name cell is wide enough to read: ${narrow.name}`);
  check(narrow.taps.length === 5 && narrow.taps.every((t) => t >= 40), `checkbox tap targets are 40 px: ${narrow.taps}`);
  check(narrow.buttons.every((hgt) => hgt >= 40), `controls are 40 px tall: ${narrow.buttons}`);
  await page.evaluate(() => { location.hash = '#/submit'; });
  await page.waitForSelector('#spec-input');
  const submitNarrow = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check(submitNarrow[0] <= submitNarrow[1], `the submit page fits 400 px: ${submitNarrow}`);
  await page.setViewportSize({ width: 1600, height: 900 });
  log('list: at 400 px the rows are cards, nothing overflows, tap targets are 40 px');

  // Submit: an unknown parent suggests the near name, on its line.
  const typo = JSON.stringify({
    name: `${P}-typo`,
    nodes: [
      { name: 'extract', handler: 'noop' },
      { name: 'report', handler: 'echo', parents: ['extract'] },
      { name: 'mail', handler: 'echo', parents: ['reprot'] },
    ],
  }, null, 2);
  const typoLine = typo.split('\n').findIndex((l) => l.includes('"reprot"')) + 1;
  await page.fill('#spec-input', typo);
  await page.waitForSelector('#spec-check li.check-problem[data-code="unknown_parent"]');
  const problem = await page.$eval('#spec-check li.check-problem[data-code="unknown_parent"]', (li) => ({ text: li.textContent, line: li.dataset.line }));
  check(problem.text.includes('did you mean “report”?'), `the unknown parent suggests report: ${problem.text}`);
  check(problem.line === String(typoLine) && problem.text.includes(`line ${typoLine}`), `the problem is on line ${typoLine}: ${JSON.stringify(problem)}`);
  const marked = await page.$$eval('#spec-gutter .ln.bad', (ds) => ds.map((x) => x.dataset.line));
  check(JSON.stringify(marked) === JSON.stringify([String(typoLine)]), `the gutter marks line ${typoLine}: ${marked}`);
  check((await page.$$('#spec-check li.check-problem')).length === 1, 'one problem');
  log(`submit: “reprot” suggests “report” on line ${typoLine}`);

  // Three type problems are three problems, each on its own line.
  const typed = JSON.stringify({
    nodes: [
      { name: 'a', handler: 'noop', opts: { attempts: 'three' } },
      { name: 'b', handler: 'noop', parents: 'a' },
      { name: 'c', handler: 'noop', continueOnFailure: 'yes' },
    ],
  }, null, 2);
  await page.fill('#spec-input', typed);
  await page.waitForFunction(() => document.querySelectorAll('#spec-check li.check-problem[data-code="wrong_type"]').length === 3);
  const typeProblems = await page.$$eval('#spec-check li.check-problem', (lis) => lis.map((li) => ({ line: li.dataset.line, text: li.textContent })));
  check(typeProblems.length === 3, `exactly three problems: ${JSON.stringify(typeProblems)}`);
  const lines = typed.split('\n');
  const want = ['"attempts": "three"', '"parents": "a"', '"continueOnFailure": "yes"'].map((s) => String(lines.findIndex((l) => l.includes(s)) + 1));
  check(JSON.stringify(typeProblems.map((p) => p.line)) === JSON.stringify(want), `each on its line: ${JSON.stringify(typeProblems)} vs ${want}`);
  check((await page.$$('#spec-gutter .ln.bad')).length === 3, 'three lines marked in the gutter');
  // Clicking a problem selects its line in the editor.
  await page.click('#spec-check li.check-problem:nth-child(2) .line-link');
  const selected = await page.$eval('#spec-input', (t) => t.value.slice(t.selectionStart, t.selectionEnd));
  check(selected.includes('"parents": "a"'), `the problem's line is selected: ${selected}`);
  // Syntax errors: where.
  await page.fill('#spec-input', '{\n  "nodes": [\n    {"name": "a",}\n  ]\n}');
  await page.waitForFunction(() => document.querySelector('#spec-check-title').textContent === 'Not valid JSON');
  check((await page.textContent('#spec-check')).includes('line 3, column'), 'the syntax error says where');
  check((await page.$$eval('#spec-gutter .ln.bad', (ds) => ds.map((x) => x.dataset.line))).join() === '3', 'the gutter marks line 3');
  log('submit: three type problems listed on their lines; a syntax error marked');

  // The preview follows the text; a valid spec opens its flow page.
  const valid = {
    name: `${P}-valid`,
    nodes: [
      { name: 'extract', handler: 'noop' },
      { name: 'clean', handler: 'noop', parents: ['extract'] },
      { name: 'enrich', handler: 'noop', parents: ['extract'] },
      { name: 'report', handler: 'noop', parents: ['clean', 'enrich'] },
    ],
  };
  await page.fill('#spec-input', JSON.stringify(valid, null, 2));
  await page.waitForFunction(() => document.querySelectorAll('#spec-preview g.pnode').length === 4
    && document.querySelectorAll('#spec-preview path.edge').length === 4);
  check((await page.textContent('#spec-check-title')) === 'No problems found', 'a valid spec has no problems');
  valid.nodes.push({ name: 'mail', handler: 'noop', parents: ['report'] });
  await page.fill('#spec-input', JSON.stringify(valid, null, 2));
  await page.waitForFunction(() => document.querySelectorAll('#spec-preview g.pnode').length === 5);
  const previewNames = await page.$$eval('#spec-preview g.pnode', (gs) => gs.map((g) => g.dataset.name).sort());
  check(previewNames.join() === 'clean,enrich,extract,mail,report', `the preview draws the nodes: ${previewNames}`);
  await page.click('#submit-flow');
  await page.waitForFunction(() => /^#\/flows\/[^/]+$/.test(location.hash));
  await page.waitForFunction(() => document.querySelectorAll('g.node').length === 5);
  const flowId = decodeURIComponent((await page.evaluate(() => location.hash)).replace('#/flows/', ''));
  check((await rest(base, 'GET', `/flows/${flowId}`)).body.name === `${P}-valid`, 'the submitted flow exists');
  result.listSubmit.submitted = flowId;
  log('submit: the preview follows the text; a valid spec opened its flow page');
  await page.setViewportSize({ width: 1400, height: 860 });
}

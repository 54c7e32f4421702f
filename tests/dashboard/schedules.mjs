// The Schedules page in the browser (called by e2e.mjs with its helpers): a
// schedule created over REST appears with its next fire time, its runs appear
// as they fire (each linking to its flow), and pause/resume from the page reach
// the server and stop and restart the firing.

const WAIT = 20000;

export async function schedulesScenario(page, result, { base, rest, check, log }) {
  const NAME = 'e2e-every-second';
  const created = await rest(base, 'POST', '/schedules', {
    name: NAME, cron: '* * * * * *', timezone: 'Europe/Berlin', overlap: 'allow',
    flow: { name: 'scheduled', nodes: [{ name: 'tick', handler: 'noop' }] },
  });
  check(created.status === 201, `create schedule: ${JSON.stringify(created.body)}`);
  result.schedule = NAME;

  await page.click('nav a[data-nav="schedules"]');
  await page.waitForFunction(() => location.hash === '#/schedules');
  const card = `section.schedule[data-schedule="${NAME}"]`;
  await page.waitForSelector(card);
  check(await page.$eval('nav a[data-nav="schedules"]', (a) => a.classList.contains('current')), 'the nav marks Schedules');
  const next = await page.textContent(`${card} .next-fire`);
  // The schedule fires every second: the time shown may have passed by a few
  // milliseconds when it is read ("(11 ms ago)"), which is no fault of the page.
  check(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \((in |\d{1,3} ms ago)/.test(next), `next fire time shown: ${next}`);
  check((await page.textContent(`${card} .cron`)) === '* * * * * *', 'the cron expression is shown');

  // Runs appear without a reload, each with its flow's link and status.
  await page.waitForFunction((sel) => document.querySelectorAll(`${sel} table.runs tbody tr`).length >= 2, card, { timeout: WAIT });
  await page.waitForSelector(`${card} table.runs tbody tr .badge[data-status="completed"]`, { timeout: WAIT });
  const href = await page.getAttribute(`${card} table.runs tbody tr a.run-flow`, 'href');
  const flowId = decodeURIComponent(href.replace('#/flows/', ''));
  const flow = await rest(base, 'GET', `/flows/${flowId}`);
  check(flow.status === 200 && flow.body.name === 'scheduled', `a run links to its flow: ${JSON.stringify(flow.body)}`);
  await page.click(`${card} table.runs tbody tr a.run-flow`);
  await page.waitForFunction((id) => location.hash === `#/flows/${id}`, flowId);
  await page.waitForSelector('g.node[data-name="tick"]');
  log('a schedule shows its next fire time and its runs, which link to their flows');

  // Pause from the page: the server stops firing it.
  await page.click('nav a[data-nav="schedules"]');
  await page.waitForSelector(`${card} button[data-action="pause"]`);
  await page.click(`${card} button[data-action="pause"]`);
  await page.waitForSelector(`${card}[data-paused="true"]`, { timeout: WAIT });
  check((await page.textContent(`${card} .next-fire`)) === 'paused', 'a paused schedule says so');
  const paused = await rest(base, 'GET', `/schedules/${NAME}`);
  check(paused.body.paused === true && paused.body.nextFireAt === undefined, `paused on the server: ${JSON.stringify(paused.body)}`);
  const before = (await rest(base, 'GET', `/schedules/${NAME}/runs`)).body.runs.length;
  await new Promise((r) => setTimeout(r, 2500));
  const during = (await rest(base, 'GET', `/schedules/${NAME}/runs`)).body.runs.length;
  check(during === before, `no run while paused: ${before} then ${during}`);

  // Resume from the page: it fires again.
  await page.click(`${card} button[data-action="resume"]`);
  await page.waitForSelector(`${card}[data-paused="false"]`, { timeout: WAIT });
  const deadline = Date.now() + WAIT;
  for (;;) {
    const runs = (await rest(base, 'GET', `/schedules/${NAME}/runs`)).body.runs.length;
    if (runs > during) break;
    check(Date.now() < deadline, 'runs again after resume');
    await new Promise((r) => setTimeout(r, 100));
  }
  // Leave it paused (from the page again), so the rest of the run is quiet.
  await page.click(`${card} button[data-action="pause"]`);
  await page.waitForSelector(`${card}[data-paused="true"]`, { timeout: WAIT });
  log('pause and resume from the Schedules page stop and restart the firing');
}

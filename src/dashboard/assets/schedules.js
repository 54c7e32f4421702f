/*
 * dagflow dashboard: the Schedules page (#/schedules).
 *
 * Every schedule with its cron, zone, policies and next fire time, its last runs
 * (each linking to its flow, with the flow's status), and a pause/resume button.
 * Built on the REST API only (`GET /schedules`, `GET /schedules/{name}/runs`,
 * `PATCH /schedules/{name}`), asked again every few seconds while the page is
 * open: schedules have no events. Loaded before app.js, which calls the page
 * through `window.dagflowPages.schedules(root, helpers)` with its own helpers
 * (`api`, `el`, `fill`, `toast`, ...), so that this file shares them instead of
 * copying them.
 */
(function () {
  'use strict';

  // How often the page asks again.
  const EVERY_MS = 2000;
  // Runs shown per schedule.
  const RUNS_SHOWN = 10;

  window.dagflowPages = window.dagflowPages || {};

  /** Renders the page into `root`; returns its teardown. */
  window.dagflowPages.schedules = function schedulesView(root, h) {
    const { api, el, fill, toast, fmtTime, fmtIn, errorMessage } = h;
    let alive = true;
    let timer = null;
    const list = el('div', { id: 'schedules', class: 'schedules' }, el('p', { class: 'muted loading', text: 'Loading…' }));
    const updated = el('span', { id: 'schedules-updated', class: 'muted small' });
    root.append(
      el('div', { class: 'toolbar' }, el('h1', { text: 'Schedules' }), el('span', { class: 'spacer' }), updated),
      list);
    document.title = 'schedules · dagflow';

    async function toggle(s, button) {
      button.disabled = true;
      const res = await api('PATCH', `/schedules/${encodeURIComponent(s.name)}`, JSON.stringify({ paused: !s.paused }));
      if (res.ok) toast(`${s.name} ${res.body.paused ? 'paused' : 'resumed'}`);
      else {
        toast(`Could not ${s.paused ? 'resume' : 'pause'} ${s.name}: ${errorMessage(res)}`, true);
        button.disabled = false;
      }
      if (alive) {
        clearTimeout(timer);
        load();
      }
    }

    function runRow(r) {
      const outcome = { started: 'started', skippedOverlap: 'skipped (still running)', cancelledPrevious: 'cancelled previous, started', failed: 'failed to start' }[r.outcome] || r.outcome;
      return el('tr', { 'data-tick': r.tickAt, 'data-outcome': r.outcome },
        el('td', { title: new Date(r.tickAt).toISOString(), text: fmtTime(r.tickAt) }),
        el('td', { text: outcome }),
        el('td', {}, r.flowId
          ? el('a', { class: 'run-flow', href: `#/flows/${encodeURIComponent(r.flowId)}`, text: r.flowId.slice(0, 13) + '…' })
          : el('span', { class: 'muted', text: r.error || '—' })),
        el('td', {}, r.flowStatus ? el('span', { class: 'badge', 'data-status': r.flowStatus, text: r.flowStatus }) : '—'));
    }

    function card(s, runs) {
      const button = el('button', { class: s.paused ? 'primary' : '', 'data-action': s.paused ? 'resume' : 'pause', text: s.paused ? 'Resume' : 'Pause' });
      button.addEventListener('click', () => toggle(s, button));
      const next = s.paused ? 'paused' : s.nextFireAt ? `${fmtTime(s.nextFireAt)} (${fmtIn(s.nextFireAt)})` : 'never';
      return el('section', { class: 'card schedule', 'data-schedule': s.name, 'data-paused': String(s.paused) },
        el('header', {},
          el('h2', { text: s.name }),
          el('code', { class: 'cron', text: s.cron }),
          el('span', { class: 'muted small', text: s.timezone }),
          el('span', { class: 'spacer' }),
          button),
        el('p', { class: 'small' },
          'Next: ', el('b', { class: 'next-fire', text: next }),
          ` · overlap ${s.overlap} · catch-up ${s.catchUp} · flow “${s.flow.name || s.flow.nodes.map((n) => n.name).join(', ')}”`),
        runs === null
          ? el('p', { class: 'muted small', text: 'Runs could not be read.' })
          : runs.length
            ? el('table', { class: 'runs' },
              el('thead', {}, el('tr', {}, ['tick', 'outcome', 'flow', 'status'].map((t) => el('th', { text: t })))),
              el('tbody', {}, runs.slice(0, RUNS_SHOWN).map(runRow)))
            : el('p', { class: 'muted small no-runs', text: 'No runs yet.' }));
    }

    async function load() {
      timer = null;
      const res = await api('GET', '/schedules');
      if (!alive) return;
      if (res.ok) {
        const schedules = res.body.schedules;
        const runs = await Promise.all(schedules.map(async (s) => {
          const r = await api('GET', `/schedules/${encodeURIComponent(s.name)}/runs?limit=${RUNS_SHOWN}`);
          return r.ok ? r.body.runs : null;
        }));
        if (!alive) return;
        fill(list, schedules.length ? schedules.map((s, i) => card(s, runs[i]))
          : el('p', { id: 'schedules-empty', class: 'empty muted', text: 'No schedules yet: create one with POST /schedules or `dagflow schedule create`.' }));
        updated.textContent = `updated ${h.fmtClock(Date.now())}`;
      } else {
        fill(list, el('p', { id: 'schedules-error', class: 'empty muted', text: `Asking for the schedules failed: ${errorMessage(res)}` }));
      }
      timer = setTimeout(load, EVERY_MS);
    }

    load();
    return () => {
      alive = false;
      clearTimeout(timer);
      document.title = 'dagflow';
    };
  };
})();

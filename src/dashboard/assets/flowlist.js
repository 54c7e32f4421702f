/*
 * dagflow dashboard: the flows list (#/).
 *
 * Search by name, filter by status and creation date, sort, counts per status,
 * and bulk cancel/delete of the selected rows. The view's state lives in the URL
 * (`#/?q=etl&status=failed&from=2026-12-01&to=2026-12-08&sort=duration&dir=asc`),
 * so reload and back/forward restore it: every change sets the hash, and the
 * router hands a hash of the same page to `update` instead of building the page
 * again (the search box keeps its focus).
 *
 * The server does the searching (`GET /flows?q&createdAfter&createdBefore&status`,
 * paged by cursor, newest first) and the counting (`GET /flows/counts`, one pass
 * over the flow records); sorting by duration or status orders the page shown,
 * since the store keeps flows in creation order only (ARCHITECTURE.md, Dashboard).
 *
 * A failed or cancelled row's progress bar is split by node outcome (completed,
 * failed, cancelled, skipped); a listing carries only a done count, so those rows
 * ask for their flow (`GET /flows/{id}`) once per change, a few at a time.
 *
 * Loaded before app.js, which calls it through `window.dagflowPages.flows(root,
 * params, helpers)` with its own helpers.
 */
(function () {
  'use strict';

  const FLOW_STATUSES = ['running', 'completed', 'failed', 'cancelled'];
  const PAGE_SIZE = 25;
  const SORTS = ['created', 'duration', 'status'];
  // The order `sort=status` puts rows in (descending puts running first).
  const STATUS_RANK = { running: 3, failed: 2, cancelled: 1, completed: 0 };
  // Typing in the search box sets the URL this long after the last key.
  const SEARCH_DEBOUNCE_MS = 300;
  // Counts are one pass over every flow on the server: asked at most this often.
  const COUNTS_EVERY_MS = 2000;
  // Flow views asked at once for the progress bars of finished rows.
  const BAR_FETCHES = 3;
  const DATE = /^\d{4}-\d{2}-\d{2}$/;
  // A map element's name: `{map}[{index}]`; the bars count the DAG's nodes only.
  const ELEMENT = /^(.*)\[(\d+)\]$/;

  window.dagflowPages = window.dagflowPages || {};

  /** A local date (`YYYY-MM-DD`) as ms at its midnight, or null when it is not one. */
  function dayStart(text) {
    if (!DATE.test(text)) return null;
    const [y, m, d] = text.split('-').map(Number);
    const t = new Date(y, m - 1, d);
    return t.getFullYear() === y && t.getMonth() === m - 1 && t.getDate() === d ? t.getTime() : null;
  }

  /** The view's state from the hash's query, with what was wrong in it. */
  function readState(params) {
    const problems = [];
    const state = {
      q: (params.get('q') || '').trim(),
      status: params.get('status') || '',
      from: params.get('from') || '',
      to: params.get('to') || '',
      sort: params.get('sort') || 'created',
      dir: params.get('dir') === 'asc' ? 'asc' : 'desc',
      limit: Math.min(1000, Math.max(1, parseInt(params.get('limit'), 10) || PAGE_SIZE)),
    };
    if (state.status && !FLOW_STATUSES.includes(state.status)) {
      problems.push(`The status “${state.status}” is not one of ${FLOW_STATUSES.join(', ')}: ignored.`);
      state.status = '';
    }
    if (!SORTS.includes(state.sort)) {
      problems.push(`The sort “${state.sort}” is not one of ${SORTS.join(', ')}: ignored.`);
      state.sort = 'created';
    }
    for (const key of ['from', 'to']) {
      if (state[key] && dayStart(state[key]) === null) {
        problems.push(`The ${key} date “${state[key]}” is not a date (YYYY-MM-DD): ignored.`);
        state[key] = '';
      }
    }
    if (state.from && state.to && state.from > state.to) {
      problems.push(`The date range starts (${state.from}) after it ends (${state.to}).`);
    }
    return { state, problems };
  }

  function hashOf(state) {
    const q = new URLSearchParams();
    if (state.q) q.set('q', state.q);
    if (state.status) q.set('status', state.status);
    if (state.from) q.set('from', state.from);
    if (state.to) q.set('to', state.to);
    if (state.sort !== 'created') q.set('sort', state.sort);
    if (state.dir !== 'desc') q.set('dir', state.dir);
    if (state.limit !== PAGE_SIZE) q.set('limit', String(state.limit));
    const qs = q.toString();
    return `#/${qs ? `?${qs}` : ''}`;
  }

  /** The search part of a `GET /flows` or `GET /flows/counts` query. */
  function searchQuery(state) {
    const q = new URLSearchParams();
    if (state.q) q.set('q', state.q);
    if (state.from) q.set('createdAfter', String(dayStart(state.from)));
    if (state.to) {
      const end = new Date(dayStart(state.to));
      end.setDate(end.getDate() + 1);
      q.set('createdBefore', String(end.getTime()));
    }
    return q;
  }

  function durationOf(f, now) {
    return (f.finishedAt || now) - f.createdAt;
  }

  /** Renders the page into `root`; returns its teardown, with `update(params)`. */
  window.dagflowPages.flows = function flowListView(root, params, h) {
    const { api, el, fill, toast, fmtTime, fmtDuration, errorMessage, Live } = h;
    let { state, problems } = readState(params);
    const cursors = [null];
    let page = 0;
    let nextCursor = null;
    let alive = true;
    let refreshTimer = null;
    let lastLoad = 0;
    let loadSeq = 0;
    let countsTimer = null;
    let lastCounts = 0;
    let searchTimer = null;
    let flows = [];
    const rows = new Map();
    const selected = new Set();
    // Per flow id: `${seq}` of the view the bar was split from, and the split.
    const splits = new Map();
    const barQueue = [];
    let barBusy = 0;

    // ---- controls

    const search = el('input', {
      id: 'flow-search', type: 'search', placeholder: 'Search names', 'aria-label': 'search flow names',
      maxlength: 256, autocomplete: 'off',
    });
    const filter = el('select', { id: 'status-filter', 'aria-label': 'status' },
      el('option', { value: '', text: 'All statuses' }),
      FLOW_STATUSES.map((s) => el('option', { value: s, text: s })));
    const from = el('input', { id: 'date-from', type: 'date', 'aria-label': 'created on or after' });
    const to = el('input', { id: 'date-to', type: 'date', 'aria-label': 'created on or before' });
    const sortSelect = el('select', { id: 'sort-select', 'aria-label': 'sort by' },
      [['created', 'Newest first', 'desc'], ['created', 'Oldest first', 'asc'], ['duration', 'Longest first', 'desc'],
        ['duration', 'Shortest first', 'asc'], ['status', 'By status', 'desc']]
        .map(([s, label, dir]) => el('option', { value: `${s}:${dir}`, text: label })));
    const clear = el('button', { id: 'clear-search', type: 'button', text: 'Clear' });
    const message = el('p', { id: 'list-problem', class: 'list-problem', role: 'alert', hidden: true });
    const counts = el('div', { id: 'flow-counts', class: 'flow-counts', 'aria-label': 'flows per status' });
    const countEls = {};
    const allChip = el('button', { type: 'button', class: 'count-chip', 'data-status': '' },
      el('span', { class: 'label', text: 'all' }), el('b', { class: 'n', text: '…' }));
    counts.append(allChip);
    FLOW_STATUSES.forEach((s) => {
      countEls[s] = el('button', { type: 'button', class: 'count-chip', 'data-status': s },
        el('span', { class: 'sw' }), el('span', { class: 'label', text: s }), el('b', { class: 'n', text: '…' }));
      counts.append(countEls[s]);
    });
    counts.addEventListener('click', (e) => {
      const chip = e.target.closest('.count-chip');
      if (chip) go({ status: chip.dataset.status });
    });

    const selectAll = el('input', { id: 'select-all', type: 'checkbox', 'aria-label': 'select every flow shown' });
    const selCount = el('span', { id: 'selection-count', class: 'small muted', text: '' });
    // `data-act`: off while the page's data is stale (page.js).
    const bulkCancel = el('button', { id: 'bulk-cancel', type: 'button', text: 'Cancel', disabled: true, 'data-act': true });
    const bulkDelete = el('button', { id: 'bulk-delete', type: 'button', class: 'danger', text: 'Delete', disabled: true, 'data-act': true });
    const sortHead = (key, label) => el('th', { class: 'sortable', 'data-sort': key },
      el('button', { type: 'button', class: 'sort', 'data-sort': key, text: label }));
    const tbody = el('tbody', { id: 'flow-rows' });
    const empty = el('p', { id: 'flows-empty', class: 'empty muted', hidden: true });
    const prev = el('button', { id: 'prev-page', text: '← Newer', disabled: true });
    const next = el('button', { id: 'next-page', text: 'Older →', disabled: true });
    const pageLabel = el('span', { id: 'page-label', class: 'muted small' });
    const thead = el('thead', {}, el('tr', {},
      el('th', { class: 'sel' }, el('label', { class: 'tap' }, selectAll)),
      el('th', { text: 'Name' }), sortHead('status', 'Status'), el('th', { text: 'Progress' }),
      sortHead('duration', 'Duration'), sortHead('created', 'Created'), el('th', { text: 'Id' })));

    root.append(
      el('div', { class: 'toolbar list-toolbar' },
        el('h1', { text: 'Flows' }), search, filter,
        el('label', { class: 'date small muted' }, 'from ', from),
        el('label', { class: 'date small muted' }, 'to ', to),
        sortSelect, clear, el('span', { class: 'spacer' }),
        el('a', { class: 'button primary', href: '#/submit', text: 'New flow' })),
      message,
      counts,
      el('div', { class: 'bulk row' }, selCount, bulkCancel, bulkDelete),
      el('div', { class: 'card' },
        el('table', { class: 'flows', id: 'flows-table' }, thead, tbody),
        empty),
      el('div', { class: 'pager' }, pageLabel, prev, next));

    /** Sets the URL to the state with `change` applied; the router calls `update`. */
    function go(change) {
      const hash = hashOf({ ...state, ...change });
      if (hash !== location.hash && !(hash === '#/' && (location.hash === '' || location.hash === '#'))) location.hash = hash;
    }

    search.addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => go({ q: search.value.trim() }), SEARCH_DEBOUNCE_MS);
    });
    search.addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      clearTimeout(searchTimer);
      go({ q: search.value.trim() });
    });
    filter.addEventListener('change', () => go({ status: filter.value }));
    const dateChanged = () => go({ from: from.value, to: to.value });
    from.addEventListener('change', dateChanged);
    to.addEventListener('change', dateChanged);
    sortSelect.addEventListener('change', () => {
      const [sort, dir] = sortSelect.value.split(':');
      go({ sort, dir });
    });
    thead.addEventListener('click', (e) => {
      const b = e.target.closest('button.sort');
      if (!b) return;
      const sort = b.dataset.sort;
      go({ sort, dir: state.sort === sort && state.dir === 'desc' ? 'asc' : 'desc' });
    });
    clear.addEventListener('click', () => go({ q: '', status: '', from: '', to: '' }));

    prev.addEventListener('click', () => { if (page > 0) { page--; load(); } });
    next.addEventListener('click', () => {
      if (!nextCursor) return;
      cursors[page + 1] = nextCursor;
      page++;
      load();
    });

    /** Shows the state in the controls (after a load from the URL). */
    function showState() {
      if (document.activeElement !== search || search.value.trim() !== state.q) search.value = state.q;
      filter.value = state.status;
      from.value = state.from;
      to.value = state.to;
      const key = `${state.sort}:${state.dir}`;
      sortSelect.value = [...sortSelect.options].some((o) => o.value === key) ? key : `${state.sort}:desc`;
      thead.querySelectorAll('th.sortable').forEach((th) => {
        th.setAttribute('aria-sort', th.dataset.sort === state.sort ? (state.dir === 'asc' ? 'ascending' : 'descending') : 'none');
      });
      clear.disabled = !state.q && !state.status && !state.from && !state.to;
      message.hidden = problems.length === 0;
      message.textContent = problems.join(' ');
      Object.entries(countEls).forEach(([s, c]) => c.classList.toggle('current', s === state.status));
      allChip.classList.toggle('current', !state.status);
    }

    // ---- rows

    function segment(kind) {
      return el('span', { class: `seg ${kind}`, 'data-seg': kind });
    }

    /** The bar's shares: exact per outcome once split, else the done share in the flow's colour. */
    function drawBar(row) {
      const f = row.flow;
      const total = Math.max(1, f.nodesTotal);
      const split = splits.get(f.id);
      const share = { ok: 0, fail: 0, cancel: 0, skip: 0, run: 0 };
      if (split && split.seq >= f.seq) {
        share.ok = split.completed;
        share.fail = split.failed;
        share.cancel = split.cancelled;
        share.skip = split.skipped;
      } else if (f.status === 'failed') share.fail = f.nodesDone;
      else if (f.status === 'cancelled') share.cancel = f.nodesDone;
      else if (f.status === 'running') share.run = f.nodesDone;
      else share.ok = f.nodesDone;
      for (const [k, n] of Object.entries(share)) row.segs[k].style.width = `${(100 * Math.min(n, total)) / total}%`;
      row.bar.dataset.status = f.status;
      row.bar.dataset.exact = split && split.seq >= f.seq ? 'true' : 'false';
      row.bar.title = split && split.seq >= f.seq
        ? `${split.completed} completed, ${split.failed} failed, ${split.cancelled} cancelled, ${split.skipped} skipped of ${f.nodesTotal}`
        : `${f.nodesDone} of ${f.nodesTotal} nodes ended`;
      if ((f.status === 'failed' || f.status === 'cancelled') && !(split && split.seq >= f.seq)) askSplit(f);
    }

    function askSplit(f) {
      if (barQueue.some((q) => q.id === f.id && q.seq === f.seq)) return;
      barQueue.push({ id: f.id, seq: f.seq });
      pumpBars();
    }

    async function pumpBars() {
      while (alive && barBusy < BAR_FETCHES && barQueue.length) {
        const job = barQueue.shift();
        if (!rows.has(job.id)) continue;
        barBusy++;
        api('GET', `/flows/${encodeURIComponent(job.id)}`).then((res) => {
          barBusy--;
          if (!alive) return;
          if (res.ok) {
            const view = res.body;
            const row = rows.get(job.id);
            // A view lists the DAG's nodes first, then the map elements.
            const dag = row ? view.nodes.slice(0, row.flow.nodesTotal) : view.nodes.filter((n) => !ELEMENT.test(n.name));
            const tally = { completed: 0, failed: 0, cancelled: 0, skipped: 0 };
            for (const n of dag) if (n.status in tally) tally[n.status]++;
            splits.set(job.id, { seq: Math.max(view.seq, job.seq), ...tally });
            if (row) {
              // The view may be newer than the listing: take its seq so the split counts.
              if (row.flow.seq < view.seq) row.flow.seq = view.seq;
              drawBar(row);
            }
          }
          pumpBars();
        });
      }
    }

    function updateRow(row, now) {
      const f = row.flow;
      row.badge.dataset.status = f.status;
      row.badge.textContent = f.status;
      row.count.textContent = `${f.nodesDone}/${f.nodesTotal}`;
      row.duration.textContent = fmtDuration(durationOf(f, now || Date.now()));
      row.duration.classList.toggle('live', f.status === 'running');
      drawBar(row);
    }

    function makeRow(f) {
      const check = el('input', { type: 'checkbox', class: 'select', 'aria-label': `select ${f.name || f.id}` });
      check.checked = selected.has(f.id);
      check.addEventListener('change', () => {
        if (check.checked) selected.add(f.id);
        else selected.delete(f.id);
        showSelection();
      });
      const row = {
        flow: f,
        check,
        badge: el('span', { class: 'badge' }),
        segs: { ok: segment('ok'), fail: segment('fail'), cancel: segment('cancel'), skip: segment('skip'), run: segment('run') },
        count: el('span', { class: 'count small' }),
        duration: el('span', { class: 'duration' }),
      };
      row.bar = el('span', { class: 'pbar', role: 'img' }, Object.values(row.segs));
      row.tr = el('tr', { 'data-id': f.id },
        el('td', { class: 'sel' }, el('label', { class: 'tap' }, check)),
        el('td', { class: 'name' }, el('a', { href: `#/flows/${encodeURIComponent(f.id)}`, text: f.name || '(unnamed)' })),
        el('td', { class: 'status' }, row.badge),
        el('td', { class: 'prog' }, el('span', { class: 'progress' }, row.bar, row.count)),
        el('td', { class: 'dur small', 'data-label': 'took' }, row.duration),
        el('td', { class: 'created small', text: fmtTime(f.createdAt) }),
        el('td', { class: 'id mono muted small', text: f.id }));
      updateRow(row);
      return row;
    }

    function sortFlows(list) {
      const now = Date.now();
      const key = {
        created: (f) => f.createdAt,
        duration: (f) => durationOf(f, now),
        status: (f) => STATUS_RANK[f.status] ?? -1,
      }[state.sort];
      const sign = state.dir === 'asc' ? 1 : -1;
      // Ties keep the server's order (newest first): sort is stable.
      return list.slice().sort((a, b) => sign * (key(a) - key(b)));
    }

    function render() {
      const now = Date.now();
      rows.clear();
      tbody.replaceChildren(...sortFlows(flows).map((f) => {
        const row = makeRow(f);
        rows.set(f.id, row);
        updateRow(row, now);
        return row.tr;
      }));
      for (const id of [...selected]) if (!rows.has(id)) selected.delete(id);
      showSelection();
    }

    function showSelection() {
      const n = selected.size;
      selCount.textContent = n ? `${n} selected` : 'Select flows to cancel or delete them';
      const stale = window.dagflowPage && window.dagflowPage.isStale();
      bulkCancel.disabled = n === 0 || stale;
      bulkDelete.disabled = n === 0 || stale;
      bulkCancel.textContent = n ? `Cancel ${n}` : 'Cancel';
      bulkDelete.textContent = n ? `Delete ${n}` : 'Delete';
      selectAll.checked = rows.size > 0 && n === rows.size;
      selectAll.indeterminate = n > 0 && n < rows.size;
    }

    selectAll.addEventListener('change', () => {
      for (const [id, row] of rows) {
        row.check.checked = selectAll.checked;
        if (selectAll.checked) selected.add(id);
        else selected.delete(id);
      }
      showSelection();
    });

    // ---- loading

    // Set when a reconnected socket is subscribed again: the next load makes the list fresh.
    let resynced = false;

    async function load() {
      lastLoad = Date.now();
      const seq = ++loadSeq;
      if (state.from && state.to && state.from > state.to) {
        flows = [];
        render();
        empty.hidden = false;
        empty.textContent = 'No flows: the start date is after the end date.';
        prev.disabled = true;
        next.disabled = true;
        return;
      }
      const q = searchQuery(state);
      q.set('limit', String(state.limit));
      if (state.status) q.set('status', state.status);
      if (cursors[page]) q.set('cursor', cursors[page]);
      const res = await api('GET', `/flows?${q}`);
      if (!alive || seq !== loadSeq) return;
      if (!res.ok) {
        toast(`Listing flows failed: ${errorMessage(res)}`, true);
        return;
      }
      // Fresh again (page.js's stale state): loaded after the server confirmed the
      // reconnected socket's subscription.
      if (resynced) {
        resynced = false;
        if (window.dagflowPage) window.dagflowPage.setStale(false);
      }
      nextCursor = res.body.nextCursor || null;
      flows = res.body.flows;
      render();
      const searching = state.q || state.from || state.to;
      empty.hidden = flows.length > 0;
      empty.textContent = searching || state.status
        ? `No ${state.status ? `${state.status} ` : ''}flows match${state.q ? ` “${state.q}”` : ''}${state.from || state.to ? ` created ${state.from ? `from ${state.from} ` : ''}${state.to ? `to ${state.to}` : ''}`.trimEnd() : ''}.`
        : 'No flows yet — submit one.';
      prev.disabled = page === 0;
      next.disabled = !nextCursor;
      pageLabel.textContent = `Page ${page + 1}${state.sort !== 'created' && (nextCursor || page > 0) ? ' (sorted within the page)' : ''}`;
      loadCounts();
    }

    async function loadCounts() {
      clearTimeout(countsTimer);
      countsTimer = null;
      lastCounts = Date.now();
      const res = await api('GET', `/flows/counts?${searchQuery(state)}`);
      if (!alive) return;
      if (!res.ok) {
        Object.values(countEls).forEach((c) => { c.querySelector('.n').textContent = '?'; });
        return;
      }
      let all = 0;
      FLOW_STATUSES.forEach((s) => {
        const n = res.body[s] || 0;
        all += n;
        countEls[s].querySelector('.n').textContent = n.toLocaleString();
        countEls[s].classList.toggle('zero', n === 0);
      });
      allChip.querySelector('.n').textContent = all.toLocaleString();
    }

    function scheduleCounts() {
      if (countsTimer) return;
      countsTimer = setTimeout(loadCounts, Math.max(200, COUNTS_EVERY_MS - (Date.now() - lastCounts)));
    }

    /** Reloads the page soon, at most once a second, when events say it changed. */
    function scheduleRefresh() {
      if (refreshTimer) return;
      const wait = Math.max(150, 1000 - (Date.now() - lastLoad));
      refreshTimer = setTimeout(() => {
        refreshTimer = null;
        load();
      }, wait);
    }

    const ticker = setInterval(() => {
      const now = Date.now();
      for (const row of rows.values()) if (row.flow.status === 'running') row.duration.textContent = fmtDuration(durationOf(row.flow, now));
    }, 1000);

    function onMessage(m) {
      if (m.type === 'subscribed' && window.dagflowPage && window.dagflowPage.isStale()) {
        resynced = true;
        scheduleRefresh();
        return;
      }
      if (m.type === 'lagged') {
        scheduleRefresh();
        return;
      }
      if (m.type !== 'flow:updated') return;
      if (m.node === undefined) scheduleCounts();
      const row = rows.get(m.flowId);
      if (!row) {
        // A flow not on this page: only a new or newly finished flow can join the first page.
        if (page === 0 && m.node === undefined && (!state.status || state.status === m.status)) scheduleRefresh();
        return;
      }
      const f = row.flow;
      f.seq = Math.max(f.seq, m.seq || 0);
      if (m.node === undefined) {
        const wasTerminal = f.status !== 'running';
        f.status = m.status;
        if (m.status !== 'running') f.finishedAt = f.finishedAt || m.ts || Date.now();
        // A retried flow resets nodes, and a finished one has exact counts: ask.
        if (wasTerminal || m.status !== 'running' || (state.status && state.status !== m.status)) scheduleRefresh();
      } else if (['completed', 'failed', 'skipped', 'cancelled'].includes(m.status) && !ELEMENT.test(m.node)) {
        f.nodesDone = Math.min(f.nodesTotal, f.nodesDone + 1);
      }
      updateRow(row);
    }

    // ---- bulk actions

    const dialog = el('dialog', { id: 'bulk-dialog', class: 'bulk-dialog' });
    document.body.append(dialog);

    /** Asks in a dialog; resolves true when confirmed. */
    function confirmBulk(title, body, action, danger) {
      return new Promise((resolve) => {
        const ok = el('button', { id: 'bulk-confirm', type: 'button', class: danger ? 'danger' : 'primary', text: action });
        const no = el('button', { id: 'bulk-dismiss', type: 'button', text: 'Keep them' });
        fill(dialog, el('h2', { id: 'bulk-title', text: title }), body, el('div', { class: 'row end' }, no, ok));
        const done = (answer) => {
          dialog.close();
          resolve(answer);
        };
        ok.addEventListener('click', () => done(true));
        no.addEventListener('click', () => done(false));
        dialog.addEventListener('cancel', () => resolve(false), { once: true });
        dialog.showModal();
        no.focus();
      });
    }

    async function bulk(kind) {
      const chosen = flows.filter((f) => selected.has(f.id));
      if (!chosen.length) return;
      const n = chosen.length;
      const what = `${n} flow${n === 1 ? '' : 's'}`;
      const names = el('ul', { class: 'bulk-names small' }, chosen.slice(0, 8).map((f) => el('li', { text: f.name || f.id })),
        n > 8 ? el('li', { class: 'muted', text: `and ${n - 8} more` }) : null);
      const cancel = kind === 'cancel';
      const running = chosen.filter((f) => f.status === 'running').length;
      const note = cancel
        ? `Running jobs are told to stop and pending nodes never run.${running < n ? ` ${n - running} of them ${n - running === 1 ? 'is' : 'are'} not running and cannot be cancelled.` : ''}`
        : 'Their records and jobs are removed for good.';
      const yes = await confirmBulk(`${cancel ? 'Cancel' : 'Delete'} ${what}?`, [el('p', { text: note }), names],
        `${cancel ? 'Cancel' : 'Delete'} ${what}`, !cancel);
      if (!yes || !alive) return;
      bulkCancel.disabled = true;
      bulkDelete.disabled = true;
      const failures = [];
      let okCount = 0;
      const queue = chosen.slice();
      const worker = async () => {
        for (let f = queue.shift(); f; f = queue.shift()) {
          const path = `/flows/${encodeURIComponent(f.id)}${cancel ? '/cancel' : ''}`;
          const res = await api(cancel ? 'POST' : 'DELETE', path);
          if (res.ok) {
            okCount++;
            selected.delete(f.id);
          } else failures.push(`${f.name || f.id}: ${errorMessage(res)}`);
        }
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
      if (!alive) return;
      const verb = cancel ? 'Cancelled' : 'Deleted';
      if (failures.length) {
        toast(`${verb} ${okCount} of ${what}. Failed: ${failures.join('; ')}`, true);
      } else toast(`${verb} ${what}.`);
      load();
    }
    bulkCancel.addEventListener('click', () => bulk('cancel'));
    bulkDelete.addEventListener('click', () => bulk('delete'));

    // ---- start

    const live = new Live(['*'], onMessage, (again) => { if (again) scheduleRefresh(); });
    showState();
    load();
    const teardown = () => {
      alive = false;
      clearTimeout(refreshTimer);
      clearTimeout(countsTimer);
      clearTimeout(searchTimer);
      clearInterval(ticker);
      live.close();
      dialog.remove();
    };
    /** A new hash of this page: the new state, from the first page. */
    teardown.update = (newParams) => {
      ({ state, problems } = readState(newParams));
      cursors.length = 1;
      page = 0;
      nextCursor = null;
      showState();
      load();
    };
    return teardown;
  };
})();

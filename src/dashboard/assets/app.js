/*
 * dagflow dashboard: flows list, live flow graph, node details, submit form.
 *
 * Built only on the public API: REST for lists, actions and node details, one
 * WebSocket per page for live state (the flows list follows "*", a flow page its
 * flow: a snapshot, then one event per change, applied to that node's element
 * alone). Routing is by URL hash, so the server serves a single page.
 */
(function () {
  'use strict';

  const TOKEN_KEY = 'dagflow.token';
  const DRAFT_KEY = 'dagflow.draft';
  const NODE_STATUSES = ['pending', 'queued', 'active', 'completed', 'failed', 'skipped', 'cancelled'];
  const FLOW_STATUSES = ['running', 'completed', 'failed', 'cancelled'];
  const TERMINAL = new Set(['completed', 'failed', 'skipped', 'cancelled']);
  const PAGE_SIZE = 25;
  const EXAMPLE = {
    name: 'image pipeline',
    nodes: [
      { name: 'download-image', handler: 'echo', data: { url: 'https://example.com/a.png' } },
      { name: 'resize-image', handler: 'echo', parents: ['download-image'], data: { width: 800, height: 600 } },
      { name: 'add-watermark', handler: 'echo', parents: ['download-image'], data: { text: '© dagflow' } },
      {
        name: 'save-to-s3', handler: 'echo', parents: ['resize-image', 'add-watermark'], data: { bucket: 'images' },
        opts: { attempts: 3, backoff: { type: 'exponential', delayMs: 500 }, timeoutMs: 30000 },
      },
    ],
    opts: { onFailure: 'continue' },
  };

  // ---------------------------------------------------------------- helpers

  const $ = (sel, root) => (root || document).querySelector(sel);

  /** Creates an element; text goes in as text, never as HTML. */
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    return appendAll(e, kids);
  }

  /** Appends `kids` (nested arrays allowed; null, undefined and false skipped). */
  function appendAll(parent, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      parent.append(kid instanceof Node ? kid : String(kid));
    }
    return parent;
  }

  /** Replaces the children of `parent` with `kids`, as `el` takes them. */
  function fill(parent, ...kids) {
    parent.replaceChildren();
    return appendAll(parent, kids);
  }

  /** Escapes text for the SVG markup built as a string (1,000 nodes at once). */
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  }

  function truncate(s, n) {
    return s.length > n ? s.slice(0, n - 1) + '…' : s;
  }

  const pad = (n) => String(n).padStart(2, '0');
  function fmtTime(ms) {
    if (!ms) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtDuration(ms) {
    if (ms === null || ms === undefined || ms < 0 || Number.isNaN(ms)) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const s = Math.round(ms / 1000);
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }
  function jsonText(v) {
    const s = JSON.stringify(v, null, 2);
    if (s === undefined) return String(v);
    return s.length > 200000 ? s.slice(0, 200000) + '\n… (cut at 200 kB)' : s;
  }
  function errorMessage(res) {
    const e = res.body && res.body.error;
    return e && e.message ? e.message : `HTTP ${res.status}`;
  }

  let toastTimer = null;
  function toast(message, isError) {
    const t = $('#toast');
    t.textContent = message;
    t.classList.toggle('error', !!isError);
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, isError ? 8000 : 3000);
  }

  // ------------------------------------------------------------------ token

  const getToken = () => sessionStorage.getItem(TOKEN_KEY);
  let tokenWaiters = null;

  /** Shows the token dialog (once, however many requests wait) and resolves when a token is entered. */
  function askToken(message) {
    if (!tokenWaiters) {
      tokenWaiters = [];
      $('#token-message').textContent = message;
      $('#token-input').value = '';
      const dialog = $('#token-dialog');
      if (!dialog.open) dialog.showModal();
      $('#token-input').focus();
    }
    return new Promise((resolve) => tokenWaiters.push(resolve));
  }

  function initTokenDialog() {
    const dialog = $('#token-dialog');
    // Nothing works without a token: Escape does not dismiss the dialog.
    dialog.addEventListener('cancel', (e) => e.preventDefault());
    $('#token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const token = $('#token-input').value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      dialog.close();
      const waiters = tokenWaiters || [];
      tokenWaiters = null;
      waiters.forEach((resolve) => resolve());
    });
  }

  /**
   * Calls the API with the session's token. A 401 asks for a token and tries
   * again, so callers only ever see the answer they asked for.
   */
  async function api(method, path, body) {
    for (;;) {
      const token = getToken();
      const headers = {};
      if (token) headers.Authorization = `Bearer ${token}`;
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      let res;
      try {
        res = await fetch(path, { method, headers, body });
      } catch (e) {
        return { status: 0, ok: false, body: { error: { message: 'the server is unreachable' } } };
      }
      if (res.status === 401) {
        if (token) sessionStorage.removeItem(TOKEN_KEY);
        await askToken(token ? 'That token was refused. Enter the API token.' : 'This server needs an API token.');
        continue;
      }
      const text = await res.text();
      let json = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch (e) {
        json = { error: { message: text } };
      }
      return { status: res.status, ok: res.ok, body: json };
    }
  }

  // -------------------------------------------------------------- websocket

  function setConn(state) {
    const c = $('#conn');
    c.dataset.state = state;
    $('#conn-label').textContent = { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', idle: '' }[state] || state;
  }

  /**
   * One WebSocket that subscribes to `targets` on every (re)connect and hands
   * each message to `onMessage`. Reconnects with backoff; a connection refused
   * before it opened is checked with a REST call, which asks for a token on 401.
   */
  class Live {
    constructor(targets, onMessage, onOpen) {
      this.targets = targets;
      this.onMessage = onMessage;
      this.onOpen = onOpen;
      this.closed = false;
      this.retry = 0;
      this.everOpen = false;
      this.connect();
    }

    connect() {
      if (this.closed) return;
      setConn(this.everOpen ? 'reconnecting' : 'connecting');
      const token = getToken();
      const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
      const url = `${scheme}${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ''}`;
      const ws = new WebSocket(url);
      let opened = false;
      this.ws = ws;
      ws.onopen = () => {
        opened = true;
        this.retry = 0;
        const again = this.everOpen;
        this.everOpen = true;
        setConn('live');
        this.targets.forEach((flowId) => this.send({ type: 'subscribe', flowId }));
        if (this.onOpen) this.onOpen(again);
      };
      ws.onmessage = (e) => {
        let msg;
        try {
          msg = JSON.parse(e.data);
        } catch (err) {
          return;
        }
        this.onMessage(msg);
      };
      ws.onclose = async () => {
        if (this.closed || this.ws !== ws) return;
        setConn('reconnecting');
        if (!opened) await api('GET', '/flows?limit=1');
        if (this.closed) return;
        const delay = Math.min(5000, 250 * 2 ** this.retry++);
        this.timer = setTimeout(() => this.connect(), delay);
      };
    }

    send(msg) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
    }

    close() {
      this.closed = true;
      clearTimeout(this.timer);
      if (this.ws) this.ws.close();
      setConn('idle');
    }
  }

  // ------------------------------------------------------------- flows list

  function listView(root, params) {
    const status = FLOW_STATUSES.includes(params.get('status')) ? params.get('status') : '';
    const limit = Math.min(1000, Math.max(1, parseInt(params.get('limit'), 10) || PAGE_SIZE));
    const cursors = [null];
    let page = 0;
    let nextCursor = null;
    let alive = true;
    let refreshTimer = null;
    let lastLoad = 0;
    const rows = new Map();

    const filter = el('select', { id: 'status-filter', 'aria-label': 'status' },
      el('option', { value: '', text: 'All statuses' }),
      FLOW_STATUSES.map((s) => el('option', { value: s, text: s, selected: s === status })));
    filter.addEventListener('change', () => {
      const q = new URLSearchParams();
      if (filter.value) q.set('status', filter.value);
      if (limit !== PAGE_SIZE) q.set('limit', limit);
      const qs = q.toString();
      location.hash = `#/${qs ? `?${qs}` : ''}`;
    });
    const tbody = el('tbody', { id: 'flow-rows' });
    const empty = el('p', { id: 'flows-empty', class: 'empty muted', hidden: true });
    const prev = el('button', { id: 'prev-page', text: '← Newer', disabled: true });
    const next = el('button', { id: 'next-page', text: 'Older →', disabled: true });
    const pageLabel = el('span', { id: 'page-label', class: 'muted small' });
    root.append(
      el('div', { class: 'toolbar' },
        el('h1', { text: 'Flows' }), filter, el('span', { class: 'spacer' }),
        el('a', { class: 'button primary', href: '#/submit', text: 'New flow' })),
      el('div', { class: 'card' },
        el('table', { class: 'flows', id: 'flows-table' },
          el('thead', {}, el('tr', {},
            ['Name', 'Status', 'Progress', 'Created', 'Id'].map((h) => el('th', { text: h })))),
          tbody),
        empty),
      el('div', { class: 'pager' }, pageLabel, prev, next));

    prev.addEventListener('click', () => { if (page > 0) { page--; load(); } });
    next.addEventListener('click', () => {
      if (!nextCursor) return;
      cursors[page + 1] = nextCursor;
      page++;
      load();
    });

    function updateRow(row) {
      const f = row.flow;
      row.badge.dataset.status = f.status;
      row.badge.textContent = f.status;
      row.bar.max = Math.max(1, f.nodesTotal);
      row.bar.value = f.nodesDone;
      row.bar.dataset.status = f.status;
      row.count.textContent = `${f.nodesDone}/${f.nodesTotal}`;
    }

    function makeRow(f) {
      const row = {
        flow: f,
        badge: el('span', { class: 'badge' }),
        bar: el('progress'),
        count: el('span', { class: 'count small' }),
      };
      row.tr = el('tr', { 'data-id': f.id },
        el('td', { class: 'name' }, el('a', { href: `#/flows/${encodeURIComponent(f.id)}`, text: f.name || '(unnamed)' })),
        el('td', {}, row.badge),
        el('td', {}, el('span', { class: 'progress' }, row.bar, row.count)),
        el('td', { class: 'small', text: fmtTime(f.createdAt) }),
        el('td', { class: 'mono muted small', text: f.id }));
      updateRow(row);
      return row;
    }

    async function load() {
      lastLoad = Date.now();
      const q = new URLSearchParams({ limit: String(limit) });
      if (status) q.set('status', status);
      if (cursors[page]) q.set('cursor', cursors[page]);
      const res = await api('GET', `/flows?${q}`);
      if (!alive) return;
      if (!res.ok) {
        toast(`Listing flows failed: ${errorMessage(res)}`, true);
        return;
      }
      nextCursor = res.body.nextCursor || null;
      rows.clear();
      tbody.replaceChildren(...res.body.flows.map((f) => {
        const row = makeRow(f);
        rows.set(f.id, row);
        return row.tr;
      }));
      empty.hidden = res.body.flows.length > 0;
      empty.textContent = status ? `No ${status} flows.` : 'No flows yet — submit one.';
      prev.disabled = page === 0;
      next.disabled = !nextCursor;
      pageLabel.textContent = `Page ${page + 1}`;
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

    function onMessage(m) {
      if (m.type === 'lagged') {
        scheduleRefresh();
        return;
      }
      if (m.type !== 'flow:updated') return;
      const row = rows.get(m.flowId);
      if (!row) {
        // A flow not on this page: only a new or newly finished flow can join the first page.
        if (page === 0 && m.node === undefined && (!status || status === m.status)) scheduleRefresh();
        return;
      }
      const f = row.flow;
      if (m.node === undefined) {
        const wasTerminal = f.status !== 'running';
        f.status = m.status;
        // A retried flow resets nodes, and a finished one has exact counts: ask.
        if (wasTerminal || m.status !== 'running' || (status && status !== m.status)) scheduleRefresh();
      } else if (TERMINAL.has(m.status)) {
        f.nodesDone = Math.min(f.nodesTotal, f.nodesDone + 1);
      }
      updateRow(row);
    }

    const live = new Live(['*'], onMessage, (again) => { if (again) scheduleRefresh(); });
    load();
    return () => {
      alive = false;
      clearTimeout(refreshTimer);
      live.close();
    };
  }

  // -------------------------------------------------------------- flow page

  function flowView(root, id) {
    const L = window.DagLayout;
    const W = L.defaults.nodeWidth;
    const H = L.defaults.nodeHeight;
    let flow = null;
    let nodes = [];
    let byName = new Map();
    let seq = 0;
    let resyncing = false;
    let selected = -1;
    let detailTimer = null;
    let detailAsk = 0;
    let alive = true;
    let layoutSize = { width: 0, height: 0 };
    const counts = {};
    const dirty = new Set();
    let framePending = false;
    const view = { k: 1, x: 0, y: 0 };
    // Until the user pans or zooms, the graph stays fitted to its box.
    let autoFit = true;
    let viewFar = false;
    let viewport = null;

    const nameEl = el('h1', { id: 'flow-name', text: 'Flow' });
    const statusEl = el('span', { id: 'flow-status', class: 'badge', text: '…' });
    const search = el('input', { id: 'node-search', type: 'search', placeholder: 'Find node', list: 'node-names', 'aria-label': 'find node' });
    const names = el('datalist', { id: 'node-names' });
    const fitBtn = el('button', { id: 'fit', text: 'Fit', title: 'fit the graph to the view' });
    const cancelBtn = el('button', { id: 'cancel-flow', text: 'Cancel', disabled: true });
    const retryBtn = el('button', { id: 'retry-flow', text: 'Retry', disabled: true });
    const deleteBtn = el('button', { id: 'delete-flow', class: 'danger', text: 'Delete', disabled: true });
    const meta = el('div', { id: 'flow-meta', class: 'meta' });
    const countsEl = el('div', { id: 'status-counts', class: 'counts' });
    const flowError = el('div', { id: 'flow-error', class: 'flow-error', hidden: true });
    const graph = el('div', { id: 'graph', class: 'graph' }, el('p', { class: 'muted loading', text: 'Loading…' }));
    const panel = el('aside', { id: 'node-panel', class: 'panel', hidden: true });
    const chips = {};
    NODE_STATUSES.forEach((s) => {
      chips[s] = el('span', { class: 'chip zero', 'data-status': s }, el('span', { class: 'sw' }), el('span', { class: 'n', text: '0' }), s);
      countsEl.append(chips[s]);
    });
    root.append(
      el('section', { class: 'flow-head' },
        el('div', { class: 'title' },
          el('a', { class: 'crumb', href: '#/', text: 'Flows /' }), nameEl, statusEl,
          el('span', { class: 'spacer' }), search, names, fitBtn, retryBtn, cancelBtn, deleteBtn),
        meta, countsEl, flowError),
      el('div', { class: 'flow-body' }, graph, panel));

    // ---- state from the server

    function onMessage(m) {
      if (m.type === 'snapshot' && m.flow && m.flow.id === id) {
        applySnapshot(m.flow);
      } else if (m.type === 'flow:updated' && m.flowId === id) {
        if (!flow || resyncing || m.seq <= seq) return;
        if (m.seq !== seq + 1) {
          // A gap should not happen (the server sends a snapshot after a lag);
          // if it does, start again from a fresh snapshot.
          resyncing = true;
          live.send({ type: 'subscribe', flowId: id });
          return;
        }
        seq = m.seq;
        applyEvent(m);
      } else if (m.type === 'error' && m.flowId === id) {
        graph.replaceChildren(el('p', { class: 'empty muted', id: 'flow-missing', text: m.message || 'flow not found' }));
        statusEl.textContent = 'unknown';
        deleteBtn.disabled = true;
      }
    }

    function applySnapshot(f) {
      const same = flow && f.nodes.length === nodes.length && f.nodes.every((n, i) => n.name === nodes[i].name);
      flow = f;
      seq = f.seq;
      resyncing = false;
      if (same) {
        f.nodes.forEach((n, i) => {
          Object.assign(nodes[i], n);
          markDirty(i);
        });
      } else {
        buildGraph(f);
      }
      updateHeader();
      if (selected >= 0) scheduleDetail();
    }

    function applyEvent(m) {
      if (m.node === undefined) {
        flow.status = m.status;
        flow.updatedAt = m.ts;
        flow.finishedAt = m.status === 'running' ? undefined : m.ts;
        updateHeader();
        return;
      }
      const i = byName.get(m.node);
      if (i === undefined) return;
      const n = nodes[i];
      n.status = m.status;
      n.attempt = m.attempt;
      if (m.status === 'queued') n.queuedAt = m.ts;
      if (m.status === 'active') n.startedAt = m.ts;
      if (TERMINAL.has(m.status)) n.finishedAt = m.ts;
      if (m.status === 'pending' || m.status === 'queued') n.finishedAt = undefined;
      if (m.progress !== undefined) n.progress = m.progress;
      if (m.error !== undefined) n.error = m.error;
      markDirty(i);
      if (i === selected) scheduleDetail();
    }

    // ---- rendering: one full build per structure, then per-node updates

    function subLine(n) {
      let s = n.status;
      if (n.attempt > 1) s += ` · try ${n.attempt}`;
      if (n.status === 'active' && typeof n.progress === 'number') s += ` · ${n.progress}%`;
      if (TERMINAL.has(n.status) && n.startedAt && n.finishedAt) s += ` · ${fmtDuration(n.finishedAt - n.startedAt)}`;
      return s;
    }

    function buildGraph(f) {
      nodes = f.nodes.map((n, i) => Object.assign({ i, shown: null }, n));
      byName = new Map(nodes.map((n) => [n.name, n.i]));
      const edges = [];
      nodes.forEach((n) => n.parents.forEach((p) => {
        const from = byName.get(p);
        if (from !== undefined) edges.push([from, n.i]);
      }));
      const lay = L.layout(nodes.length, edges);
      layoutSize = { width: lay.width, height: lay.height };
      NODE_STATUSES.forEach((s) => { counts[s] = 0; });
      const parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" id="dag" role="img" aria-label="flow graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">',
        '<path d="M0,1L9,5L0,9z" fill="#94a3b8"/></marker></defs><g id="viewport"><g class="edges">',
      ];
      lay.edges.forEach((e) => parts.push(`<path class="edge" d="${e.d}" marker-end="url(#arrow)"/>`));
      parts.push('</g><g class="nodes">');
      nodes.forEach((n) => {
        counts[n.status] = (counts[n.status] || 0) + 1;
        n.shown = n.status;
        parts.push(
          `<g class="node" data-i="${n.i}" data-name="${esc(n.name)}" data-status="${esc(n.status)}" transform="translate(${lay.x[n.i]},${lay.y[n.i].toFixed(1)})">`,
          `<rect width="${W}" height="${H}" rx="7"/>`,
          `<text class="name" x="10" y="17">${esc(truncate(n.name, 22))}</text>`,
          `<text class="sub" x="10" y="32">${esc(subLine(n))}</text>`,
          `<title>${esc(n.name)} (${esc(n.handler)} on ${esc(n.queue)})</title></g>`);
      });
      parts.push('</g></g></svg>');
      graph.innerHTML = parts.join('');
      // Big graphs skip the running-node animation, which repaints every frame.
      graph.classList.toggle('large', nodes.length > 300);
      graph.append(el('div', { class: 'hint', text: 'drag to pan · wheel to zoom · click a node for details' }));
      const elems = graph.querySelectorAll('g.node');
      nodes.forEach((n, i) => {
        n.el = elems[i];
        n.sub = elems[i].lastElementChild.previousElementSibling;
      });
      viewport = $('#viewport', graph);
      names.replaceChildren(...nodes.map((n) => el('option', { value: n.name })));
      selected = -1;
      panel.hidden = true;
      renderCounts();
      fit();
    }

    function markDirty(i) {
      dirty.add(i);
      if (!framePending) {
        framePending = true;
        requestAnimationFrame(flush);
      }
    }

    /** Applies the changed nodes once per frame: one attribute and one text per node. */
    function flush() {
      framePending = false;
      if (!alive) return;
      dirty.forEach((i) => {
        const n = nodes[i];
        if (!n || !n.el) return;
        if (n.shown !== n.status) {
          counts[n.shown] = (counts[n.shown] || 1) - 1;
          counts[n.status] = (counts[n.status] || 0) + 1;
          n.el.setAttribute('data-status', n.status);
          n.shown = n.status;
        }
        n.sub.textContent = subLine(n);
      });
      dirty.clear();
      renderCounts();
      $('#flow-seq', meta) && ($('#flow-seq', meta).textContent = String(seq));
    }

    function renderCounts() {
      NODE_STATUSES.forEach((s) => {
        chips[s].querySelector('.n').textContent = String(counts[s] || 0);
        chips[s].classList.toggle('zero', !counts[s]);
      });
    }

    function updateHeader() {
      if (!flow) return;
      document.title = `${flow.name || 'flow'} · dagflow`;
      nameEl.textContent = flow.name || '(unnamed)';
      statusEl.dataset.status = flow.status;
      statusEl.textContent = flow.status;
      cancelBtn.disabled = flow.status !== 'running';
      retryBtn.disabled = !(flow.status === 'failed' || flow.status === 'cancelled');
      deleteBtn.disabled = false;
      const item = (label, value, attrs) => el('span', {}, `${label} `, el('b', Object.assign({ text: value }, attrs || {})));
      meta.replaceChildren(
        item('id', flow.id, { class: 'mono' }),
        item('nodes', String(nodes.length)),
        item('created', fmtTime(flow.createdAt)),
        item('finished', flow.finishedAt ? fmtTime(flow.finishedAt) : '—'),
        item('took', flow.finishedAt ? fmtDuration(flow.finishedAt - flow.createdAt) : '—'),
        item('seq', String(seq), { id: 'flow-seq' }));
      flowError.hidden = !flow.error;
      flowError.textContent = flow.error || '';
    }

    // ---- pan and zoom

    function applyView() {
      if (!viewport) return;
      viewport.setAttribute('transform', `translate(${view.x.toFixed(1)},${view.y.toFixed(1)}) scale(${view.k.toFixed(4)})`);
      // Labels too small to read are not drawn: far out, a big graph paints several times faster.
      const far = view.k < 0.4;
      if (far !== viewFar) {
        viewFar = far;
        graph.classList.toggle('far', far);
      }
    }

    function fit() {
      const r = graph.getBoundingClientRect();
      if (!layoutSize.width || !r.width) return;
      view.k = Math.max(0.02, Math.min(1.25, (r.width - 24) / layoutSize.width, (r.height - 24) / layoutSize.height));
      view.x = (r.width - layoutSize.width * view.k) / 2;
      view.y = (r.height - layoutSize.height * view.k) / 2;
      autoFit = true;
      applyView();
    }

    /** Fits again after the box changed size (panel opened, window resized), unless the user moved the graph. */
    function refit() {
      if (autoFit) requestAnimationFrame(() => { if (alive && autoFit) fit(); });
    }

    function centerOn(i) {
      const n = nodes[i];
      const t = n.el.transform.baseVal.consolidate();
      if (!t) return;
      const r = graph.getBoundingClientRect();
      view.k = Math.max(view.k, 1);
      view.x = r.width / 2 - (t.matrix.e + W / 2) * view.k;
      view.y = r.height / 2 - (t.matrix.f + H / 2) * view.k;
      autoFit = false;
      applyView();
    }

    graph.addEventListener('wheel', (e) => {
      if (!viewport) return;
      e.preventDefault();
      const r = graph.getBoundingClientRect();
      const px = e.clientX - r.left;
      const py = e.clientY - r.top;
      const delta = e.deltaY * (e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1);
      const k = Math.max(0.02, Math.min(2.5, view.k * Math.exp(-delta * 0.0015)));
      view.x = px - ((px - view.x) * k) / view.k;
      view.y = py - ((py - view.y) * k) / view.k;
      view.k = k;
      autoFit = false;
      applyView();
    }, { passive: false });

    let drag = null;
    let dragged = false;
    const onMove = (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (!dragged && Math.abs(dx) + Math.abs(dy) < 4) return;
      dragged = true;
      autoFit = false;
      graph.classList.add('dragging');
      view.x = drag.vx + dx;
      view.y = drag.vy + dy;
      applyView();
    };
    const onUp = () => {
      drag = null;
      graph.classList.remove('dragging');
    };
    graph.addEventListener('pointerdown', (e) => {
      if (e.button !== 0) return;
      drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y };
      dragged = false;
    });
    window.addEventListener('pointermove', onMove);
    window.addEventListener('pointerup', onUp);
    graph.addEventListener('click', (e) => {
      if (dragged) return;
      const g = e.target.closest && e.target.closest('g.node');
      if (g) select(Number(g.dataset.i));
    });
    fitBtn.addEventListener('click', fit);
    search.addEventListener('change', () => findNode(search.value));
    search.addEventListener('keydown', (e) => { if (e.key === 'Enter') findNode(search.value); });

    function findNode(text) {
      const q = text.trim().toLowerCase();
      if (!q) return;
      let i = nodes.findIndex((n) => n.name.toLowerCase() === q);
      if (i < 0) i = nodes.findIndex((n) => n.name.toLowerCase().includes(q));
      if (i < 0) {
        toast(`No node matches “${text}”`, true);
        return;
      }
      select(i);
      centerOn(i);
    }

    window.addEventListener('resize', refit);
    const onKey = (e) => { if (e.key === 'Escape' && selected >= 0 && !$('#token-dialog').open) closePanel(); };
    window.addEventListener('keydown', onKey);

    // ---- node details

    function select(i) {
      if (selected >= 0 && nodes[selected]) nodes[selected].el.classList.remove('selected');
      selected = i;
      nodes[i].el.classList.add('selected');
      if (panel.hidden) {
        panel.hidden = false;
        refit();
      }
      fill(panel, el('header', {}, el('h2', { text: nodes[i].name }), closeButton()), el('p', { class: 'muted', text: 'Loading…' }));
      loadDetail();
    }

    function closeButton() {
      return el('button', { class: 'close', id: 'close-panel', title: 'close', text: '×', onclick: closePanel });
    }

    function closePanel() {
      if (selected >= 0 && nodes[selected]) nodes[selected].el.classList.remove('selected');
      selected = -1;
      panel.hidden = true;
      refit();
    }

    function scheduleDetail() {
      clearTimeout(detailTimer);
      detailTimer = setTimeout(loadDetail, 150);
    }

    async function loadDetail() {
      if (selected < 0) return;
      const i = selected;
      const ask = ++detailAsk;
      const res = await api('GET', `/flows/${encodeURIComponent(id)}/nodes/${encodeURIComponent(nodes[i].name)}`);
      if (!alive || ask !== detailAsk || selected !== i) return;
      if (!res.ok) {
        fill(panel, el('header', {}, el('h2', { text: nodes[i].name }), closeButton()),
          el('pre', { class: 'error', text: errorMessage(res) }));
        return;
      }
      renderDetail(res.body);
    }

    function nodeLinks(list) {
      if (!list.length) return el('span', { class: 'muted', text: 'none' });
      return el('span', { class: 'links' }, list.map((name) => el('a', {
        href: '#', text: name,
        onclick: (e) => {
          e.preventDefault();
          const j = byName.get(name);
          if (j !== undefined) { select(j); centerOn(j); }
        },
      })));
    }

    function renderDetail(v) {
      const kv = (pairs) => el('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, val]) => [el('dt', { text: k }), el('dd', {}, val)]));
      const hasInput = v.input !== undefined && v.input !== null;
      const data = hasInput && typeof v.input === 'object' && 'data' in v.input ? v.input.data : undefined;
      const parentResults = hasInput && typeof v.input === 'object' ? v.input.parents : undefined;
      const waitMs = v.startedAt && v.queuedAt ? v.startedAt - v.queuedAt : null;
      const runMs = v.finishedAt && v.startedAt ? v.finishedAt - v.startedAt : null;
      fill(panel, 
        el('header', {}, el('h2', { id: 'node-detail-name', text: v.name }), el('span', { class: 'badge', 'data-status': v.status, id: 'node-detail-status', text: v.status }), closeButton()),
        kv([
          ['attempt', String(v.attempt)],
          ['handler', el('code', { text: v.handler })],
          ['queue', el('code', { text: v.queue })],
          v.jobId ? ['job id', el('code', { text: v.jobId })] : null,
          ['parents', nodeLinks(v.parents)],
          ['children', nodeLinks(v.children)],
        ]),
        el('h3', { text: 'Timings' }),
        kv([
          ['queued', fmtTime(v.queuedAt)],
          ['started', fmtTime(v.startedAt)],
          ['finished', fmtTime(v.finishedAt)],
          ['waited', fmtDuration(waitMs)],
          ['ran', fmtDuration(runMs)],
          v.dueAt ? ['retry due', fmtTime(v.dueAt)] : null,
        ]),
        v.progress !== undefined ? [el('h3', { text: 'Progress' }), el('pre', { id: 'node-progress', text: jsonText(v.progress) })] : null,
        v.error ? [el('h3', { text: 'Error' }), el('pre', { class: 'error', id: 'node-error', text: v.error })] : null,
        v.result !== undefined ? [el('h3', { text: 'Result' }), el('pre', { id: 'node-result', text: jsonText(v.result) })] : null,
        el('h3', { text: 'Data' }),
        hasInput ? el('pre', { id: 'node-data', text: jsonText(data === undefined ? null : data) })
          : el('p', { class: 'muted small', text: 'The input (its data and its parents’ results) is known once every parent has finished.' }),
        hasInput && parentResults && Object.keys(parentResults).length
          ? [el('h3', { text: 'Input from parents' }), el('pre', { id: 'node-input', text: jsonText(parentResults) })] : null);
    }

    // ---- actions

    cancelBtn.addEventListener('click', async () => {
      if (!flow || !confirm(`Cancel flow “${flow.name}”? Running jobs are told to stop and pending nodes never run.`)) return;
      cancelBtn.disabled = true;
      const res = await api('POST', `/flows/${encodeURIComponent(id)}/cancel`);
      if (!res.ok) toast(`Cancel failed: ${errorMessage(res)}`, true);
      updateHeader();
    });
    retryBtn.addEventListener('click', async () => {
      if (!flow || !confirm(`Retry flow “${flow.name}”? Its failed, skipped and cancelled nodes run again.`)) return;
      retryBtn.disabled = true;
      const res = await api('POST', `/flows/${encodeURIComponent(id)}/retry`);
      if (!res.ok) toast(`Retry failed: ${errorMessage(res)}`, true);
      updateHeader();
    });
    deleteBtn.addEventListener('click', async () => {
      const label = flow ? flow.name : id;
      if (!confirm(`Delete flow “${label}”? Its record and its jobs are removed for good.`)) return;
      deleteBtn.disabled = true;
      const res = await api('DELETE', `/flows/${encodeURIComponent(id)}`);
      if (res.ok) {
        toast(`Deleted flow “${label}”.`);
        location.hash = '#/';
      } else {
        toast(`Delete failed: ${errorMessage(res)}`, true);
        deleteBtn.disabled = false;
      }
    });

    const live = new Live([id], onMessage);
    return () => {
      alive = false;
      clearTimeout(detailTimer);
      live.close();
      window.removeEventListener('pointermove', onMove);
      window.removeEventListener('pointerup', onUp);
      window.removeEventListener('keydown', onKey);
      window.removeEventListener('resize', refit);
      document.title = 'dagflow';
    };
  }

  // ----------------------------------------------------------------- submit

  function submitView(root) {
    const input = el('textarea', { id: 'spec-input', spellcheck: 'false', 'aria-label': 'flow JSON' });
    input.value = sessionStorage.getItem(DRAFT_KEY) || JSON.stringify(EXAMPLE, null, 2);
    const file = el('input', { id: 'spec-file', type: 'file', accept: '.json,application/json' });
    const submit = el('button', { id: 'submit-flow', class: 'primary', text: 'Submit' });
    const example = el('button', { id: 'load-example', text: 'Example' });
    const problems = el('aside', { id: 'spec-errors', class: 'card problems', 'aria-live': 'polite' },
      el('h2', { text: 'Flow spec' }),
      el('p', { class: 'muted small', text: 'Nodes name their parents (or children); handler defaults to the node name, queue to "default". The server checks the flow and lists every problem here.' }));
    root.append(
      el('div', { class: 'toolbar' }, el('h1', { text: 'Submit a flow' })),
      el('div', { class: 'submit-grid' },
        el('div', { class: 'editor' }, input,
          el('div', { class: 'row' }, el('label', { class: 'small muted' }, 'Upload ', file), example, el('span', { class: 'spacer' }), submit)),
        problems));

    let draftTimer = null;
    input.addEventListener('input', () => {
      input.classList.remove('invalid');
      clearTimeout(draftTimer);
      draftTimer = setTimeout(() => sessionStorage.setItem(DRAFT_KEY, input.value), 300);
    });
    example.addEventListener('click', () => {
      input.value = JSON.stringify(EXAMPLE, null, 2);
      input.classList.remove('invalid');
      sessionStorage.removeItem(DRAFT_KEY);
    });
    file.addEventListener('change', async () => {
      const f = file.files && file.files[0];
      if (!f) return;
      input.value = await f.text();
      input.classList.remove('invalid');
      sessionStorage.setItem(DRAFT_KEY, input.value);
    });

    function showProblems(title, items, note) {
      problems.classList.add('bad');
      fill(problems, el('h2', { id: 'spec-errors-title', text: title }),
        note ? el('p', { class: 'small', text: note }) : null,
        items.length ? el('ul', {}, items) : null);
    }

    function selectLine(line, column) {
      const lines = input.value.split('\n');
      let start = 0;
      for (let l = 1; l < line && l <= lines.length; l++) start += lines[l - 1].length + 1;
      const end = start + (lines[line - 1] || '').length;
      input.focus();
      input.setSelectionRange(Math.min(start + Math.max(0, column - 1), end), end);
    }

    submit.addEventListener('click', async () => {
      submit.disabled = true;
      const res = await api('POST', '/flows', input.value);
      submit.disabled = false;
      if (res.status === 201 && res.body && res.body.flowId) {
        sessionStorage.removeItem(DRAFT_KEY);
        location.hash = `#/flows/${encodeURIComponent(res.body.flowId)}`;
        return;
      }
      input.classList.add('invalid');
      const err = (res.body && res.body.error) || {};
      const details = err.details || {};
      if (res.status === 422 && Array.isArray(details.problems)) {
        showProblems(`Invalid flow: ${details.problems.length} problem${details.problems.length === 1 ? '' : 's'}`,
          details.problems.map((p) => el('li', { class: 'problem' },
            el('code', { text: p.code || 'invalid' }), ' ',
            p.node ? el('b', { text: `${p.node}: ` }) : null,
            p.message || '',
            p.line ? el('span', { class: 'muted', text: ` (line ${p.line}, column ${p.column})` }) : null)));
        if (details.problems[0] && details.problems[0].line) selectLine(details.problems[0].line, details.problems[0].column);
      } else if (res.status === 400 && details.line) {
        showProblems('Not valid JSON', [el('li', { class: 'problem' }, el('code', { text: err.code || 'malformed_json' }), ' ', err.message || '')]);
        selectLine(details.line, details.column);
      } else {
        showProblems(`Refused (HTTP ${res.status})`, [el('li', { class: 'problem' }, el('code', { text: err.code || 'error' }), ' ', errorMessage(res))]);
      }
    });

    return () => clearTimeout(draftTimer);
  }

  // ----------------------------------------------------------------- router

  let teardown = null;

  function route() {
    if (teardown) teardown();
    teardown = null;
    const hash = location.hash.replace(/^#/, '') || '/';
    const q = hash.indexOf('?');
    const path = q < 0 ? hash : hash.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : hash.slice(q + 1));
    const root = $('#view');
    root.replaceChildren();
    const m = path.match(/^\/flows\/([^/]+)$/);
    const current = m ? 'flows' : path === '/submit' ? 'submit' : 'flows';
    document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('current', a.dataset.nav === current));
    if (m) teardown = flowView(root, decodeURIComponent(m[1]));
    else if (path === '/submit') teardown = submitView(root);
    else teardown = listView(root, params);
  }

  initTokenDialog();
  window.addEventListener('hashchange', route);
  route();
})();

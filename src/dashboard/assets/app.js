/*
 * dagflow dashboard: live flow graph, node details, queues, and the router.
 * The flows list (flowlist.js), the submit page (submit.js) and the schedules
 * page (schedules.js) live in files of their own and get this file's helpers.
 *
 * Built only on the public API: REST for lists, actions and node details, one
 * WebSocket per page for live state (the flows list follows "*", a flow page its
 * flow: a snapshot, then one event per change, applied to that node's element
 * alone). Queues have no events: their page asks `GET /queues` every few seconds.
 * Routing is by URL hash, so the server serves a single page.
 */
(function () {
  'use strict';

  const TOKEN_KEY = 'dagflow.token';
  const NODE_STATUSES = ['pending', 'queued', 'active', 'waiting', 'completed', 'failed', 'skipped', 'cancelled'];
  const TERMINAL = new Set(['completed', 'failed', 'skipped', 'cancelled']);
  // How often the queues page asks again.
  const QUEUES_EVERY_MS = 3000;
  // A map element's name: `{map}[{index}]`.
  const ELEMENT = /^(.*)\[(\d+)\]$/;
  // A map group drawn collapsed, and its expanded grid of element chips.
  const MAP_W = 208;
  const MAP_H = 62;
  const CHIP = 14; // a chip and its gap
  const GRID_PAD = 8;
  const MAP_PAGE = 1000; // chips drawn at once; more are paged
  const DENSE_FLUSH_MS = 250; // how often events are applied in the density view (bigflow.js)
  // Farthest zoom: Fit shows a 10,000-node column whole (the density view draws it).
  const MIN_SCALE = 0.001;
  // On a narrow screen, flows of at most this many drawn nodes (a collapsed group is
  // one) are fitted no smaller than 40 px a node: tap targets.
  const NARROW_FLOOR_UNITS = 100;

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
  function fmtClock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  /** How far a time is from now: "in 4m 10s", "2.0 s ago". */
  function fmtIn(ms) {
    const d = ms - Date.now();
    return d >= 0 ? `in ${fmtDuration(d)}` : `${fmtDuration(-d)} ago`;
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

  // page.js: spec, deep links, stale state, why a node waits.
  const P = window.dagflowPage;
  P.init({ api, el, fill, toast, errorMessage, fmtDuration });

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
        // What the page shows may be out of date until the view has resynced.
        if (this.everOpen) P.setStale(true);
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

  // -------------------------------------------------------------- flow page

  /**
   * The flow page. The graph draws the DAG's nodes only: a map node is one group
   * node whose elements (`{map}[{i}]`, listed after the DAG's nodes in a flow view)
   * are kept in that group, counted live from their events, and drawn as a grid
   * of chips inside the group when it is expanded; a 10,000-element map is never
   * laid out as 10,000 nodes.
   */
  function flowView(root, id, nodeInUrl, params) {
    const L = window.DagLayout;
    const fmtElapsed = window.dagflowTimeline.fmtElapsed;
    const W = L.defaults.nodeWidth;
    const H = L.defaults.nodeHeight;
    let flow = null;
    let nodes = [];
    let byName = new Map();
    // Map nodes: DAG index → group (elements, counts, expanded or not).
    let groups = new Map();
    let seq = 0;
    let resyncing = false;
    let selected = -1; // a DAG node's index
    let selK = -1; // with `selected` a map node: the selected element, or -1 for the map itself
    let detailTimer = null;
    let detailAsk = 0;
    let alive = true;
    let layoutSize = { width: 0, height: 0 };
    const counts = {};
    const dirty = new Set();
    const dirtyGroups = new Set();
    const dirtyShapes = new Set();
    // Nodes changed while the density layer drew them: their elements are behind.
    const stale = new Set();
    let framePending = false;
    let relayoutPending = false;
    const view = { k: 1, x: 0, y: 0 };
    // Until the user pans or zooms, the graph stays fitted to its box.
    let autoFit = true;
    let viewFar = false;
    let viewport = null;
    // Same-shape siblings drawn as one group (bigflow.js), and the units laid out:
    // a node, a map group or a collapsed shape group each; unitOf[i] is node i's.
    let shapes = [];
    let shapeOf = new Map();
    let units = [];
    let unitOf = [];
    // The graph's filter: all, failed or running (`?show=` in the URL).
    let show = ['failed', 'running'].includes(params.get('show')) ? params.get('show') : 'all';
    // Per node name: an action's last error, and a signal payload being written.
    const actionErrors = new Map();
    const signalDrafts = new Map();
    // The node the URL names (`#/flows/{id}/nodes/{name}`), selected once the graph is drawn.
    let pendingNode = nodeInUrl || null;
    // The submitted spec, for each node's `opts.attempts` (the retry countdown's "of 5"):
    // asked when a retry is first shown, so an idle flow page makes no REST call.
    let spec = null;
    function needSpec() {
      if (spec) return;
      P.loadSpec(id).then((res) => {
        if (!alive || !res.ok || spec) return;
        spec = res.body;
        if (selected >= 0) scheduleDetail();
      });
    }

    const nameEl = el('h1', { id: 'flow-name', text: 'Flow' });
    const statusEl = el('span', { id: 'flow-status', class: 'badge', text: '…' });
    const search = el('input', { id: 'node-search', type: 'search', placeholder: 'Find node', list: 'node-names', 'aria-label': 'find node' });
    const names = el('datalist', { id: 'node-names' });
    const fitBtn = el('button', { id: 'fit', text: 'Fit', title: 'fit the graph to the view' });
    const showSel = el('select', { id: 'graph-show', 'aria-label': 'show nodes', title: 'dim the other nodes' },
      ['all', 'failed', 'running'].map((s) => el('option', { value: s, text: `show: ${s}`, selected: s === show })));
    const cancelBtn = el('button', { id: 'cancel-flow', text: 'Cancel', disabled: true, 'data-act': true });
    const retryBtn = el('button', { id: 'retry-flow', text: 'Retry', disabled: true, 'data-act': true });
    const deleteBtn = el('button', { id: 'delete-flow', class: 'danger', text: 'Delete', disabled: true, 'data-act': true });
    const specBtn = el('button', { id: 'show-spec', text: 'Spec', title: 'the spec this flow was submitted with', onclick: () => P.showSpec(id) });
    const cloneBtn = el('button', {
      id: 'clone-flow', text: 'Clone and edit', title: 'open the Submit page with this flow’s spec',
      onclick: async () => {
        const res = await P.loadSpec(id);
        if (res.ok) P.cloneAndEdit(res.body);
        else toast(`The spec could not be loaded: ${errorMessage(res)}`, true);
      },
    });
    const meta = el('div', { id: 'flow-meta', class: 'meta' });
    const countsEl = el('div', { id: 'status-counts', class: 'counts', title: 'nodes by status (a map counts as one node)' });
    const flowError = el('div', { id: 'flow-error', class: 'flow-error', hidden: true });
    const graph = el('div', { id: 'graph', class: 'graph' }, el('p', { class: 'muted loading', text: 'Loading…' }));
    const panel = el('aside', { id: 'node-panel', class: 'panel', hidden: true });
    // The Timeline view (timeline.js); the graph is only laid out while it is shown.
    const timeline = window.dagflowTimeline.create({
      el, fmtDuration, nodes: () => nodes, flow: () => flow, groups: () => groups, onSelect: (i) => select(i),
    });
    let graphStale = false;
    const viewBtns = { graph: el('button', { id: 'view-graph', text: 'Graph' }), timeline: el('button', { id: 'view-timeline', text: 'Timeline' }) };
    const chips = {};
    NODE_STATUSES.forEach((s) => {
      chips[s] = el('span', { class: 'chip zero', 'data-status': s }, el('span', { class: 'sw' }), el('span', { class: 'n', text: '0' }), s);
      countsEl.append(chips[s]);
    });
    root.append(
      el('section', { class: 'flow-head' },
        el('div', { class: 'title' },
          el('a', { class: 'crumb', href: '#/', text: 'Flows /' }), nameEl, statusEl,
          el('span', { class: 'spacer' }), el('span', { class: 'view-switch', role: 'group', 'aria-label': 'view' }, viewBtns.graph, viewBtns.timeline),
          search, names, showSel, fitBtn, specBtn, cloneBtn, retryBtn, cancelBtn, deleteBtn),
        meta, countsEl, flowError),
      el('div', { class: 'flow-body' }, graph, timeline.el, panel));

    let shown = 'graph';
    /** The URL of this page with `node` selected (or none), keeping the view. */
    function hereHref(node) {
      return P.flowHref(id, node) + (shown === 'timeline' ? '?view=timeline' : '');
    }

    /** Shows the graph or the timeline; the URL keeps the choice (`?view=timeline`) without a new route. */
    function setView(v, node = selectedName()) {
      shown = v;
      Object.entries(viewBtns).forEach(([k, b]) => b.setAttribute('aria-pressed', String(k === v)));
      graph.hidden = v !== 'graph';
      fitBtn.hidden = v !== 'graph';
      history.replaceState(null, '', hereHref(node));
      if (v === 'timeline') {
        timeline.show();
        timeline.select(selected);
      } else {
        timeline.hide();
        if (graphStale && nodes.length) render(true);
        else refit();
      }
    }
    viewBtns.graph.addEventListener('click', () => setView('graph'));
    viewBtns.timeline.addEventListener('click', () => setView('timeline'));
    setView(params && params.get('view') === 'timeline' ? 'timeline' : 'graph', nodeInUrl);

    // ---- state from the server

    function onMessage(m) {
      if (m.type === 'snapshot' && m.flow && m.flow.id === id) {
        applySnapshot(m.flow);
      } else if (m.type === 'flow:updated' && m.flowId === id) {
        if (!flow || resyncing || m.seq <= seq) return;
        if (m.seq !== seq + 1) {
          // A gap should not happen (the server sends a snapshot after a lag);
          // if it does, start again from a fresh snapshot.
          resync();
          return;
        }
        seq = m.seq;
        applyEvent(m);
      } else if (m.type === 'error' && m.flowId === id) {
        graph.replaceChildren(el('p', { class: 'empty muted', id: 'flow-missing', text: m.message || 'flow not found' }));
        if (graph.hidden) setView('graph');
        statusEl.textContent = 'unknown';
        deleteBtn.disabled = true;
      }
    }

    /** Asks for a fresh snapshot; events are ignored until it comes. */
    function resync() {
      if (resyncing) return;
      resyncing = true;
      live.send({ type: 'subscribe', flowId: id });
    }

    function newGroup(i) {
      return { i, elems: [], counts: {}, expanded: false, page: 0, dirty: new Set(), chipEls: null };
    }

    /** Replaces a group's elements with those of a view (possibly none). */
    function setElements(grp, list) {
      grp.elems = [];
      grp.counts = {};
      list.forEach((v) => {
        const k = v.index !== undefined ? v.index : grp.elems.length;
        grp.elems[k] = Object.assign({}, v);
      });
      for (let k = 0; k < grp.elems.length; k++) {
        if (!grp.elems[k]) grp.elems[k] = { name: `${nodes[grp.i].name}[${k}]`, index: k, status: 'pending', attempt: 0 };
        grp.counts[grp.elems[k].status] = (grp.counts[grp.elems[k].status] || 0) + 1;
      }
      grp.page = Math.min(grp.page, Math.max(0, Math.ceil(grp.elems.length / MAP_PAGE) - 1));
    }

    function splitView(f) {
      const dag = [];
      const elements = new Map();
      f.nodes.forEach((n) => {
        if (n.mapOf === undefined) {
          dag.push(n);
        } else {
          if (!elements.has(n.mapOf)) elements.set(n.mapOf, []);
          elements.get(n.mapOf).push(n);
        }
      });
      return { dag, elements };
    }

    function applySnapshot(f) {
      const { dag, elements } = splitView(f);
      const same = flow && dag.length === nodes.length && dag.every((n, i) => n.name === nodes[i].name);
      flow = f;
      seq = f.seq;
      resyncing = false;
      P.setStale(false);
      if (same) {
        const before = groupSizes();
        dag.forEach((n, i) => {
          // The page's own fields stay; the view's replace the old ones (a field the
          // view leaves out, such as a reason or a deadline, is gone).
          const keep = { i, shown: nodes[i].shown, el: nodes[i].el, sub: nodes[i].sub, title: nodes[i].title };
          nodes[i] = Object.assign(keep, n);
          markDirty(i);
        });
        groups.forEach((grp, i) => {
          setElements(grp, elements.get(nodes[i].name) || []);
          markGroup(grp, true);
        });
        if (groupSizes() !== before) scheduleRelayout();
      } else {
        buildGraph(dag, elements);
        if (pendingNode) showNode(pendingNode);
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
        if (selected >= 0) scheduleDetail();
        return;
      }
      const i = byName.get(m.node);
      if (i === undefined) {
        const em = ELEMENT.exec(m.node);
        const gi = em ? byName.get(em[1]) : undefined;
        const grp = gi === undefined ? undefined : groups.get(gi);
        if (grp) applyElementEvent(grp, Number(em[2]), m);
        // A node this page does not know: start again from the server's view.
        else resync();
        return;
      }
      const n = nodes[i];
      setFromEvent(n, m);
      markDirty(i);
      if (i === selected) scheduleDetail();
      const grp = groups.get(i);
      // A map that (re)starts gets its elements, and one that is reset loses them:
      // the snapshot has them all (with their number), events only the ones that move.
      if (grp && (m.status === 'active' || m.status === 'pending')) resync();
    }

    function setFromEvent(n, m) {
      n.status = m.status;
      n.attempt = m.attempt;
      if (m.status === 'queued') n.queuedAt = m.ts;
      if (m.status === 'active' || m.status === 'waiting') n.startedAt = m.ts;
      if (m.status !== 'waiting' && m.status !== 'queued') n.dueAt = undefined;
      if (TERMINAL.has(m.status)) n.finishedAt = m.ts;
      if (m.status === 'pending' || m.status === 'queued' || m.status === 'waiting') n.finishedAt = undefined;
      if (m.progress !== undefined) n.progress = m.progress;
      if (m.error !== undefined) n.error = m.error;
      // Skipped by a rule or a condition, or cancelled by a concurrency key.
      n.reason = m.status === 'skipped' || m.status === 'cancelled' ? m.reason : undefined;
    }

    function applyElementEvent(grp, k, m) {
      if (k >= grp.elems.length) {
        // Not in the last snapshot (it should be): pending until its events say more.
        for (let j = grp.elems.length; j <= k; j++) {
          grp.elems[j] = { name: `${nodes[grp.i].name}[${j}]`, index: j, status: 'pending', attempt: 0 };
          grp.counts.pending = (grp.counts.pending || 0) + 1;
        }
        if (grp.expanded) scheduleRelayout();
      }
      const e = grp.elems[k];
      grp.counts[e.status] = (grp.counts[e.status] || 1) - 1;
      setFromEvent(e, m);
      grp.counts[e.status] = (grp.counts[e.status] || 0) + 1;
      grp.dirty.add(k);
      markGroup(grp, false);
      // An open map panel follows its counts in updateGroup, without asking again.
      if (selected === grp.i && selK === k) scheduleDetail();
    }

    // ---- rendering: one full build per structure, then per-node updates

    function subLine(n) {
      let s = n.status;
      // Live elapsed time, ticked once a second by tickElapsed.
      if (n.status === 'queued' && n.queuedAt) s += ` ${fmtElapsed(Date.now() - n.queuedAt)}`;
      if (n.attempt > 1) s += ` · try ${n.attempt}`;
      if (n.status === 'active' && typeof n.progress === 'number') s += ` · ${n.progress}%`;
      if (n.status === 'active' && n.startedAt) s += ` · ran ${fmtElapsed(Date.now() - n.startedAt)}`;
      if (n.status === 'waiting' && n.wait) {
        s += n.wait.kind === 'signal' ? ` · signal ${n.wait.signal}` : n.dueAt ? ` · until ${fmtClock(n.dueAt)}` : ' · timer';
      }
      if (n.status === 'skipped' && n.reason) s += /^condition/.test(n.reason) ? ' · condition' : ' · trigger';
      // A key's own cancels say "cancelled: ..."; a flow's cancel or failFast says otherwise.
      if (n.status === 'cancelled' && n.reason && /^cancelled: /.test(n.reason)) s += ' · by its key';
      if (TERMINAL.has(n.status) && n.status !== 'skipped' && n.startedAt && n.finishedAt) s += ` · ${fmtDuration(n.finishedAt - n.startedAt)}`;
      return s;
    }

    function titleOf(n) {
      let t = n.name;
      if (n.map) t += ` (map over ${n.map.from}${n.map.path ? ` ${n.map.path}` : ''}, ${n.handler} on ${n.queue})`;
      else if (n.wait) t += n.wait.kind === 'signal' ? ` (waits for signal “${n.wait.signal}”)` : ' (waits for a timer)';
      else t += ` (${n.handler} on ${n.queue})`;
      t += `\n${n.status}`;
      if ((n.status === 'skipped' || n.status === 'cancelled') && n.reason) t += `: ${n.reason}`;
      if (n.when) t += `\nwhen: ${n.when}`;
      if (n.trigger) t += `\ntrigger: ${n.trigger}`;
      if (n.map) t += '\nclick ▸ (or double-click) to show or hide its elements';
      return t;
    }

    /** Done (completed), running (queued or active) and failed elements, and how many in all. */
    function groupTally(grp) {
      const n = nodes[grp.i];
      const c = grp.counts;
      if (grp.elems.length || !n.map || n.map.total === undefined) {
        return { done: c.completed || 0, running: (c.queued || 0) + (c.active || 0), failed: c.failed || 0, total: grp.elems.length, known: grp.elems.length > 0 || (n.map && n.map.total !== undefined) };
      }
      return { done: n.map.done - n.map.failed, running: n.map.running, failed: n.map.failed, total: n.map.total, known: true };
    }

    function tallyText(t) {
      return `${t.done} done · ${t.running} running · ${t.failed} failed`;
    }

    function groupLine(grp) {
      const n = nodes[grp.i];
      const t = groupTally(grp);
      return t.known ? `of ${t.total} · ${subLine(n)}` : `${subLine(n)} · over ${n.map.from}`;
    }

    /** Columns, rows and pixel size of a map group. */
    function groupGeometry(grp) {
      if (!grp.expanded) return { w: MAP_W, h: MAP_H, cols: 0, rows: 0, pager: false };
      const count = Math.min(grp.elems.length, MAP_PAGE);
      const inner = MAP_W - 2 * GRID_PAD;
      const cols = Math.max(Math.floor(inner / CHIP), Math.min(40, Math.ceil(Math.sqrt(count * 2.5))));
      const rows = Math.max(1, Math.ceil(count / cols));
      const pager = grp.elems.length > MAP_PAGE;
      const w = Math.max(MAP_W, cols * CHIP + 2 * GRID_PAD);
      const h = MAP_H + (pager ? 26 : 0) + (count ? rows * CHIP : 20) + GRID_PAD;
      return { w, h, cols, rows, pager };
    }

    function groupSizes() {
      const parts = [];
      groups.forEach((grp) => {
        const g = groupGeometry(grp);
        parts.push(`${g.w}x${g.h}`);
      });
      return parts.join(',');
    }

    function buildGraph(dag, elements) {
      nodes = dag.map((n, i) => Object.assign({ i, shown: null }, n));
      byName = new Map(nodes.map((n) => [n.name, n.i]));
      groups = new Map();
      nodes.forEach((n) => {
        if (!n.map) return;
        const grp = newGroup(n.i);
        groups.set(n.i, grp);
        setElements(grp, elements.get(n.name) || []);
      });
      shapes = window.DagBig.shapeGroups(nodes).map((g) => ({ members: g.members, expanded: false, counts: {}, u: -1 }));
      shapeOf = new Map();
      shapes.forEach((sg) => sg.members.forEach((i) => shapeOf.set(i, sg)));
      selected = -1;
      selK = -1;
      panel.hidden = true;
      names.replaceChildren(...nodes.map((n) => el('option', { value: n.name })));
      render(true);
    }

    /** Lays the graph out and draws it; `refitView` fits it to the box, else the view stays. */
    function render(refitView) {
      if (graph.hidden) {
        // Laid out when the graph is shown: a 10,000-node flow opened on its timeline never is.
        graphStale = true;
        recount();
        return;
      }
      graphStale = false;
      // The units: every node, except that a collapsed shape group is one unit.
      units = [];
      unitOf = new Array(nodes.length);
      nodes.forEach((n) => {
        const sg = shapeOf.get(n.i);
        if (sg && !sg.expanded) {
          if (sg.members[0] === n.i) {
            sg.u = units.length;
            units.push({ i: n.i, sg });
          }
          unitOf[n.i] = sg.u;
          return;
        }
        unitOf[n.i] = units.length;
        units.push({ i: n.i, sg: null });
      });
      // A group's unit comes at its first member: later members point to it too.
      shapes.forEach((sg) => { if (!sg.expanded) sg.members.forEach((i) => { unitOf[i] = sg.u; }); });
      const edges = [];
      nodes.forEach((n) => n.parents.forEach((p) => {
        const from = byName.get(p);
        if (from !== undefined) edges.push([unitOf[from], unitOf[n.i]]);
      }));
      const geo = new Map();
      const widths = [];
      const heights = [];
      groups.forEach((grp, i) => {
        const g = groupGeometry(grp);
        geo.set(i, g);
        widths[unitOf[i]] = g.w;
        heights[unitOf[i]] = g.h;
      });
      shapes.forEach((sg) => {
        if (sg.expanded) return;
        widths[sg.u] = MAP_W;
        heights[sg.u] = MAP_H;
      });
      const lay = L.layout(units.length, edges, { widths, heights });
      layoutSize = { width: lay.width, height: lay.height };
      tally();
      const parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" id="dag" role="group" aria-label="flow graph: Tab to a node, arrows to move, Enter to open">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">',
        '<path class="arrowhead" d="M0,1L9,5L0,9z"/></marker></defs><g id="viewport"><g class="frames">',
      ];
      // An expanded shape group: a frame around its members (its collapse button is
      // HTML over the graph, so that it is there at any zoom).
      shapes.forEach((sg, gi) => {
        if (!sg.expanded) return;
        let x0 = Infinity;
        let y0 = Infinity;
        let x1 = -Infinity;
        let y1 = -Infinity;
        sg.members.forEach((i) => {
          const u = unitOf[i];
          x0 = Math.min(x0, lay.x[u]);
          y0 = Math.min(y0, lay.y[u]);
          x1 = Math.max(x1, lay.x[u] + W);
          y1 = Math.max(y1, lay.y[u] + H);
        });
        parts.push(`<rect class="shape-frame" data-group="${gi}" x="${x0 - 6}" y="${(y0 - 6).toFixed(1)}" width="${x1 - x0 + 12}" height="${(y1 - y0 + 12).toFixed(1)}" rx="9"/>`);
      });
      parts.push('</g><g class="edges">');
      lay.edges.forEach((e) => parts.push(`<path class="edge" data-f="${e.from}" data-t="${e.to}" d="${e.d}" marker-end="url(#arrow)"/>`));
      parts.push('</g><g class="nodes">');
      units.forEach((unit, u) => {
        const n = nodes[unit.i];
        const at = `data-u="${u}" transform="translate(${lay.x[u]},${lay.y[u].toFixed(1)})"`;
        if (unit.sg) {
          const sg = unit.sg;
          const w = MAP_W - 20;
          parts.push(
            `<g class="node map shape" role="button" data-group="${shapes.indexOf(sg)}" data-size="${sg.members.length}" ${at}>`,
            `<rect class="stack" x="5" y="5" width="${MAP_W}" height="${MAP_H}" rx="7"/>`,
            `<rect class="box" width="${MAP_W}" height="${MAP_H}" rx="7"/>`,
            `<text class="name" x="10" y="17">${esc(truncate(shapeName(sg), 24))}</text>`,
            '<text class="counts" x="10" y="33"></text><text class="sub" x="10" y="48"></text>',
            `<g class="bar" transform="translate(10,${MAP_H - 9})"><rect class="track" width="${w}" height="4" rx="2"/>`,
            '<rect class="done" height="4"/><rect class="running" height="4"/><rect class="failed" height="4"/></g>',
            `<g class="toggle"><rect x="${MAP_W - 28}" y="4" width="22" height="20" rx="5"/><text x="${MAP_W - 17}" y="18.5" text-anchor="middle">▸</text></g>`,
            `<title>${esc(`${sg.members.length} nodes of the same shape: ${n.handler} on ${n.queue}, same parents and children\nclick to show them one by one`)}</title></g>`);
          return;
        }
        const grp = groups.get(n.i);
        if (!grp) {
          parts.push(
            `<g class="node${n.wait ? ' wait' : ''}" data-i="${n.i}" data-name="${esc(n.name)}" data-status="${esc(n.status)}" ${at}>`,
            `<rect class="box" width="${W}" height="${H}" rx="7"/>`,
            `<text class="name" x="10" y="17">${esc(truncate(n.name, 22))}</text>`,
            `<text class="sub" x="10" y="32">${esc(subLine(n))}</text>`,
            `<title>${esc(titleOf(n))}</title></g>`);
          return;
        }
        const g = geo.get(n.i);
        const t = groupTally(grp);
        parts.push(
          `<g class="node map" data-i="${n.i}" data-name="${esc(n.name)}" data-status="${esc(n.status)}" data-expanded="${grp.expanded}" ${at}>`,
          `<rect class="stack" x="5" y="5" width="${g.w}" height="${g.h}" rx="7"/>`,
          `<rect class="box" width="${g.w}" height="${g.h}" rx="7"/>`,
          `<text class="name" x="10" y="17">${esc(truncate(n.name, 24))}</text>`,
          `<text class="counts" x="10" y="33">${esc(tallyText(t))}</text>`,
          `<text class="sub" x="10" y="48">${esc(groupLine(grp))}</text>`,
          `<g class="bar" transform="translate(10,${MAP_H - 9})"><rect class="track" width="${g.w - 20}" height="4" rx="2"/>`,
          '<rect class="done" height="4"/><rect class="running" height="4"/><rect class="failed" height="4"/></g>',
          `<g class="toggle" role="button" aria-label="show or hide the elements"><rect x="${g.w - 28}" y="4" width="22" height="20" rx="5"/>`,
          `<text x="${g.w - 17}" y="18.5" text-anchor="middle">${grp.expanded ? '▾' : '▸'}</text></g>`);
        if (grp.expanded) {
          parts.push(
            `<foreignObject x="0" y="${MAP_H}" width="${g.w}" height="${g.h - MAP_H}">`,
            `<div xmlns="http://www.w3.org/1999/xhtml" class="elements" data-map="${esc(n.name)}">`);
          if (g.pager) {
            parts.push(
              '<div class="el-pager"><button type="button" data-page="-1">‹</button>',
              '<span class="el-range"></span><button type="button" data-page="1">›</button></div>');
          }
          // Its columns are set through the CSSOM: the page's CSP refuses style attributes.
          parts.push('<div class="elgrid"></div></div></foreignObject>');
        }
        parts.push(`<title>${esc(titleOf(n))}</title></g>`);
      });
      parts.push('</g></g></svg>');
      graph.innerHTML = parts.join('');
      // Big graphs skip the running-node animation, which repaints every frame.
      graph.classList.toggle('large', units.length > 300);
      const open = shapes.filter((sg) => sg.expanded);
      if (open.length) {
        graph.append(el('div', { class: 'shape-bar' }, open.map((sg) => el('button', {
          type: 'button', 'data-group': shapes.indexOf(sg), text: `▾ ${shapeName(sg)} · collapse`,
          title: 'draw these same-shape nodes as one group again',
        }))));
      }
      graph.append(el('div', { class: 'hint', text: `drag to pan · wheel to zoom · click a node for details · arrows move between nodes${groups.size ? ' · ▸ shows a map’s elements' : ''}` }));
      const elems = graph.querySelectorAll('g.node');
      stale.clear();
      nodes.forEach((n) => {
        n.el = null;
        n.title = null;
        n.sub = null;
      });
      units.forEach((unit, u) => {
        const e = elems[u];
        if (unit.sg) {
          const sg = unit.sg;
          sg.el = e;
          sg.countsEl = e.querySelector('text.counts');
          sg.sub = e.querySelector('text.sub');
          sg.bar = e.querySelector('g.bar');
          updateShape(sg);
          return;
        }
        const i = unit.i;
        const n = nodes[i];
        n.el = e;
        n.title = e.lastElementChild;
        n.sub = e.querySelector('text.sub');
        const grp = groups.get(i);
        if (grp) {
          grp.countsEl = e.querySelector('text.counts');
          grp.bar = e.querySelector('g.bar');
          grp.grid = grp.expanded ? e.querySelector('.elgrid') : null;
          if (grp.grid) grp.grid.style.gridTemplateColumns = `repeat(${groupGeometry(grp).cols}, ${CHIP - 2}px)`;
          grp.range = grp.expanded ? e.querySelector('.el-range') : null;
          grp.chipEls = null;
          if (grp.grid) fillGrid(grp);
          updateGroup(grp);
        }
      });
      viewport = $('#viewport', graph);
      if (selected >= 0 && nodes[selected] && nodes[selected].el) nodes[selected].el.classList.toggle('selected', selK < 0);
      big.setScene({
        count: units.length, x: lay.x, y: lay.y, width: lay.width, height: lay.height, nodeHeight: H,
        w: units.map((unit, u) => widths[u] || W), h: units.map((unit, u) => heights[u] || H),
        edges: lay.edges.map((e) => [e.from, e.to]), els: elems, edgeEls: graph.querySelectorAll('path.edge'),
      });
      renderCounts();
      if (refitView || autoFit) fit();
      else applyView();
      big.trace(traceBase());
    }

    /** Draws the chips of the group's current page. */
    function fillGrid(grp) {
      const start = grp.page * MAP_PAGE;
      const end = Math.min(grp.elems.length, start + MAP_PAGE);
      const parts = [];
      for (let k = start; k < end; k++) {
        const e = grp.elems[k];
        parts.push(`<span class="el${selected === grp.i && selK === k ? ' selected' : ''}" data-k="${k}" data-status="${esc(e.status)}" title="${esc(e.name)} · ${esc(e.status)}"></span>`);
      }
      if (start >= end) parts.push('<span class="el-none">No elements yet.</span>');
      grp.grid.innerHTML = parts.join('');
      grp.chipEls = grp.grid.children;
      if (grp.range) {
        grp.range.textContent = `${(start + 1).toLocaleString()}–${end.toLocaleString()} of ${grp.elems.length.toLocaleString()}`;
        const [prev, next] = grp.grid.parentNode.querySelectorAll('[data-page]');
        prev.disabled = grp.page === 0;
        next.disabled = end >= grp.elems.length;
      }
      grp.dirty.clear();
    }

    function updateGroup(grp) {
      const n = nodes[grp.i];
      const t = groupTally(grp);
      grp.countsEl.textContent = tallyText(t);
      n.sub.textContent = groupLine(grp);
      setBar(grp.bar, t);
      // For the graph's filter: a group shows when some of its elements match.
      n.el.toggleAttribute('data-failed', t.failed > 0);
      n.el.toggleAttribute('data-running', t.running > 0);
      if (grp.chipEls) {
        const start = grp.page * MAP_PAGE;
        grp.dirty.forEach((k) => {
          const chip = grp.chipEls[k - start];
          const e = grp.elems[k];
          if (!chip || !e || k < start) return;
          chip.setAttribute('data-status', e.status);
          chip.title = `${e.name} · ${e.status}`;
        });
      }
      grp.dirty.clear();
      if (selected === grp.i && selK < 0) {
        const live = $('#map-counts', panel);
        if (live) live.textContent = `${tallyText(t)} of ${t.total}`;
      }
    }

    /** A group's bar: done, running and failed parts of its length. */
    function setBar(bar, t) {
      const [track, done, running, failed] = bar.children;
      const len = Number(track.getAttribute('width'));
      const wOf = (x) => (t.total ? (len * x) / t.total : 0);
      done.setAttribute('width', wOf(t.done).toFixed(1));
      running.setAttribute('x', wOf(t.done).toFixed(1));
      running.setAttribute('width', wOf(t.running).toFixed(1));
      failed.setAttribute('x', wOf(t.done + t.running).toFixed(1));
      failed.setAttribute('width', wOf(t.failed).toFixed(1));
    }

    // ---- shape groups (bigflow.js finds them): counted live from their members

    function shapeName(sg) {
      return `${sg.members.length.toLocaleString()} × ${nodes[sg.members[0]].handler}`;
    }

    /** One status for a group: its members' if they agree, else the one that matters most. */
    function shapeStatus(c, total) {
      for (const s of NODE_STATUSES) if (c[s] === total) return s;
      if (c.failed) return 'failed';
      if (c.pending || c.queued || c.active || c.waiting) return 'active';
      return c.cancelled ? 'cancelled' : 'skipped';
    }

    function updateShape(sg) {
      const c = sg.counts;
      const total = sg.members.length;
      const t = { done: c.completed || 0, running: (c.queued || 0) + (c.active || 0), failed: c.failed || 0, total };
      const first = nodes[sg.members[0]];
      sg.countsEl.textContent = tallyText(t);
      sg.sub.textContent = `of ${total.toLocaleString()} · ${first.queue} · ${truncate(first.name, 12)}…${truncate(nodes[sg.members[total - 1]].name, 12)}`;
      sg.el.setAttribute('data-status', shapeStatus(c, total));
      sg.el.toggleAttribute('data-failed', t.failed > 0);
      sg.el.toggleAttribute('data-running', t.running + (c.waiting || 0) > 0);
      setBar(sg.bar, t);
    }

    /** Expands (or collapses) shape group `gi`, keeping the view where it is. */
    function toggleShape(gi, open) {
      const sg = shapes[gi];
      if (!sg) return;
      sg.expanded = open === undefined ? !sg.expanded : open;
      render(false);
    }

    /** Makes node i drawn on its own: a member of a collapsed shape group expands it. */
    function revealNode(i) {
      const sg = shapeOf.get(i);
      if (sg && !sg.expanded) toggleShape(shapes.indexOf(sg), true);
    }

    /** What the graph's filter keeps: a status, or a group with such members. */
    function statusMatches(status) {
      return show === 'all' || (show === 'failed' ? status === 'failed' : window.DagBig.RUNNING[status] === true);
    }

    function unitMatches(u) {
      const unit = units[u];
      if (show === 'all') return true;
      if (unit.sg) return NODE_STATUSES.some((s) => unit.sg.counts[s] && statusMatches(s));
      const grp = groups.get(unit.i);
      if (grp) return statusMatches(nodes[unit.i].status) || NODE_STATUSES.some((s) => grp.counts[s] && statusMatches(s));
      return statusMatches(nodes[unit.i].status);
    }

    function unitFill(u) {
      const unit = units[u];
      const c = unit.sg ? unit.sg.counts : groups.has(unit.i) && groups.get(unit.i).elems.length ? groups.get(unit.i).counts : null;
      return c ? NODE_STATUSES.filter((s) => c[s]).map((s) => [s, c[s]]) : nodes[unit.i].status;
    }

    /** The unit to trace when nothing is hovered or focused: the selected node's. */
    function traceBase() {
      return selected >= 0 && nodes[selected] && unitOf[selected] !== undefined ? unitOf[selected] : -1;
    }

    function setShow(value) {
      show = value;
      if (show === 'all') delete graph.dataset.show;
      else graph.dataset.show = show;
      // Kept in the URL without a new route (which would draw the page again).
      history.replaceState(null, '', `#/flows/${encodeURIComponent(id)}${show === 'all' ? '' : `?show=${show}`}`);
      big.requestDraw();
    }

    const big = new window.DagBig.Layers(graph, {
      unitFill,
      unitMatches,
      traceBase,
      moveTo: (x, y, zoomIn) => {
        const r = graph.getBoundingClientRect();
        if (zoomIn) view.k = Math.max(view.k, 1);
        view.x = r.width / 2 - x * view.k;
        view.y = r.height / 2 - y * view.k;
        autoFit = false;
        applyView();
      },
      reveal: (u) => revealUnit(u),
      open: (u) => {
        const unit = units[u];
        if (unit.sg) {
          // The group's element is gone once expanded: the focus goes to its first member.
          toggleShape(shapes.indexOf(unit.sg), true);
          big.focusUnit(unitOf[unit.sg.members[0]]);
        } else {
          select(unit.i);
        }
      },
    });
    if (show !== 'all') graph.dataset.show = show;
    showSel.addEventListener('change', () => setShow(showSel.value));

    /** Pans (and zooms in to a readable scale) so that unit u is in the view. */
    function revealUnit(u) {
      const r = graph.getBoundingClientRect();
      const e = units[u] && big.scene ? u : -1;
      if (e < 0) return;
      const s = big.scene;
      if (view.k * H < window.DagBig.DENSE_BELOW * 2) view.k = 1;
      const x0 = view.x + s.x[u] * view.k;
      const y0 = view.y + s.y[u] * view.k;
      const x1 = x0 + s.w[u] * view.k;
      const y1 = y0 + Math.min(s.h[u], 200) * view.k;
      if (x0 < 8 || y0 < 8 || x1 > r.width - 8 || y1 > r.height - 8) {
        view.x = r.width / 2 - (s.x[u] + s.w[u] / 2) * view.k;
        view.y = r.height / 2 - (s.y[u] + Math.min(s.h[u], 200) / 2) * view.k;
      }
      autoFit = false;
      applyView();
    }

    function toggleGroup(i, open) {
      const grp = groups.get(i);
      if (!grp) return;
      grp.expanded = open === undefined ? !grp.expanded : open;
      render(false);
      const btn = $('#map-toggle', panel);
      if (btn && selected === i) btn.textContent = grp.expanded ? 'Hide elements' : 'Show elements';
    }

    function scheduleRelayout() {
      if (relayoutPending) return;
      relayoutPending = true;
      requestAnimationFrame(() => {
        relayoutPending = false;
        if (alive && nodes.length) render(false);
      });
    }

    function markDirty(i) {
      dirty.add(i);
      requestFlush();
    }

    function markGroup(grp, all) {
      if (all) grp.redraw = true;
      dirtyGroups.add(grp);
      requestFlush();
    }

    function requestFlush() {
      if (!framePending) {
        framePending = true;
        // In the density view (nodes too small to read) changes are applied in one
        // frame every DENSE_FLUSH_MS: a big run then repaints 4 times a second, not 60.
        if (big.dense) setTimeout(() => requestAnimationFrame(flush), DENSE_FLUSH_MS);
        else requestAnimationFrame(flush);
      }
    }

    /** Applies the changed nodes once per frame: one attribute and one text per node. */
    function flush() {
      framePending = false;
      if (!alive) return;
      dirty.forEach((i) => {
        const n = nodes[i];
        if (!n) return;
        if (n.shown !== n.status) {
          counts[n.shown] = (counts[n.shown] || 1) - 1;
          counts[n.status] = (counts[n.status] || 0) + 1;
          const sg = shapeOf.get(i);
          if (sg) {
            sg.counts[n.shown] = (sg.counts[n.shown] || 1) - 1;
            sg.counts[n.status] = (sg.counts[n.status] || 0) + 1;
            if (!sg.expanded) dirtyShapes.add(sg);
          }
          n.shown = n.status;
        }
        // A member of a collapsed shape group has no element of its own.
        if (!n.el) return;
        const grp = groups.get(i);
        if (grp) dirtyGroups.add(grp);
        // The density layer paints from the data: the hidden SVG catches up when it is shown.
        if (big.dense) {
          stale.add(i);
          return;
        }
        n.el.setAttribute('data-status', n.status);
        n.sub.textContent = subLine(n);
        n.title.textContent = titleOf(n);
      });
      dirty.clear();
      dirtyGroups.forEach((grp) => {
        if (!grp.countsEl) return;
        if (grp.redraw && grp.grid) fillGrid(grp);
        grp.redraw = false;
        updateGroup(grp);
      });
      dirtyGroups.clear();
      timeline.changed();
      dirtyShapes.forEach((sg) => { if (sg.el && sg.el.isConnected) updateShape(sg); });
      dirtyShapes.clear();
      big.requestDraw();
      renderCounts();
      $('#flow-seq', meta) && ($('#flow-seq', meta).textContent = String(seq));
    }

    /** Status counts without the graph (render counts them while it draws). */
    function recount() {
      tally();
      renderCounts();
    }

    /** Counts the nodes per status, for the flow and for each shape group (what `flush` then keeps up to date). */
    function tally() {
      NODE_STATUSES.forEach((s) => { counts[s] = 0; });
      shapes.forEach((sg) => { sg.counts = {}; });
      nodes.forEach((n) => {
        counts[n.status] = (counts[n.status] || 0) + 1;
        n.shown = n.status;
        const sg = shapeOf.get(n.i);
        if (sg) sg.counts[n.status] = (sg.counts[n.status] || 0) + 1;
      });
    }

    /** Once a second: the elapsed time of queued and running nodes, on the graph and in the panel. */
    function tickElapsed() {
      if (!graph.hidden) {
        nodes.forEach((n, i) => {
          if (!n.sub || (n.status !== 'active' && n.status !== 'queued')) return;
          const grp = groups.get(i);
          n.sub.textContent = grp ? groupLine(grp) : subLine(n);
        });
      }
      panel.querySelectorAll('[data-since]').forEach((e) => {
        e.textContent = `${fmtElapsed(Date.now() - Number(e.dataset.since))} so far`;
      });
    }
    const elapsedTimer = setInterval(tickElapsed, 1000);

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
      const stale = P.isStale();
      cancelBtn.disabled = stale || flow.status !== 'running';
      retryBtn.disabled = stale || !(flow.status === 'failed' || flow.status === 'cancelled');
      deleteBtn.disabled = stale;
      let elements = 0;
      groups.forEach((grp) => { elements += grp.elems.length; });
      const item = (label, value, attrs) => el('span', {}, `${label} `, el('b', Object.assign({ text: value }, attrs || {})));
      fill(meta,
        item('id', flow.id, { class: 'mono' }),
        item('nodes', String(nodes.length)),
        groups.size ? item('map elements', elements.toLocaleString()) : null,
        item('created', fmtTime(flow.createdAt)),
        item('finished', flow.finishedAt ? fmtTime(flow.finishedAt) : '—'),
        item('took', flow.finishedAt ? fmtDuration(flow.finishedAt - flow.createdAt) : '—'),
        item('seq', String(seq), { id: 'flow-seq' }));
      flowError.hidden = !flow.error;
      flowError.textContent = flow.error || '';
      timeline.changed();
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
      // Nodes too small for labels: the density layer draws them (bigflow.js).
      if (!big.setView(view) && stale.size) {
        stale.forEach((i) => dirty.add(i));
        stale.clear();
        requestFlush();
      }
    }

    function fit() {
      const r = graph.getBoundingClientRect();
      if (!layoutSize.width || !r.width) return;
      view.k = Math.max(MIN_SCALE, Math.min(1.25, (r.width - 24) / layoutSize.width, (r.height - 24) / layoutSize.height));
      // On a narrow (touch) screen the nodes of a flow of up to NARROW_FLOOR_UNITS drawn nodes
      // stay at least 40 px tall, tap targets (pan for the rest); a bigger flow is fitted
      // whole, in the density view, so that Fit shows all of it.
      if (window.matchMedia('(max-width: 900px)').matches && units.length <= NARROW_FLOOR_UNITS) view.k = Math.max(view.k, 40 / H);
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
      revealNode(i);
      const n = nodes[i];
      if (!n.el || graph.hidden) return;
      const t = n.el.transform.baseVal.consolidate();
      if (!t) return;
      const box = n.el.querySelector('rect.box');
      const w = Number(box.getAttribute('width')) || W;
      const h = Number(box.getAttribute('height')) || H;
      const r = graph.getBoundingClientRect();
      view.k = Math.max(view.k, 1);
      view.x = r.width / 2 - (t.matrix.e + w / 2) * view.k;
      view.y = r.height / 2 - (t.matrix.f + Math.min(h, 200) / 2) * view.k;
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
      const k = Math.max(MIN_SCALE, Math.min(2.5, view.k * Math.exp(-delta * 0.0015)));
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
      if (dragged || !e.target.closest) return;
      const collapse = e.target.closest('.shape-bar button');
      if (collapse) {
        toggleShape(Number(collapse.dataset.group), false);
        return;
      }
      const g = e.target.closest('g.node');
      if (!g) {
        // In the density view nodes are blocks: a click zooms in there.
        if (big.dense && e.target === big.density) {
          const r = graph.getBoundingClientRect();
          const p = big.toLayout(e.clientX - r.left, e.clientY - r.top);
          big.hooks.moveTo(p.x, p.y, true);
        }
        return;
      }
      if (g.dataset.group !== undefined) {
        toggleShape(Number(g.dataset.group), true);
        return;
      }
      const i = Number(g.dataset.i);
      const chip = e.target.closest('.el[data-k]');
      if (chip) {
        selectElement(i, Number(chip.dataset.k));
        return;
      }
      const pageBtn = e.target.closest('[data-page]');
      if (pageBtn) {
        const grp = groups.get(i);
        grp.page = Math.max(0, Math.min(Math.ceil(grp.elems.length / MAP_PAGE) - 1, grp.page + Number(pageBtn.dataset.page)));
        fillGrid(grp);
        return;
      }
      if (e.target.closest('g.toggle')) {
        toggleGroup(i);
        return;
      }
      if (e.target.closest('foreignObject')) return;
      select(i);
    });
    graph.addEventListener('dblclick', (e) => {
      const g = e.target.closest && e.target.closest('g.node.map');
      if (g && !e.target.closest('foreignObject') && !e.target.closest('g.toggle')) toggleGroup(Number(g.dataset.i));
    });
    fitBtn.addEventListener('click', fit);
    search.addEventListener('change', () => findNode(search.value));
    search.addEventListener('keydown', (e) => { if (e.key === 'Enter') findNode(search.value); });

    /** Selects and centres the map element a name gives (`{map}[{i}]`); false when there is none. */
    function showElement(name) {
      const em = ELEMENT.exec(name);
      const gi = em ? byName.get(em[1]) : undefined;
      const grp = gi === undefined ? undefined : groups.get(gi);
      if (!grp || Number(em[2]) >= grp.elems.length) return false;
      selectElement(gi, Number(em[2]));
      centerOn(gi);
      return true;
    }

    function findNode(text) {
      const q = text.trim().toLowerCase();
      if (!q) return;
      let i = nodes.findIndex((n) => n.name.toLowerCase() === q);
      if (i < 0) {
        // An element by its name, `{map}[{i}]`.
        if (showElement(text.trim())) return;
      }
      if (i < 0) i = nodes.findIndex((n) => n.name.toLowerCase().includes(q));
      if (i < 0) {
        toast(`No node matches “${text}”`, true);
        return;
      }
      select(i);
      centerOn(i);
    }

    window.addEventListener('resize', refit);
    const onKey = (e) => { if (e.key === 'Escape' && selected >= 0 && !$('dialog[open]')) closePanel(); };
    window.addEventListener('keydown', onKey);

    // ---- node details

    function selectedName() {
      if (selected < 0 || !nodes[selected]) return null;
      return selK < 0 ? nodes[selected].name : `${nodes[selected].name}[${selK}]`;
    }

    function unmark() {
      if (selected >= 0 && nodes[selected] && nodes[selected].el) nodes[selected].el.classList.remove('selected');
      graph.querySelectorAll('.el.selected').forEach((c) => c.classList.remove('selected'));
    }

    function select(i) {
      revealNode(i);
      unmark();
      selected = i;
      selK = -1;
      if (nodes[i].el) nodes[i].el.classList.add('selected');
      timeline.select(i);
      big.trace(traceBase());
      openPanel();
      nodeUrl();
    }

    /** The URL names the selected node (a deep link; back closes the panel again). */
    function nodeUrl() {
      const href = hereHref(selectedName());
      if (location.hash !== href) location.hash = href;
    }

    /** Selects the node (or element) the URL names, or closes the panel for none. */
    function showNode(name) {
      if (!nodes.length) {
        pendingNode = name;
        return;
      }
      pendingNode = null;
      if (!name) {
        if (selected >= 0) closePanel();
        return;
      }
      if (name === selectedName()) return;
      const i = byName.get(name);
      if (i !== undefined) {
        select(i);
        centerOn(i);
        return;
      }
      if (showElement(name)) return;
      toast(`This flow has no node “${name}”.`, true);
      location.hash = hereHref(null);
    }

    function selectElement(i, k) {
      const grp = groups.get(i);
      if (!grp || k >= grp.elems.length) return;
      unmark();
      selected = i;
      selK = k;
      if (grp.chipEls) {
        const chip = grp.chipEls[k - grp.page * MAP_PAGE];
        if (chip) chip.classList.add('selected');
      }
      openPanel();
      nodeUrl();
    }

    function openPanel() {
      if (panel.hidden) {
        panel.hidden = false;
        refit();
      }
      fill(panel, el('header', {}, el('h2', { text: selectedName() }), closeButton()), el('p', { class: 'muted', text: 'Loading…' }));
      loadDetail();
    }

    function closeButton() {
      return el('button', { class: 'close', id: 'close-panel', title: 'close', text: '×', onclick: closePanel });
    }

    function closePanel() {
      unmark();
      selected = -1;
      selK = -1;
      panel.hidden = true;
      timeline.select(-1);
      big.trace(-1);
      refit();
      const href = hereHref(null);
      if (location.hash !== href) location.hash = href;
    }

    function scheduleDetail() {
      clearTimeout(detailTimer);
      detailTimer = setTimeout(loadDetail, 150);
    }

    async function loadDetail() {
      if (selected < 0) return;
      const name = selectedName();
      const ask = ++detailAsk;
      const res = await api('GET', `/flows/${encodeURIComponent(id)}/nodes/${encodeURIComponent(name)}`);
      if (!alive || ask !== detailAsk || selectedName() !== name) return;
      if (!res.ok) {
        fill(panel, el('header', {}, el('h2', { text: name }), closeButton()),
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

    function waitText(w) {
      if (w.kind !== 'signal') return 'a timer';
      return `signal “${w.signal}”${w.timeoutMs ? `, for at most ${fmtDuration(w.timeoutMs)}` : ', no timeout'}`;
    }

    function canRerun(v) {
      if (!flow || v.mapOf !== undefined) return false;
      return flow.status !== 'running' || TERMINAL.has(v.status);
    }

    /** A concurrency key or a rate limit: its key (and value), its limit. */
    function limitText(l, elId) {
      const limit = l.perMs !== undefined
        ? `${l.limit} per ${fmtDuration(l.perMs)}`
        : `${l.limit} at once${l.strategy && l.strategy !== 'queue' ? `, ${l.strategy}` : ''}`;
      return el('span', { id: elId }, el('code', { text: l.key }),
        l.value !== undefined ? [' = ', el('code', { text: JSON.stringify(l.value) })] : null,
        ` · ${limit}`);
    }

    /**
     * Where a queued job stands in its queue: a paragraph filled once
     * `GET /queues/{queue}` answers (jobs ready ahead of it, the workers serving
     * the queue, the key holding it back), or nothing for a node that waits for no worker.
     */
    function queueHint(v) {
      if (v.status !== 'queued' || v.wait || v.map) return null;
      const hint = el('p', { id: 'node-queue-hint', class: 'queue-hint muted small', text: `Looking at queue ${v.queue}…` });
      const ask = detailAsk;
      api('GET', `/queues/${encodeURIComponent(v.queue)}`).then((res) => {
        if (!alive || ask !== detailAsk || !hint.isConnected) return;
        if (res.status === 404) {
          // Nothing in Redis yet (the job is being put on its lane) and no worker.
          fill(hint, 'Nothing is known yet about queue ', el('code', { text: v.queue }), ': ',
            el('a', { id: 'node-queue-link', href: queueHref(v.queue), text: '0 workers serving it' }), '.');
          hint.classList.add('warn');
          return;
        }
        if (!res.ok) {
          hint.textContent = `Queue ${v.queue}: ${errorMessage(res)}`;
          return;
        }
        fill(hint, queueHintParts(v, res.body));
        hint.classList.toggle('warn', res.body.workers.length === 0);
        hint.classList.remove('muted');
      });
      return [el('h3', { text: 'In its queue' }), hint];
    }

    function queueHintParts(v, q) {
      const a = jobsAhead(v, q);
      const workers = q.workers.length;
      const parts = [
        `${a.about ? 'about ' : ''}${a.n} job${a.n === 1 ? '' : 's'} ready ahead in `, el('code', { text: q.name }),
        ` (priority ≥ ${v.priority}), `,
        el('a', { id: 'node-queue-link', href: queueHref(q.name) },
          `${workers} worker${workers === 1 ? '' : 's'} serving `, el('code', { text: q.name })),
        workers ? ` (${q.totalConcurrency} at once)` : '', '.',
      ];
      for (const [limit, kind] of [[v.concurrency, 'concurrency'], [v.rateLimit, 'rateLimit']]) {
        if (!limit || limit.value === undefined) continue;
        const held = q.heldBack.find((h) => h.kind === kind && h.key === limit.value);
        if (!held) continue;
        parts.push(el('br'), el('span', { class: 'held-by', 'data-kind': kind }, P.holdText(kind, limit, held, fmtIn)));
      }
      return parts;
    }

    /**
     * Ready jobs a worker takes before this one: every job of a higher priority,
     * and of its own priority the started flows' jobs when it is a new flow's first
     * job. Jobs in its own lane may be older or newer: counted, the figure is "about".
     */
    function jobsAhead(v, q) {
      const fresh = v.parents.length === 0 && v.attempt <= 1 && v.mapOf === undefined;
      let n = 0;
      let own = 0;
      q.ready.byPriority.forEach((p) => {
        if (p.priority > v.priority) n += p.started + p.new;
        else if (p.priority === v.priority) {
          if (fresh) n += p.started;
          own = fresh ? p.new : p.started;
        }
      });
      // The job itself is in its lane unless a retry waits for its backoff.
      const inLane = !(v.dueAt && v.dueAt > Date.now());
      const others = Math.max(0, own - (inLane ? 1 : 0));
      return { n: n + others, about: others > 0 };
    }

    function renderDetail(v) {
      const kv = (pairs) => el('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, val]) => [el('dt', { text: k }), el('dd', {}, val)]));
      const hasInput = v.input !== undefined && v.input !== null;
      const data = hasInput && typeof v.input === 'object' && 'data' in v.input ? v.input.data : undefined;
      const parentResults = hasInput && typeof v.input === 'object' ? v.input.parents : undefined;
      const item = hasInput && typeof v.input === 'object' && 'item' in v.input ? v.input.item : undefined;
      const waitMs = v.startedAt && v.queuedAt ? v.startedAt - v.queuedAt : null;
      const runMs = v.finishedAt && v.startedAt ? v.finishedAt - v.startedAt : null;
      const isElement = v.mapOf !== undefined;
      const grp = groups.get(byName.get(isElement ? v.mapOf : v.name));
      const isWaiting = v.status === 'waiting';
      fill(panel,
        el('header', {}, el('h2', { id: 'node-detail-name', text: v.name }), el('span', { class: 'badge', 'data-status': v.status, id: 'node-detail-status', text: v.status }), closeButton()),
        kv([
          ['attempt', el('span', { id: 'node-attempt', text: String(v.attempt) })],
          isElement ? ['element of', el('span', { class: 'links' }, el('a', {
            href: '#', id: 'node-map-link', text: v.mapOf,
            onclick: (e) => {
              e.preventDefault();
              const j = byName.get(v.mapOf);
              if (j !== undefined) { select(j); centerOn(j); }
            },
          }), ` index ${v.index}`)] : null,
          v.wait ? ['kind', el('span', { text: v.wait.kind === 'signal' ? 'wait for a signal' : 'wait for a timer' })] : null,
          v.map ? ['kind', el('span', {}, 'map over ', el('code', { text: v.map.from }), ' ', el('code', { text: v.map.path || '(whole result)' }))] : null,
          v.wait ? null : ['handler', el('code', { text: v.handler })],
          v.wait ? null : ['queue', el('span', {}, el('a', { id: 'node-queue', href: queueHref(v.queue) }, el('code', { text: v.queue })))],
          v.wait ? null : ['priority', el('span', { id: 'node-priority', text: String(v.priority) })],
          v.concurrency ? ['concurrency', limitText(v.concurrency, 'node-concurrency')] : null,
          v.rateLimit ? ['rate limit', limitText(v.rateLimit, 'node-rate-limit')] : null,
          v.jobId ? ['job id', el('code', { text: v.jobId })] : null,
          isElement ? null : ['parents', nodeLinks(v.parents)],
          isElement ? null : ['children', nodeLinks(v.children)],
          v.trigger ? ['trigger', el('code', { id: 'node-trigger', text: v.trigger })] : null,
          v.when ? ['when', el('code', { id: 'node-when', text: v.when })] : null,
        ]),
        (v.status === 'skipped' || v.status === 'cancelled') && v.reason
          ? [el('h3', { text: v.status === 'skipped' ? 'Why skipped' : 'Why cancelled' }), el('p', { id: 'node-reason', class: 'reason', text: v.reason })] : null,
        v.status === 'queued' && v.dueAt && !v.wait && !spec ? needSpec() : null,
        P.retryCountdown(v, P.attemptsOf(spec, isElement ? v.mapOf : v.name)),
        queueHint(v),
        v.wait ? [el('h3', { text: 'Waits for' }), kv([
          ['what', el('span', { id: 'node-wait', text: waitText(v.wait) })],
          isWaiting ? ['deadline', el('span', { id: 'node-due', text: v.dueAt ? `${fmtTime(v.dueAt)} (${fmtIn(v.dueAt)})` : 'none' })] : null,
        ])] : null,
        v.map && grp ? [el('h3', { text: 'Elements' }), el('p', { class: 'row' },
          el('span', { id: 'map-counts', text: `${tallyText(groupTally(grp))} of ${groupTally(grp).total}` }),
          el('button', { id: 'map-toggle', text: grp.expanded ? 'Hide elements' : 'Show elements', onclick: () => toggleGroup(byName.get(v.name)) }))] : null,
        actionsPart(v),
        el('h3', { text: 'Timings' }),
        kv([
          ['queued', fmtTime(v.queuedAt)],
          ['started', fmtTime(v.startedAt)],
          ['finished', fmtTime(v.finishedAt)],
          v.wait ? null : ['waited', v.status === 'queued' && v.queuedAt
            ? el('span', { id: 'node-waited', 'data-since': v.queuedAt, text: `${fmtElapsed(Date.now() - v.queuedAt)} so far` })
            : el('span', { id: 'node-waited', text: fmtDuration(waitMs) })],
          ['ran', v.status === 'active' && v.startedAt
            ? el('span', { id: 'node-ran', 'data-since': v.startedAt, text: `${fmtElapsed(Date.now() - v.startedAt)} so far` })
            : el('span', { id: 'node-ran', text: fmtDuration(runMs) })],
          v.dueAt && !isWaiting ? ['retry due', fmtTime(v.dueAt)] : null,
        ]),
        v.progress !== undefined ? [el('h3', { text: 'Progress' }), el('pre', { id: 'node-progress', text: jsonText(v.progress) })] : null,
        v.error ? [el('h3', { text: 'Error' }), el('pre', { class: 'error', id: 'node-error', text: v.error })] : null,
        attemptsPart(v),
        item !== undefined ? [el('h3', { text: 'Item' }), el('pre', { id: 'node-item', text: jsonText(item) })] : null,
        v.result !== undefined ? [el('h3', { text: v.wait ? 'Result (the signal’s payload)' : 'Result' }), el('pre', { id: 'node-result', text: jsonText(v.result) })] : null,
        v.map ? el('p', { class: 'muted small', text: 'Each element gets the map’s data and its parents’ results, with its item and index: click an element for its input and result.' }) : null,
        v.wait || v.map ? null : [el('h3', { text: 'Data' }),
          hasInput ? el('pre', { id: 'node-data', text: jsonText(data === undefined ? null : data) })
            : el('p', { class: 'muted small', text: 'The input (its data and its parents’ results) is known once every parent has finished.' })],
        hasInput && parentResults && Object.keys(parentResults).length
          ? [el('h3', { text: 'Input from parents' }), el('pre', { id: 'node-input', text: jsonText(parentResults) })] : null);
    }

    /**
     * Every attempt the server kept (the last 20), oldest first: when it was
     * queued, started and ended, the worker that ran it, how it ended and its
     * error, so that a retry does not hide why an earlier attempt failed.
     */
    /** The node status whose badge colour an attempt outcome borrows. */
    const ATTEMPT_BADGE = { running: 'active', stalled: 'failed', timedOut: 'failed' };

    function attemptsPart(v) {
      const list = v.attempts || [];
      if (!list.length) return null;
      const rows = list.map((a) => el('tr', { class: 'attempt', 'data-attempt': String(a.attempt) },
        el('td', { text: String(a.attempt) }),
        el('td', {}, el('span', { class: 'badge attempt-outcome', 'data-status': ATTEMPT_BADGE[a.outcome] || a.outcome, text: a.outcome })),
        el('td', { class: 'small', text: fmtTime(a.queuedAt) }),
        el('td', { class: 'small', text: fmtTime(a.startedAt) }),
        el('td', { class: 'small', text: a.startedAt && a.finishedAt ? fmtDuration(a.finishedAt - a.startedAt) : '—' }),
        el('td', {}, a.worker ? el('code', { class: 'attempt-worker', text: a.worker }) : el('span', { class: 'muted', text: '—' })),
        el('td', {}, a.error ? el('pre', { class: 'error attempt-error', text: a.error }) : null)));
      return [
        el('h3', { text: `Attempts (${list.length})` }),
        el('table', { id: 'node-attempts', class: 'attempts' },
          el('thead', {}, el('tr', {}, ['#', 'outcome', 'queued', 'started', 'ran', 'worker', 'error'].map((h) => el('th', { text: h })))),
          el('tbody', {}, rows)),
        list.length >= 20 ? el('p', { class: 'muted small', text: 'Only the last 20 attempts are kept.' }) : null,
      ];
    }

    // ---- node actions: signal a waiting node, re-run from a node

    function actionsPart(v) {
      const canSignal = v.wait && v.wait.kind === 'signal' && v.status === 'waiting' && flow && flow.status === 'running';
      const rerun = canRerun(v);
      const retryNode = rerun && v.status === 'failed';
      const error = actionErrors.get(v.name);
      const stale = P.isStale();
      if (!canSignal && !rerun && !error) return null;
      const errorEl = el('pre', { class: 'error', id: 'action-error', hidden: !error, text: error || '' });
      const showError = (text) => {
        if (text) actionErrors.set(v.name, text);
        else actionErrors.delete(v.name);
        errorEl.textContent = text || '';
        errorEl.hidden = !text;
      };
      const parts = [el('h3', { text: 'Actions' })];
      if (canSignal) {
        const payload = el('textarea', {
          id: 'signal-payload', class: 'payload', rows: '3', spellcheck: 'false', 'aria-label': 'signal payload (JSON)',
          placeholder: '{"approved": true}',
        });
        payload.value = signalDrafts.has(v.name) ? signalDrafts.get(v.name) : '{}';
        payload.addEventListener('input', () => {
          signalDrafts.set(v.name, payload.value);
          payload.classList.remove('invalid');
        });
        const send = el('button', { id: 'signal-send', class: 'primary', text: 'Signal', 'data-act': true, disabled: stale });
        send.addEventListener('click', async () => {
          let body;
          try {
            body = JSON.stringify(JSON.parse(payload.value));
          } catch (e) {
            payload.classList.add('invalid');
            showError(`The payload is not valid JSON: ${e.message}`);
            return;
          }
          send.disabled = true;
          const res = await api('POST', `/flows/${encodeURIComponent(id)}/nodes/${encodeURIComponent(v.name)}/signal`, body);
          if (!alive) return;
          send.disabled = false;
          if (!res.ok) {
            showError(`Signal refused (HTTP ${res.status}): ${errorMessage(res)}`);
            return;
          }
          showError(null);
          signalDrafts.delete(v.name);
          toast(`Signal delivered to “${v.name}”.`);
          if (res.body && res.body.name === selectedName()) renderDetail(res.body);
        });
        parts.push(el('label', { class: 'small muted', for: 'signal-payload', text: `Payload of signal “${v.wait.signal}” (JSON; it becomes the node’s result)` }),
          payload, el('div', { class: 'row' }, send));
      }
      if (retryNode) {
        const btn = el('button', { id: 'retry-node', class: 'primary', text: 'Retry this node', title: 'run this failed node again (its skipped children follow)', 'data-act': true, disabled: stale });
        btn.addEventListener('click', async () => {
          if (!confirm(`Retry “${v.name}”? It runs again with fresh attempts; the nodes it held back follow.`)) return;
          btn.disabled = true;
          const res = await api('POST', `/flows/${encodeURIComponent(id)}/nodes/${encodeURIComponent(v.name)}/rerun`);
          if (!alive) return;
          btn.disabled = P.isStale();
          if (!res.ok) {
            showError(`Retry refused (HTTP ${res.status}): ${errorMessage(res)}`);
            return;
          }
          showError(null);
          toast(`Retrying “${v.name}”.`);
        });
        parts.push(el('div', { class: 'row' }, btn));
      }
      if (rerun) {
        const btn = el('button', { id: 'rerun-node', text: 'Re-run from here', title: 'run this node and everything downstream of it again', 'data-act': true, disabled: stale });
        btn.addEventListener('click', async () => {
          if (!confirm(`Re-run “${v.name}” and every node downstream of it? The other nodes keep their results.`)) return;
          btn.disabled = true;
          const res = await api('POST', `/flows/${encodeURIComponent(id)}/nodes/${encodeURIComponent(v.name)}/rerun`);
          if (!alive) return;
          btn.disabled = false;
          if (!res.ok) {
            showError(`Re-run refused (HTTP ${res.status}): ${errorMessage(res)}`);
            return;
          }
          showError(null);
          toast(`Re-running from “${v.name}”.`);
        });
        parts.push(el('div', { class: 'row' }, btn));
      }
      parts.push(errorEl);
      return el('section', { id: 'node-actions', class: 'actions' }, parts);
    }

    // ---- actions on the flow

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
    const teardownFlow = () => {
      alive = false;
      clearTimeout(detailTimer);
      clearInterval(elapsedTimer);
      timeline.destroy();
      live.close();
      window.removeEventListener('pointermove', onMove);
      window.removeEventListener('pointerup', onUp);
      window.removeEventListener('keydown', onKey);
      window.removeEventListener('resize', refit);
      document.title = 'dagflow';
    };
    // The router keeps this page when only the selected node in the URL changes.
    teardownFlow.flowId = id;
    teardownFlow.showNode = showNode;
    return teardownFlow;
  }

  // ----------------------------------------------------------------- queues

  function queueHref(name) {
    return `#/queues/${encodeURIComponent(name)}`;
  }

  /**
   * The queues page: every queue (`GET /queues`), or one (`#/queues/{name}`,
   * `GET /queues/{name}`), asked again every few seconds while the page is open.
   */
  function queuesView(root, only) {
    let alive = true;
    let timer = null;
    const list = el('div', { id: 'queues', class: 'queues' }, el('p', { class: 'muted loading', text: 'Loading…' }));
    const updated = el('span', { id: 'queues-updated', class: 'muted small' });
    root.append(
      el('div', { class: 'toolbar' },
        only ? el('a', { class: 'crumb', href: '#/queues', text: 'Queues /' }) : null,
        el('h1', { text: only || 'Queues' }), el('span', { class: 'spacer' }), updated),
      list);
    document.title = `${only ? `${only} · ` : ''}queues · dagflow`;

    async function load() {
      timer = null;
      const res = await api('GET', only ? `/queues/${encodeURIComponent(only)}` : '/queues');
      if (!alive) return;
      if (res.ok) {
        const queues = only ? [res.body] : res.body.queues;
        fill(list, queues.length ? queues.map(queueCard)
          : el('p', { id: 'queues-empty', class: 'empty muted', text: 'No queues yet: a queue appears once a worker serves it or a job is put on it.' }));
        updated.textContent = `updated ${fmtClock(Date.now())}`;
      } else {
        fill(list, el('p', { id: 'queues-error', class: 'empty muted', text: res.status === 404 ? `Nothing is known about queue “${only}”: no job has been put on it and no worker serves it.` : `Asking for the queues failed: ${errorMessage(res)}` }));
      }
      timer = setTimeout(load, QUEUES_EVERY_MS);
    }

    load();
    return () => {
      alive = false;
      clearTimeout(timer);
      document.title = 'dagflow';
    };
  }

  function plural(n, word) {
    return `${n.toLocaleString()} ${word}${n === 1 ? '' : 's'}`;
  }

  function queueCard(q) {
    const figure = (label, value, id) => el('span', { class: 'figure' }, el('b', { 'data-figure': id, text: value.toLocaleString() }), ` ${label}`);
    const workers = q.workers.length;
    const lanes = el('table', { class: 'lanes' },
      el('thead', {}, el('tr', {}, el('th', { text: 'priority' }), q.ready.byPriority.map((p) => el('th', { text: String(p.priority) })))),
      el('tbody', {}, [['started', 'started flows: their next jobs'], ['new', 'new flows: their first jobs']].map(([lane, title]) =>
        el('tr', {}, el('th', { title, text: lane }), q.ready.byPriority.map((p) =>
          el('td', { class: p[lane] ? '' : 'zero', 'data-priority': p.priority, 'data-lane': lane, text: p[lane].toLocaleString() }))))));
    const held = q.heldBack.length
      ? el('table', { class: 'held' },
        el('thead', {}, el('tr', {}, ['kind', 'key', 'waiting', 'running', 'next token'].map((h) => el('th', { text: h })))),
        el('tbody', {}, q.heldBack.map((h) => el('tr', { 'data-kind': h.kind, 'data-key': h.key },
          el('td', { text: { concurrency: 'concurrency key', rateLimit: 'rate limit', flowConcurrency: 'flow concurrency key' }[h.kind] || h.kind }),
          el('td', {}, el('code', { text: h.key })),
          el('td', { text: h.waiting.toLocaleString() }),
          el('td', { text: h.running === undefined ? '—' : h.running.toLocaleString() }),
          el('td', { text: h.nextTokenAt ? fmtIn(h.nextTokenAt) : '—' })))))
      : null;
    const more = q.heldBackKeys - q.heldBack.length;
    return el('section', { class: 'card queue', 'data-queue': q.name },
      el('header', {},
        el('h2', {}, el('a', { href: queueHref(q.name), text: q.name })),
        el('span', { class: 'figures' },
          figure('ready', q.ready.total, 'ready'), figure('running', q.running, 'running'),
          figure('delayed', q.delayed, 'delayed'), figure('held back', q.heldBackJobs, 'held'),
          el('span', { class: `figure${workers ? '' : ' warn'}`, 'data-figure': 'workers' },
            el('b', { text: String(workers) }), ` worker${workers === 1 ? '' : 's'}`,
            workers ? ` · ${plural(q.totalConcurrency, 'slot')}` : ''))),
      !workers && q.ready.total ? el('p', { class: 'queue-warn small', text: `No live worker serves ${q.name}: its ${plural(q.ready.total, 'ready job')} wait until one starts.` }) : null,
      el('h3', { text: 'Ready, by priority (served from the left)' }), lanes,
      held ? [el('h3', { text: `Held back by limits${more > 0 ? ` (top ${q.heldBack.length} of ${q.heldBackKeys} keys)` : ''}` }), held] : null,
      workers ? [el('h3', { text: 'Workers' }), el('ul', { class: 'workers' }, q.workers.map((w) => el('li', { 'data-worker': w.id },
        el('code', { text: w.id }),
        w.concurrency !== undefined ? ` · ${plural(w.concurrency, 'slot')}` : '',
        ` · seen ${fmtIn(w.lastSeenMs)}`,
        w.handlers.length ? el('span', { class: 'muted' }, ` · ${w.handlers.join(', ')}`) : null)))] : null);
  }

  // ----------------------------------------------------------------- router

  let teardown = null;

  function route() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const q = hash.indexOf('?');
    const path = q < 0 ? hash : hash.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : hash.slice(q + 1));
    const m = P.parseFlowPath(path);
    // The same flow with another node (or none) selected: the page stays, the panel follows.
    if (m && teardown && teardown.flowId === m.id) {
      teardown.showNode(m.node);
      return;
    }
    // A page that takes its state from the query (the flows list) follows a new
    // query without being built again.
    if (teardown && teardown.update && teardown.path === path) {
      teardown.update(params);
      return;
    }
    if (teardown) teardown();
    teardown = null;
    P.setStale(false);
    const root = $('#view');
    root.replaceChildren();
    const qm = path.match(/^\/queues(?:\/([^/]+))?$/);
    const schedules = path === '/schedules' && window.dagflowPages && window.dagflowPages.schedules;
    const current = m ? 'flows' : path === '/submit' ? 'submit' : qm ? 'queues' : schedules ? 'schedules' : 'flows';
    document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('current', a.dataset.nav === current));
    if (m) teardown = flowView(root, m.id, m.node, params);
    else if (path === '/submit') teardown = window.dagflowPages.submit(root, { api, el, fill, errorMessage });
    else if (qm) teardown = queuesView(root, qm[1] ? decodeURIComponent(qm[1]) : null);
    // schedules.js: a page in its own file, given these helpers.
    else if (schedules) teardown = schedules(root, { api, el, fill, toast, fmtTime, fmtClock, fmtIn, errorMessage });
    else {
      teardown = window.dagflowPages.flows(root, params, { api, el, fill, toast, fmtTime, fmtDuration, errorMessage, Live });
      teardown.path = path;
    }
  }

  initTokenDialog();
  window.addEventListener('hashchange', route);
  route();
})();

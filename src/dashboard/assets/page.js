/*
 * dagflow dashboard: the flow page's helpers that are not the graph.
 *
 * - Why a node waits: a retry's ticking countdown ("retry 2 of 5 in 8 s") and the
 *   key or rate limit holding a queued job back ("held by key tenant-a: 2 of 2 running").
 * - The flow's spec (`GET /flows/{id}/spec`): shown as formatted JSON in a dialog
 *   with a copy button, and "Clone and edit", which opens the Submit page with it
 *   (through the Submit page's draft in sessionStorage).
 * - Deep links: `#/flows/{id}/nodes/{name}` selects a node; parsed and built here.
 * - Stale data: while the WebSocket is down the page says its data may be stale
 *   and every action button (marked `data-act`) is disabled, until the view has
 *   reconnected and taken a fresh snapshot (the view calls `setStale(false)`).
 *
 * app.js calls `init` once with its helpers (`api`, `el`, `fill`, `toast`,
 * `errorMessage`, `fmtDuration`) and uses `window.dagflowPage`.
 */
(function () {
  'use strict';

  // The Submit page's draft (app.js DRAFT_KEY): "Clone and edit" writes it.
  const DRAFT_KEY = 'dagflow.draft';
  // How often a countdown ticks.
  const TICK_MS = 250;

  let h = null;
  let stale = false;
  const specs = new Map();

  function init(helpers) {
    h = helpers;
  }

  // ------------------------------------------------------------ deep links

  /** The URL of a flow page, or of one of its nodes selected. */
  function flowHref(id, node) {
    return `#/flows/${encodeURIComponent(id)}${node ? `/nodes/${encodeURIComponent(node)}` : ''}`;
  }

  /** `{id, node}` from a route path (`/flows/{id}` or `/flows/{id}/nodes/{name}`), or null. */
  function parseFlowPath(path) {
    const m = path.match(/^\/flows\/([^/]+)(?:\/nodes\/([^/]+))?$/);
    if (!m) return null;
    try {
      return { id: decodeURIComponent(m[1]), node: m[2] ? decodeURIComponent(m[2]) : null };
    } catch (e) {
      // A malformed escape: the flow page says the flow is unknown.
      return { id: m[1], node: null };
    }
  }

  // ------------------------------------------------------------ stale data

  /**
   * Marks the page's data stale (the WebSocket dropped) or fresh again (the view
   * has resynced). Stale disables every `[data-act]` control; fresh leaves them
   * to the view, which sets them from the state it just received.
   */
  function setStale(on) {
    stale = !!on;
    document.body.classList.toggle('stale', stale);
    const banner = document.getElementById('stale-banner');
    if (banner) banner.hidden = !stale;
    if (stale) document.querySelectorAll('[data-act]').forEach((b) => { b.disabled = true; });
  }

  function isStale() {
    return stale;
  }

  // ---------------------------------------------------------- why it waits

  /**
   * A queued node whose retry waits for its backoff: "Retry 2 of 5 in 8 s",
   * counting down every quarter second while the element is in the page.
   * `maxAttempts` comes from the spec (unknown until it has loaded: then no "of").
   */
  function retryCountdown(v, maxAttempts) {
    if (v.status !== 'queued' || !v.dueAt || v.attempt < 2 || v.wait) return null;
    const p = h.el('p', { id: 'node-retry', class: 'retry-countdown' });
    const of = maxAttempts && v.attempt <= maxAttempts ? ` of ${maxAttempts}` : '';
    const tick = () => {
      const left = v.dueAt - Date.now();
      p.textContent = left > 0
        ? `Retry ${v.attempt}${of} in ${Math.ceil(left / 1000)} s`
        : `Retry ${v.attempt}${of} due now: waiting for a worker`;
      p.dataset.left = String(Math.max(0, Math.ceil(left / 1000)));
      return left > 0;
    };
    tick();
    const timer = setInterval(() => {
      // A panel drawn again replaces the element: its timer stops with it.
      if (!p.isConnected || !tick()) clearInterval(timer);
    }, TICK_MS);
    return p;
  }

  /**
   * What holds a queued job back, from `GET /queues/{queue}`'s `heldBack`: its
   * concurrency key ("Held by key tenant-a: 2 of 2 running, 3 waiting") or its
   * rate limit ("Held by rate limit api: 4 waiting, next token in 2.0 s").
   */
  function holdText(kind, limit, held, fmtIn) {
    const waiting = `${held.waiting} waiting`;
    if (kind === 'concurrency') {
      return `Held by key ${held.key}: ${held.running === undefined ? '?' : held.running} of ${limit.limit} running, ${waiting}.`;
    }
    return `Held by rate limit ${held.key} (${limit.limit} per ${h.fmtDuration(limit.perMs)}): ${waiting}${held.nextTokenAt ? `, next token ${fmtIn(held.nextTokenAt)}` : ''}.`;
  }

  // ------------------------------------------------------------------ spec

  /** The flow's spec, asked once per flow id (a spec never changes). */
  function loadSpec(id) {
    if (!specs.has(id)) {
      const ask = h.api('GET', `/flows/${encodeURIComponent(id)}/spec`).then((res) => {
        if (!res.ok) specs.delete(id);
        return res;
      });
      specs.set(id, ask);
    }
    return specs.get(id);
  }

  /** `opts.attempts` of a node in a spec (1 when left out), or null. */
  function attemptsOf(spec, name) {
    const node = spec && Array.isArray(spec.nodes) ? spec.nodes.find((n) => n.name === name) : null;
    if (!node) return null;
    return (node.opts && node.opts.attempts) || 1;
  }

  /** Opens the Submit page with the spec as its draft. */
  function cloneAndEdit(spec) {
    sessionStorage.setItem(DRAFT_KEY, JSON.stringify(spec, null, 2));
    location.hash = '#/submit';
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (e) {
      return false;
    }
  }

  /** The spec dialog: the submitted spec as formatted JSON, read-only, with Copy and Clone and edit. */
  async function showSpec(id) {
    const old = document.getElementById('spec-dialog');
    if (old) old.remove();
    const body = h.el('pre', { id: 'spec-json', class: 'spec-json', text: 'Loading…' });
    const copy = h.el('button', { id: 'spec-copy', text: 'Copy', disabled: true });
    const clone = h.el('button', { id: 'spec-clone', class: 'primary', text: 'Clone and edit', disabled: true });
    const close = h.el('button', { id: 'spec-close', text: 'Close' });
    const dialog = h.el('dialog', { id: 'spec-dialog', class: 'spec-dialog', 'aria-label': 'flow spec' },
      h.el('header', { class: 'row' }, h.el('h2', { text: 'Spec, as submitted' }), h.el('span', { class: 'spacer' }), close),
      body,
      h.el('div', { class: 'row end' }, copy, clone));
    close.addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
    const res = await loadSpec(id);
    if (!dialog.isConnected) return;
    if (!res.ok) {
      body.classList.add('error');
      body.textContent = `The spec could not be loaded: ${h.errorMessage(res)}`;
      return;
    }
    const text = JSON.stringify(res.body, null, 2);
    body.textContent = text;
    copy.disabled = false;
    clone.disabled = false;
    copy.addEventListener('click', async () => {
      if (await copyText(text)) h.toast('Spec copied.');
      else h.toast('Copying was refused by the browser: select the text instead.', true);
    });
    clone.addEventListener('click', () => {
      dialog.close();
      cloneAndEdit(res.body);
    });
  }

  window.dagflowPage = {
    init, flowHref, parseFlowPath, setStale, isStale, retryCountdown, holdText, loadSpec, attemptsOf, showSpec, cloneAndEdit,
  };
})();

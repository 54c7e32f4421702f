/*
 * dagflow dashboard: the flow page's Timeline view (#/flows/{id}?view=timeline).
 *
 * One row per DAG node, sorted by the time it was queued (then started): a light
 * bar from queuedAt to startedAt (waiting in its queue) and a bar in the node's
 * status colour from startedAt to finishedAt (or to now while it runs), under a
 * time axis, with a "now" line while the flow runs and the critical path marked.
 * A map node is one row (its elements are aggregated in it, like on the graph).
 *
 * Virtualised: the scroller holds one tall spacer and only the rows in view (a
 * small pool of elements, reused) are drawn, so 10,000 nodes cost what 40 do.
 * Changes are batched: app.js calls `changed()` once per animation frame at
 * most (from its flush); the rows in view are redrawn at most every LIVE_MS for
 * them, and the order and the critical path are computed again at most once a
 * second on big flows. While the flow runs, the same timed redraw moves the
 * running bars and the now line on a time scale that grows in steps, and nothing
 * else. A redraw writes only
 * what changed (a style write invalidates the row). Colours come from app.css's
 * custom properties (timeline.css).
 *
 * Loaded before app.js, which creates it with `window.dagflowTimeline.create`.
 */
(function () {
  'use strict';

  // Row height (px); it matches `.tl-row` in timeline.css.
  const ROW = 24;
  // Rows drawn beyond the visible window, above and below.
  const OVERSCAN = 6;
  // On flows bigger than this, order and critical path are recomputed at most every REORDER_MS.
  const BIG = 1500;
  const REORDER_MS = 1000;
  // Critical paths longer than this are listed with their middle cut.
  const PATH_SHOWN = 8;
  // Redraws for events and for the running bars' growth come at most this often; a
  // scroll or a resize redraws on the next frame. Every redraw repaints the rows in
  // view, and a software-rendered page on a busy machine cannot repaint 60 times a
  // second while 10,000 nodes stream in.
  const LIVE_MS = 100;

  /** "12s", "3m 12s", "1h 4m": elapsed time that ticks once a second. */
  function fmtElapsed(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }

  /** When a node entered the timeline: queued, else started (a wait node), else never. */
  function beganAt(n) {
    return n.queuedAt || n.startedAt || Infinity;
  }

  /** When a node that ran stopped running: its finish, or `now` while it still runs. */
  function endOf(n, now) {
    if (!n.startedAt) return null;
    if (n.finishedAt) return n.finishedAt;
    return n.status === 'active' || n.status === 'waiting' ? now : null;
  }

  /**
   * The critical path: from the node that finished last (a running node counts
   * as finishing now), back through each node's latest-finishing parent (the one
   * that gated it), to a root. Returns the indexes root first and its length in ms
   * (from the root's queuedAt to the last node's end), or null if nothing ran.
   */
  function criticalPath(nodes, byName, now) {
    let last = -1;
    let lastEnd = -Infinity;
    nodes.forEach((n, i) => {
      const e = endOf(n, now);
      if (e !== null && e > lastEnd) {
        lastEnd = e;
        last = i;
      }
    });
    if (last < 0) return null;
    const path = [last];
    const seen = new Set(path);
    let cur = last;
    for (;;) {
      let gate = -1;
      let gateEnd = -Infinity;
      (nodes[cur].parents || []).forEach((p) => {
        const j = byName.get(p);
        if (j === undefined) return;
        const e = endOf(nodes[j], now);
        if (e !== null && e > gateEnd) {
          gateEnd = e;
          gate = j;
        }
      });
      if (gate < 0 || seen.has(gate)) break;
      path.push(gate);
      seen.add(gate);
      cur = gate;
    }
    path.reverse();
    const root = nodes[path[0]];
    const start = root.queuedAt || root.startedAt;
    // `running`: the last node still runs, so the path's length grows with the clock.
    return { path, ms: lastEnd - start, start, running: !nodes[last].finishedAt };
  }

  /** A "nice" tick step (1, 2 or 5 times a power of ten, in ms) for about `count` ticks over `span`. */
  function tickStep(span, count) {
    const raw = span / Math.max(1, count);
    const p = 10 ** Math.floor(Math.log10(raw));
    const m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  function tickLabel(ms, step) {
    if (step < 1000) return `${(ms / 1000).toFixed(step < 100 ? 2 : 1)}s`;
    if (ms < 60000) return `${Math.round(ms / 1000)}s`;
    const s = Math.round(ms / 1000);
    if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? ` ${s % 60}s` : ''}`;
    return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)}m` : ''}`;
  }

  /**
   * Creates the view. `h` gives: `el` (app.js's element helper), `nodes()` (the
   * flow page's DAG nodes, mutated in place by its events), `flow()`, `groups()`
   * (map index → group with `elems`), `onSelect(i)` (the page's select), and
   * `fmtDuration`.
   */
  function create(h) {
    const { el } = h;
    const critEl = el('span', { id: 'tl-critical', class: 'tl-critical', text: 'critical path —' });
    const axis = el('div', { id: 'tl-axis', class: 'tl-axis', 'aria-hidden': 'true' });
    const space = el('div', { class: 'tl-space' });
    const nowLine = el('div', { id: 'tl-now', class: 'tl-now', hidden: true });
    const scroller = el('div', { id: 'tl-scroll', class: 'tl-scroll', tabindex: '0', role: 'list', 'aria-label': 'nodes over time' }, space);
    const root = el('section', { id: 'timeline', class: 'timeline', hidden: true },
      el('div', { class: 'tl-head' }, critEl, el('span', { class: 'spacer' }),
        el('span', { class: 'tl-key small muted' }, el('span', { class: 'tl-sw wait' }), 'queued ', el('span', { class: 'tl-sw run' }), 'ran ', el('span', { class: 'tl-sw crit' }), 'critical path')),
      axis,
      el('div', { class: 'tl-body' }, scroller, nowLine));

    let order = []; // row → node index
    let rowOf = new Int32Array(0); // node index → row
    let byName = new Map();
    let known = null; // the nodes array the name map was built for
    let crit = null;
    let critSet = new Set();
    let dirty = true;
    let lastOrder = 0;
    let selected = -1;
    let visible = false;
    let frame = 0;
    let liveTimer = null;
    let lastDraw = 0;
    let reorderTimer = null;
    const pool = []; // row elements, reused
    const ticks = [];
    let geo = { labelW: 0, durW: 0, trackW: 0, t0: 0, span: 1 };
    // The nodes' first and last times, from the last recompute.
    let bounds = { t0: Infinity, t1: -Infinity };
    // While the flow runs: the time span shown, grown in steps (see domain).
    let live = { t0: 0, span: 0 };

    /** Order, name map and critical path, from the nodes as they are now. */
    function recompute(now) {
      const nodes = h.nodes();
      if (known !== nodes || byName.size !== nodes.length) {
        known = nodes;
        byName = new Map(nodes.map((n, i) => [n.name, i]));
      }
      // Sort keys in typed arrays: a 10,000-row sort then costs a few ms.
      const began = new Float64Array(nodes.length);
      const started = new Float64Array(nodes.length);
      let t0 = Infinity;
      let t1 = -Infinity;
      nodes.forEach((n, i) => {
        began[i] = beganAt(n);
        started[i] = n.startedAt || Infinity;
        if (began[i] < t0) t0 = began[i];
        const e = n.finishedAt || n.startedAt || n.queuedAt;
        if (e && e > t1) t1 = e;
      });
      bounds = { t0, t1 };
      // Infinity - Infinity is NaN, which falls through to the next key like a tie.
      order = Array.from(nodes, (n, i) => i);
      order.sort((a, b) => (began[a] - began[b]) || (started[a] - started[b]) || (a - b));
      rowOf = new Int32Array(nodes.length);
      order.forEach((i, r) => { rowOf[i] = r; });
      space.style.height = `${order.length * ROW}px`;
      crit = criticalPath(nodes, byName, now);
      critSet = new Set(crit ? crit.path : []);
      if (!crit) {
        critEl.textContent = 'critical path —';
      } else {
        const names = crit.path.map((i) => nodes[i].name);
        const shown = names.length > PATH_SHOWN ? [...names.slice(0, 3), `… ${names.length - 6} more …`, ...names.slice(-3)] : names;
        crit.names = shown.join(' → ');
        critEl.title = names.join(' → ');
        critHeader(now);
      }
      dirty = false;
      lastOrder = Date.now();
    }

    /** The header's "critical path 4.2 s: a → b → d"; it grows with the clock while its last node runs. */
    function critHeader(now) {
      const ms = crit.running ? now - crit.start : crit.ms;
      const text = `critical path ${h.fmtDuration(ms)}: ${crit.names}`;
      if (critEl.textContent !== text) critEl.textContent = text;
    }

    function running() {
      const f = h.flow();
      return !!f && f.status === 'running';
    }

    /** The time domain: from the first node queued (or the flow's creation) to the last end, or now. */
    function domain(now) {
      const f = h.flow();
      let t0 = Math.min(f && f.createdAt ? f.createdAt : Infinity, bounds.t0);
      let t1 = bounds.t1;
      if (!Number.isFinite(t0)) t0 = now;
      if (running()) {
        // The scale stays put while the flow runs and grows by half when now nears its
        // end: between two steps only the running bars and the now line move, so a
        // redraw repaints those few, not every bar in view.
        const need = Math.max(t1, now) - t0;
        if (live.t0 !== t0 || need > live.span * 0.97) live = { t0, span: Math.max(2000, need * 1.5) };
        return { t0, span: live.span };
      }
      live = { t0: 0, span: 0 };
      if (f && f.finishedAt) t1 = Math.max(t1, f.finishedAt);
      if (!Number.isFinite(t1)) t1 = now;
      // A little room on the right, so the last bar's end shows.
      const span = Math.max(1000, (t1 - t0) * 1.04);
      return { t0, span };
    }

    function rowEl() {
      const label = el('span', { class: 'tl-label' });
      const wait = el('div', { class: 'tl-wait' });
      const run = el('div', { class: 'tl-run' });
      const track = el('div', { class: 'tl-track' }, wait, run);
      const dur = el('span', { class: 'tl-dur' });
      const r = el('div', { class: 'tl-row', role: 'listitem' }, label, track, dur);
      r.tl = { label, track, wait, run, dur, i: -1, text: '', durText: '' };
      return r;
    }

    /** Elapsed time for a live node, its duration for a finished one. */
    function durText(n, now) {
      if (n.status === 'active') return n.startedAt ? `ran ${fmtElapsed(now - n.startedAt)}` : 'running';
      if (n.status === 'queued') return n.queuedAt ? `queued ${fmtElapsed(now - n.queuedAt)}` : 'queued';
      if (n.status === 'waiting') return n.startedAt ? `waiting ${fmtElapsed(now - n.startedAt)}` : 'waiting';
      if (n.status === 'pending') return '';
      if (n.startedAt && n.finishedAt) return h.fmtDuration(n.finishedAt - n.startedAt);
      return n.status;
    }

    /** Sets a style property only when it changes. */
    function setStyle(e, prop, value) {
      const key = `_${prop}`;
      if (e[key] !== value) {
        e[key] = value;
        e.style[prop] = value;
      }
    }

    /** Places a bar between two times on the track; a bar not to be drawn is hidden. */
    function place(bar, from, to) {
      if (from === null || to === null || from === undefined || to === undefined || to < from) {
        if (!bar.hidden) bar.hidden = true;
        return;
      }
      const x0 = ((from - geo.t0) / geo.span) * geo.trackW;
      const x1 = ((to - geo.t0) / geo.span) * geo.trackW;
      if (bar.hidden) bar.hidden = false;
      setStyle(bar, 'transform', `translateX(${x0.toFixed(1)}px)`);
      setStyle(bar, 'width', `${Math.max(2, x1 - x0).toFixed(1)}px`);
    }

    function drawAxis(now) {
      const step = tickStep(geo.span, Math.max(2, Math.floor(geo.trackW / 90)));
      let k = 0;
      for (let t = 0; t <= geo.span; t += step, k++) {
        if (!ticks[k]) {
          ticks[k] = el('span', { class: 'tl-tick' });
          axis.append(ticks[k]);
        }
        const tick = ticks[k];
        if (tick.hidden) tick.hidden = false;
        setStyle(tick, 'transform', `translateX(${(geo.labelW + (t / geo.span) * geo.trackW).toFixed(1)}px)`);
        const text = tickLabel(t, step);
        if (tick.textContent !== text) tick.textContent = text;
      }
      for (; k < ticks.length; k++) if (!ticks[k].hidden) ticks[k].hidden = true;
      const live = running();
      if (nowLine.hidden === live) nowLine.hidden = !live;
      if (live) setStyle(nowLine, 'transform', `translateX(${(geo.labelW + ((now - geo.t0) / geo.span) * geo.trackW).toFixed(1)}px)`);
    }

    /** Draws the rows in view (and a few around): nothing else is in the DOM. */
    function draw() {
      frame = 0;
      if (!visible) return;
      const now = Date.now();
      lastDraw = now;
      const nodes = h.nodes();
      if (dirty || order.length !== nodes.length) {
        // Big flows reorder at most every REORDER_MS while events stream in.
        if (nodes.length <= BIG || Date.now() - lastOrder >= REORDER_MS || order.length !== nodes.length) recompute(now);
        else if (!reorderTimer) reorderTimer = setTimeout(() => { reorderTimer = null; request(); }, REORDER_MS);
      }
      const width = scroller.clientWidth;
      const narrow = width < 560;
      geo.labelW = narrow ? 104 : 200;
      geo.durW = narrow ? 74 : 96;
      geo.trackW = Math.max(40, width - geo.labelW - geo.durW - 8);
      const d = domain(now);
      geo.t0 = d.t0;
      geo.span = d.span;
      if (root._labelW !== geo.labelW) {
        // Changes the grid of every row: only when the width class changes.
        root._labelW = geo.labelW;
        root.style.setProperty('--tl-label', `${geo.labelW}px`);
        root.style.setProperty('--tl-dur', `${geo.durW}px`);
      }
      drawAxis(now);
      if (crit && crit.running) critHeader(now);
      const top = scroller.scrollTop;
      const height = scroller.clientHeight;
      const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
      const last = Math.min(order.length, Math.ceil((top + height) / ROW) + OVERSCAN);
      const groups = h.groups ? h.groups() : null;
      let used = 0;
      for (let r = first; r < last; r++, used++) {
        if (!pool[used]) {
          pool[used] = rowEl();
          space.append(pool[used]);
        }
        const row = pool[used];
        const t = row.tl;
        const i = order[r];
        const n = nodes[i];
        if (row.hidden) row.hidden = false;
        setStyle(row, 'transform', `translateY(${r * ROW}px)`);
        if (t.i !== i) {
          t.i = i;
          row.dataset.i = String(i);
          row.dataset.name = n.name;
          row.title = n.name;
        }
        if (t.r !== r) {
          t.r = r;
          row.dataset.row = String(r);
        }
        const grp = groups && groups.get(i);
        const label = grp ? `${n.name} ×${grp.elems.length.toLocaleString()}` : n.name;
        if (t.text !== label) {
          t.text = label;
          t.label.textContent = label;
        }
        if (row.dataset.status !== n.status) row.dataset.status = n.status;
        row.classList.toggle('critical', critSet.has(i));
        row.classList.toggle('selected', i === selected);
        const stop = n.finishedAt || (n.status === 'queued' || n.status === 'active' || n.status === 'waiting' ? now : null);
        // The queue wait: queued until it started (or until now, or until it ended unstarted).
        place(t.wait, n.queuedAt || null, n.startedAt || (n.queuedAt ? stop : null));
        place(t.run, n.startedAt || null, n.startedAt ? stop : null);
        const dt = durText(n, now);
        if (t.durText !== dt) {
          t.durText = dt;
          t.dur.textContent = dt;
        }
      }
      for (let k = used; k < pool.length; k++) {
        if (!pool[k].hidden) pool[k].hidden = true;
        pool[k].tl.i = -1;
      }
      // While the flow runs, bars grow and the now line moves: draw the window again soon.
      if (running()) later();
    }

    /** Draws on the next frame (a scroll, a resize, a click). */
    function request() {
      if (!frame && visible) frame = requestAnimationFrame(draw);
    }

    /** Draws within LIVE_MS (events, the running bars' growth). */
    function later() {
      if (frame || liveTimer || !visible) return;
      const wait = LIVE_MS - (Date.now() - lastDraw);
      if (wait <= 0) request();
      else liveTimer = setTimeout(() => { liveTimer = null; request(); }, wait);
    }

    scroller.addEventListener('scroll', request, { passive: true });
    scroller.addEventListener('click', (e) => {
      const row = e.target.closest && e.target.closest('.tl-row');
      if (row && row.dataset.i !== undefined) h.onSelect(Number(row.dataset.i));
    });
    const resize = new ResizeObserver(request);
    resize.observe(scroller);

    return {
      el: root,
      show() {
        visible = true;
        root.hidden = false;
        dirty = true;
        request();
      },
      hide() {
        visible = false;
        root.hidden = true;
      },
      /** The nodes changed (events, a snapshot): order, bars and marks follow within LIVE_MS. */
      changed() {
        dirty = true;
        later();
      },
      /** Marks the selected node's row (-1: none) and scrolls it into view. */
      select(i) {
        selected = i;
        if (i >= 0 && visible && !dirty && i < rowOf.length) {
          const y = rowOf[i] * ROW;
          if (y < scroller.scrollTop || y + ROW > scroller.scrollTop + scroller.clientHeight) {
            scroller.scrollTop = Math.max(0, y - scroller.clientHeight / 2);
          }
        }
        request();
      },
      destroy() {
        visible = false;
        if (frame) cancelAnimationFrame(frame);
        clearTimeout(reorderTimer);
        clearTimeout(liveTimer);
        resize.disconnect();
      },
    };
  }

  window.dagflowTimeline = { create, fmtElapsed, criticalPath };
}());

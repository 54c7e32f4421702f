/*
 * dagflow dashboard: big flows at a glance (see ARCHITECTURE.md, "Dashboard").
 *
 *   - shapeGroups: siblings of the same shape (same parents, same children, same
 *     handler and queue) that the flow page draws as one group node;
 *   - a density layer: a canvas over the graph that draws every node as a block
 *     of its status colour when the scale makes nodes too small for labels;
 *   - a minimap: the whole graph in a corner, the view as a rectangle, click or
 *     drag to move there;
 *   - path tracing (a node's ancestors and descendants highlighted, the rest
 *     dimmed) and keyboard access (roving tabindex, arrows along the edges).
 *
 * The flow page (app.js) owns the data and the SVG; this file draws the canvases
 * and moves the highlight and the focus, given a "scene" per layout: the units it
 * laid out (a node, a map group or a shape group each), their boxes and edges.
 * Colours come from app.css's :root custom properties, read when drawing.
 *
 * Exposes DagBig on the global object.
 */
(function (root) {
  'use strict';

  // More siblings of one shape than this become a group.
  var GROUP_MIN = 12;
  // Below this on-screen node height (px), labels cannot be read: draw density.
  var DENSE_BELOW = 6;
  // A node's block in the density view is at least this big (px).
  var MIN_W = 10;
  var MIN_H = 3;
  // Status changes alone redraw the density layer and the minimap at most this often (ms).
  var DENSE_EVERY = 250;
  var MINI_EVERY = 250;
  // Drawn last (on top) where blocks overlap: the rare statuses stay visible.
  var DRAW_ORDER = ['pending', 'skipped', 'cancelled', 'completed', 'queued', 'waiting', 'active', 'failed'];
  var RUNNING = { queued: true, active: true, waiting: true };

  /**
   * Groups of same-shape siblings: nodes with the same parents, children, handler
   * and queue, more than GROUP_MIN of them. Map and wait nodes never group (a map
   * is already a group; a wait is answered one by one). `nodes` are the flow
   * view's DAG nodes (name, parents, handler, queue). Returns [{ members }], each
   * list of node indices in flow order.
   */
  function shapeGroups(nodes) {
    var index = new Map();
    nodes.forEach(function (n, i) { index.set(n.name, i); });
    var children = nodes.map(function () { return []; });
    nodes.forEach(function (n, i) {
      (n.parents || []).forEach(function (p) {
        var j = index.get(p);
        if (j !== undefined) children[j].push(i);
      });
    });
    var byKey = new Map();
    nodes.forEach(function (n, i) {
      if (n.map || n.wait) return;
      var ps = (n.parents || []).map(function (p) { return index.get(p); }).sort(num);
      var cs = children[i].slice().sort(num);
      var key = [n.handler, n.queue, ps.join(','), cs.join(',')].join('\u0000');
      var list = byKey.get(key);
      if (!list) byKey.set(key, (list = []));
      list.push(i);
    });
    var groups = [];
    byKey.forEach(function (members) {
      if (members.length > GROUP_MIN) groups.push({ members: members });
    });
    return groups;
  }

  function num(a, b) { return a - b; }

  /** The CSS custom properties of the status colours, read now (a theme may change them). */
  function statusColours() {
    var style = getComputedStyle(document.documentElement);
    var c = {};
    DRAW_ORDER.forEach(function (s) { c[s] = style.getPropertyValue('--' + s + '-s').trim(); });
    c.accent = style.getPropertyValue('--accent').trim();
    c.panel = style.getPropertyValue('--panel').trim();
    c.line = style.getPropertyValue('--line').trim();
    return c;
  }

  /**
   * One flow page's big-flow layers. `graph` is the graph's box; `hooks`:
   *   unitFill(u)    a unit's status, or for a group [[status, count], ...]
   *   unitMatches(u) whether the graph's filter keeps the unit
   *   moveTo(x, y, zoomIn)  centre the view on a layout point (zoomed in to a
   *                  readable scale when zoomIn)
   *   reveal(u)      pan so that unit u is in view
   *   open(u)        what Enter does on unit u (open its panel, expand a group)
   *   traceBase()    the unit to trace when the pointer leaves the nodes (-1: none)
   */
  function Layers(graph, hooks) {
    this.graph = graph;
    this.hooks = hooks;
    this.scene = null;
    this.view = null;
    this.dense = false;
    this.density = document.createElement('canvas');
    this.density.className = 'density';
    this.density.setAttribute('aria-hidden', 'true');
    this.mini = document.createElement('canvas');
    this.mini.className = 'minimap';
    this.mini.hidden = true;
    this.mini.setAttribute('role', 'img');
    this.mini.setAttribute('aria-label', 'minimap: click or drag to move the view');
    this.drawPending = false;
    this.viewMoved = true;
    this.miniAt = 0;
    this.denseAt = 0;
    this.trailing = null;
    // The graph's size, kept by an observer: asking the layout every frame would
    // make the browser lay out the SVG after each batch of status changes.
    this.box = { width: 0, height: 0 };
    var self = this;
    if (window.ResizeObserver) {
      new ResizeObserver(function (entries) {
        var r = entries[entries.length - 1].contentRect;
        self.box = { width: r.width, height: r.height };
        self.miniSize = null;
        self.requestDraw();
      }).observe(graph);
    }
    this.traced = [];
    this.traceOrigin = -1;
    this.focusU = -1;
    this.bindMinimap();
    this.bindTrace();
    this.bindKeys();
  }

  /**
   * A new layout: `scene` = { count, x, y, w, h (per unit, layout px), width,
   * height, edges: [[from, to]], els: the units' SVG elements, edgeEls }. The
   * graph's content was just replaced, so the canvases go back in.
   */
  Layers.prototype.setScene = function (scene) {
    var ins = [];
    var outs = [];
    for (var u = 0; u < scene.count; u++) {
      ins.push([]);
      outs.push([]);
    }
    scene.edges.forEach(function (e) {
      outs[e[0]].push(e[1]);
      ins[e[1]].push(e[0]);
    });
    scene.ins = ins;
    scene.outs = outs;
    // Layers (columns) by x, each sorted top to bottom: Up and Down move along them.
    var cols = new Map();
    for (u = 0; u < scene.count; u++) {
      var col = cols.get(scene.x[u]);
      if (!col) cols.set(scene.x[u], (col = []));
      col.push(u);
    }
    scene.colOf = new Int32Array(scene.count);
    scene.rowOf = new Int32Array(scene.count);
    scene.cols = [];
    Array.from(cols.keys()).sort(num).forEach(function (x, c) {
      var list = cols.get(x).sort(function (a, b) { return scene.y[a] - scene.y[b]; });
      list.forEach(function (v, r) {
        scene.colOf[v] = c;
        scene.rowOf[v] = r;
      });
      scene.cols.push(list);
    });
    this.scene = scene;
    this.viewMoved = true;
    // The old elements are gone: the next trace starts afresh.
    this.traced = [];
    this.traceOrigin = -2;
    this.graph.append(this.density, this.mini);
    // One unit is in the tab order: the focused one if it is still drawn, else the first.
    var keep = this.focusU >= 0 && this.focusU < scene.count ? this.focusU : (scene.cols.length ? scene.cols[0][0] : -1);
    this.focusU = -1;
    if (keep >= 0) this.setTabStop(keep);
  };

  /** The view moved (`view` = { k, x, y }); returns whether the density layer is on. */
  Layers.prototype.setView = function (view) {
    this.view = view;
    this.viewMoved = true;
    var dense = !!this.scene && view.k * this.scene.nodeHeight < DENSE_BELOW;
    if (dense !== this.dense) {
      this.dense = dense;
      this.graph.classList.toggle('dense', dense);
    }
    this.requestDraw();
    return dense;
  };

  /** Statuses changed: draw again on the next frame (once however many changed). */
  Layers.prototype.requestDraw = function () {
    if (this.drawPending) return;
    this.drawPending = true;
    var self = this;
    requestAnimationFrame(function () {
      self.drawPending = false;
      self.draw();
    });
  };

  /**
   * Draws what is due. A moved view draws both canvases at once; status changes
   * alone redraw the density layer at most every DENSE_EVERY ms and the minimap
   * every MINI_EVERY ms (a trailing draw catches the last change): colours need no
   * 60 frames a second, and a 10,000-node run keeps its frames short.
   */
  Layers.prototype.draw = function () {
    if (!this.scene || !this.view || !this.density.isConnected) return;
    var now = Date.now();
    var wantDense = this.dense && (this.viewMoved || now - this.denseAt >= DENSE_EVERY);
    var wantMini = this.viewMoved || now - this.miniAt >= MINI_EVERY;
    this.viewMoved = false;
    if (!wantDense && this.dense) this.trailingDraw(DENSE_EVERY - (now - this.denseAt));
    if (!wantMini) this.trailingDraw(MINI_EVERY - (now - this.miniAt));
    if (!wantDense && !wantMini && this.dense) return;
    var colours = statusColours();
    var box = this.box.width ? this.box : this.graph.getBoundingClientRect();
    if (wantMini) {
      this.miniAt = now;
      this.drawMinimap(colours, box);
    }
    if (!this.dense) {
      if (this.density.width) this.density.width = 0;
      return;
    }
    if (!wantDense) return;
    this.denseAt = now;
    var dpr = window.devicePixelRatio || 1;
    var cw = Math.round(box.width * dpr);
    var ch = Math.round(box.height * dpr);
    var c = this.density;
    if (c.width !== cw || c.height !== ch) {
      c.width = cw;
      c.height = ch;
    }
    var ctx = c.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, box.width, box.height);
    var m = this.screenMap();
    this.paint(ctx, colours, { kx: m.kx, ky: m.ky, ox: m.ox, oy: m.oy, minW: MIN_W, minH: MIN_H, clip: box });
  };

  /**
   * Layout → screen: x' = ox + x·kx, y' = oy + y·ky. The view's own scale, except
   * that the density view stretches a graph narrower than the box across it
   * (about the graph's centre): a deep fan-out at Fit is a 1-pixel column at the
   * view's scale, and a band of colour this way.
   */
  Layers.prototype.screenMap = function () {
    var v = this.view;
    var kx = v.k;
    var ox = v.x;
    if (this.dense && this.scene) {
      var box = this.box.width ? this.box : this.graph.getBoundingClientRect();
      var wide = (box.width * 0.9) / Math.max(1, this.scene.width);
      if (wide > kx) {
        var centre = v.x + (this.scene.width / 2) * v.k;
        kx = wide;
        ox = centre - (this.scene.width / 2) * kx;
      }
    }
    return { kx: kx, ky: v.k, ox: ox, oy: v.y };
  };

  /** The layout point under a point of the graph's box (px from its top left corner). */
  Layers.prototype.toLayout = function (px, py) {
    var m = this.screenMap();
    return { x: (px - m.ox) / m.kx, y: (py - m.oy) / m.ky };
  };

  /** One more draw soon, for the changes a throttled draw left out. */
  Layers.prototype.trailingDraw = function (wait) {
    if (this.trailing) return;
    var self = this;
    this.trailing = setTimeout(function () {
      self.trailing = null;
      self.requestDraw();
    }, Math.max(10, wait));
  };

  /**
   * Paints every unit, its layout box mapped to the canvas by `m` (scales kx, ky,
   * offsets ox, oy; at least minW x minH; units outside m.clip skipped). Batched:
   * one path per status (and filter state), and touching blocks of one status in
   * a column merged into one rectangle, so that 10,000 nodes at Fit cost a few
   * hundred rectangles. A group is a bar split by its counts.
   */
  Layers.prototype.paint = function (ctx, colours, m) {
    var s = this.scene;
    var hooks = this.hooks;
    var paths = {};
    var run = null;
    var flushRun = function () {
      if (!run) return;
      (paths[run.key] || (paths[run.key] = [])).push(run.x, run.y, run.w, run.h);
      run = null;
    };
    var add = function (key, x, y, w, h) {
      if (run && run.key === key && run.x === x && run.w === w && y <= run.y + run.h + 0.5) {
        run.h = Math.max(run.h, y + h - run.y);
        return;
      }
      flushRun();
      run = { key: key, x: x, y: y, w: w, h: h };
    };
    var clip = m.clip;
    // Blocks smaller than minH overlap once enlarged: they vote per 1-px row of
    // their column instead, and each row takes its majority status (failed wins
    // outright), so a region shows how far it got rather than whichever status is
    // painted last.
    var votes = [];
    var vx = 0;
    var vw = 0;
    var firstRow = 0;
    var vote = function (key, sy, sh) {
      var top = Math.floor(sy);
      if (!votes.length) firstRow = top;
      for (var row = top; row < sy + sh; row++) {
        var i = row - firstRow;
        if (i < 0) continue;
        var v = votes[i] || (votes[i] = {});
        v[key] = (v[key] || 0) + 1;
      }
    };
    var countVotes = function () {
      for (var i = 0; i < votes.length; i++) {
        var v = votes[i];
        if (!v) continue;
        var best = null;
        for (var key in v) {
          if (key.lastIndexOf('failed', 0) === 0) {
            best = key;
            break;
          }
          if (best === null || v[key] > v[best]) best = key;
        }
        add(best, vx, firstRow + i, vw, 1);
      }
      flushRun();
      votes = [];
    };
    for (var c = 0; c < s.cols.length; c++) {
      var col = s.cols[c];
      for (var r = 0; r < col.length; r++) {
        var u = col[r];
        var w = s.w[u] * m.kx;
        var h = s.h[u] * m.ky;
        var sw = Math.max(m.minW, w);
        var sh = Math.max(m.minH, h);
        var sx = m.ox + s.x[u] * m.kx + (w - sw) / 2;
        var sy = m.oy + s.y[u] * m.ky + (h - sh) / 2;
        if (clip && (sx + sw < 0 || sy + sh < 0 || sx > clip.width || sy > clip.height)) continue;
        var fill = hooks.unitFill(u);
        var dim = hooks.unitMatches(u) ? '' : ':dim';
        if (typeof fill === 'string' && h < m.minH) {
          vx = sx;
          vw = sw;
          vote(fill + dim, sy, sh);
          continue;
        }
        if (typeof fill === 'string') {
          add(fill + dim, sx, sy, sw, sh);
          continue;
        }
        var total = 0;
        var k;
        for (k = 0; k < fill.length; k++) total += fill[k][1];
        var at = sx;
        for (k = 0; k < fill.length && total; k++) {
          var part = (sw * fill[k][1]) / total;
          flushRun();
          add(fill[k][0] + dim, at, sy, part, sh);
          at += part;
        }
        flushRun();
      }
      flushRun();
      countVotes();
    }
    ['', ':dim'].forEach(function (dim) {
      ctx.globalAlpha = dim ? 0.15 : 1;
      DRAW_ORDER.forEach(function (status) {
        var list = paths[status + dim];
        if (!list) return;
        ctx.fillStyle = colours[status] || colours.pending;
        ctx.beginPath();
        for (var q = 0; q < list.length; q += 4) ctx.rect(list[q], list[q + 1], list[q + 2], list[q + 3]);
        ctx.fill();
      });
    });
    ctx.globalAlpha = 1;
  };

  /**
   * The minimap: shown unless the whole graph is in view at a readable scale.
   * It is stretched to its box (a 1,000-node column stays a usable strip).
   */
  Layers.prototype.miniGeometry = function () {
    var s = this.scene;
    if (!this.miniSize || !this.miniSize.w) this.miniSize = { w: this.mini.clientWidth, h: this.mini.clientHeight };
    var mw = this.miniSize.w;
    var mh = this.miniSize.h;
    var pad = 4;
    return {
      mw: mw, mh: mh,
      sx: (mw - 2 * pad) / Math.max(1, s.width),
      sy: (mh - 2 * pad) / Math.max(1, s.height),
      pad: pad,
    };
  };

  Layers.prototype.drawMinimap = function (colours, box) {
    var s = this.scene;
    var v = this.view;
    var inView = v.x >= -1 && v.y >= -1 && v.x + s.width * v.k <= box.width + 1 && v.y + s.height * v.k <= box.height + 1;
    var show = !inView || this.dense;
    this.mini.hidden = !show;
    if (!show) return;
    var g = this.miniGeometry();
    if (!g.mw || !g.mh) return;
    var dpr = window.devicePixelRatio || 1;
    var c = this.mini;
    if (c.width !== Math.round(g.mw * dpr) || c.height !== Math.round(g.mh * dpr)) {
      c.width = Math.round(g.mw * dpr);
      c.height = Math.round(g.mh * dpr);
    }
    var ctx = c.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, g.mw, g.mh);
    this.paint(ctx, colours, { kx: g.sx, ky: g.sy, ox: g.pad, oy: g.pad, minW: 2, minH: 1, clip: null });
    // The view, as a rectangle in layout coordinates.
    var sm = this.screenMap();
    var x0 = -sm.ox / sm.kx;
    var y0 = -sm.oy / sm.ky;
    ctx.strokeStyle = colours.accent;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(g.pad + x0 * g.sx, g.pad + y0 * g.sy, Math.max(3, (box.width / sm.kx) * g.sx), Math.max(3, (box.height / sm.ky) * g.sy));
  };

  Layers.prototype.bindMinimap = function () {
    var self = this;
    var moving = false;
    var at = function (e, first) {
      var g = self.miniGeometry();
      var r = self.mini.getBoundingClientRect();
      var x = (e.clientX - r.left - g.pad) / g.sx;
      var y = (e.clientY - r.top - g.pad) / g.sy;
      self.hooks.moveTo(Math.max(0, Math.min(self.scene.width, x)), Math.max(0, Math.min(self.scene.height, y)), first && self.dense);
    };
    // The graph pans on a drag that starts on it: the minimap keeps its own.
    this.mini.addEventListener('pointerdown', function (e) {
      if (e.button !== 0 || !self.scene) return;
      e.stopPropagation();
      moving = true;
      self.mini.setPointerCapture(e.pointerId);
      at(e, true);
    });
    this.mini.addEventListener('pointermove', function (e) {
      if (moving) at(e, false);
    });
    var stop = function () { moving = false; };
    this.mini.addEventListener('pointerup', stop);
    this.mini.addEventListener('pointercancel', stop);
    this.mini.addEventListener('click', function (e) { e.stopPropagation(); });
    this.mini.addEventListener('wheel', function (e) { e.stopPropagation(); }, { passive: true });
  };

  // ---- path tracing

  function unitOfTarget(t) {
    var g = t && t.closest ? t.closest('g.node') : null;
    return g && g.dataset.u !== undefined ? Number(g.dataset.u) : -1;
  }

  /** Highlights unit u, its ancestors and descendants and the edges between them; -1 clears. */
  Layers.prototype.trace = function (u) {
    var s = this.scene;
    if (!s || u === this.traceOrigin) return;
    this.traced.forEach(function (e) { e.classList.remove('hl', 'hl-origin'); });
    this.traced = [];
    this.traceOrigin = u;
    this.graph.classList.toggle('tracing', u >= 0);
    if (u < 0 || u >= s.count) return;
    var up = walk(u, s.ins);
    var down = walk(u, s.outs);
    var lit = [];
    var mark = function (v) {
      var e = s.els[v];
      if (e) {
        e.classList.add('hl');
        lit.push(e);
      }
    };
    up.forEach(mark);
    down.forEach(mark);
    mark(u);
    s.els[u].classList.add('hl-origin');
    s.edges.forEach(function (e, k) {
      var a = e[0];
      var b = e[1];
      if ((up.has(a) && (b === u || up.has(b))) || ((a === u || down.has(a)) && down.has(b))) {
        var el = s.edgeEls[k];
        if (el) {
          el.classList.add('hl');
          lit.push(el);
        }
      }
    });
    this.traced = lit;
  };

  /** Every unit reachable from u along `next` (u itself not included). */
  function walk(u, next) {
    var seen = new Set();
    var stack = [u];
    while (stack.length) {
      var v = stack.pop();
      var list = next[v];
      for (var k = 0; k < list.length; k++) {
        if (!seen.has(list[k])) {
          seen.add(list[k]);
          stack.push(list[k]);
        }
      }
    }
    return seen;
  }

  Layers.prototype.bindTrace = function () {
    var self = this;
    var pendingU = null;
    var schedule = function (u) {
      // At most one trace a frame, however fast the pointer crosses nodes.
      if (pendingU === null) {
        requestAnimationFrame(function () {
          var v = pendingU;
          pendingU = null;
          self.trace(v);
        });
      }
      pendingU = u;
    };
    this.graph.addEventListener('pointerover', function (e) {
      if (e.buttons) return;
      var u = unitOfTarget(e.target);
      if (u >= 0) schedule(u);
    });
    this.graph.addEventListener('pointerout', function (e) {
      if (unitOfTarget(e.target) < 0 || unitOfTarget(e.relatedTarget) >= 0) return;
      // Back to the focused node's paths, else the selected node's.
      var focused = unitOfTarget(document.activeElement);
      schedule(focused >= 0 ? focused : self.hooks.traceBase());
    });
  };

  // ---- keyboard

  /** Moves the single tab stop (tabindex 0) to unit u. */
  Layers.prototype.setTabStop = function (u) {
    var s = this.scene;
    if (this.focusU >= 0 && s.els[this.focusU]) s.els[this.focusU].removeAttribute('tabindex');
    this.focusU = u;
    if (s.els[u]) s.els[u].setAttribute('tabindex', '0');
  };

  Layers.prototype.focusUnit = function (u) {
    if (!this.scene || u < 0 || u >= this.scene.count) return;
    this.setTabStop(u);
    this.hooks.reveal(u);
    this.scene.els[u].focus({ preventScroll: true });
  };

  Layers.prototype.bindKeys = function () {
    var self = this;
    this.graph.addEventListener('focusin', function (e) {
      var u = unitOfTarget(e.target);
      if (u >= 0) {
        if (u !== self.focusU) self.setTabStop(u);
        self.trace(u);
      }
    });
    this.graph.addEventListener('focusout', function (e) {
      if (unitOfTarget(e.relatedTarget) < 0) self.trace(self.hooks.traceBase());
    });
    this.graph.addEventListener('keydown', function (e) {
      var u = unitOfTarget(e.target);
      var s = self.scene;
      if (u < 0 || !s || e.altKey || e.ctrlKey || e.metaKey) return;
      var col = s.cols[s.colOf[u]];
      var row = s.rowOf[u];
      var nearest = function (list) {
        // Of a node's parents or children, the one closest to it vertically.
        var best = -1;
        list.forEach(function (v) {
          if (best < 0 || Math.abs(s.y[v] - s.y[u]) < Math.abs(s.y[best] - s.y[u])) best = v;
        });
        return best;
      };
      var to = -1;
      if (e.key === 'ArrowRight') to = nearest(s.outs[u]);
      else if (e.key === 'ArrowLeft') to = nearest(s.ins[u]);
      else if (e.key === 'ArrowDown') to = row + 1 < col.length ? col[row + 1] : -1;
      else if (e.key === 'ArrowUp') to = row > 0 ? col[row - 1] : -1;
      else if (e.key === 'Home') to = col[0];
      else if (e.key === 'End') to = col[col.length - 1];
      else if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        self.hooks.open(u);
        return;
      } else return;
      e.preventDefault();
      if (to >= 0) self.focusUnit(to);
    });
  };

  root.DagBig = {
    GROUP_MIN: GROUP_MIN,
    DENSE_BELOW: DENSE_BELOW,
    RUNNING: RUNNING,
    shapeGroups: shapeGroups,
    Layers: Layers,
  };
})(typeof window !== 'undefined' ? window : globalThis);

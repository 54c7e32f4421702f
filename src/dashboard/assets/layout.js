/*
 * dagflow dashboard: layered layout of a DAG, left to right.
 *
 * A compact Sugiyama-style layout, written for the dashboard (see ARCHITECTURE.md,
 * "Dashboard", for why not dagre):
 *   1. layers: longest path from the sources (a node's depth), sources pulled right
 *      next to their first child;
 *   2. edges longer than one layer get a chain of dummy nodes (capped, so a
 *      pathological flow cannot explode);
 *   3. order within each layer: DFS start order, then barycenter sweeps down and
 *      up, keeping the order with the fewest crossings (counted exactly with a
 *      Fenwick tree, O(E log V) per layer pair);
 *   4. vertical positions: each node pulled towards the mean of its neighbours,
 *      solved per layer as an isotonic regression (pool adjacent violators) so that
 *      the order and the minimum gaps always hold;
 *      nodes may have sizes of their own (a map node drawn expanded is larger):
 *      each layer is as wide as its widest node;
 *   5. edges: cubic curves through their dummy nodes, spread over the node's side.
 *
 * Exposes DagLayout.layout(n, edges, opts) on the global object (browser or Node).
 */
(function (root) {
  'use strict';

  var DEFAULTS = {
    nodeWidth: 168,
    nodeHeight: 40,
    rankGap: 64, // horizontal space between two layers
    nodeGap: 14, // vertical space between two nodes of a layer
    dummyGap: 6, // vertical space next to an edge passing through a layer
    margin: 24,
    maxIterations: 24, // ordering sweeps (each is one down or one up pass)
    maxDummies: 20000, // past this, long edges are drawn without dummy nodes
  };

  /**
   * Lays out n nodes (0..n-1) and edges ([from, to] index pairs).
   * Returns { x, y, width, height, layers, crossings, edges: [{from, to, d}] }
   * where (x[i], y[i]) is the top-left corner of node i's box and d an SVG path.
   * `options.widths` and `options.heights` (arrays indexed by node, optional) give
   * nodes a size other than nodeWidth × nodeHeight.
   */
  function layout(n, edgeList, options) {
    var o = {};
    var k;
    for (k in DEFAULTS) o[k] = DEFAULTS[k];
    for (k in options || {}) o[k] = options[k];
    var W = o.nodeWidth;
    var H = o.nodeHeight;
    var wOf = function (i) { return (o.widths && o.widths[i]) || W; };
    var hOf = function (i) { return (o.heights && o.heights[i]) || H; };

    // Adjacency of the real nodes, without self-loops or duplicate edges.
    var outs = [];
    var ins = [];
    var i;
    for (i = 0; i < n; i++) {
      outs.push([]);
      ins.push([]);
    }
    var seen = new Set();
    var edges = [];
    edgeList.forEach(function (e) {
      var a = e[0];
      var b = e[1];
      var key = a * n + b;
      if (a === b || a < 0 || b < 0 || a >= n || b >= n || seen.has(key)) return;
      seen.add(key);
      outs[a].push(b);
      ins[b].push(a);
      edges.push({ from: a, to: b, chain: null });
    });

    var layer = longestPathLayers(n, outs, ins);
    var layerCount = 0;
    for (i = 0; i < n; i++) layerCount = Math.max(layerCount, layer[i] + 1);

    // Virtual graph: real nodes, then dummy nodes; edges only between adjacent layers.
    var vLayer = layer.slice();
    var vOut = outs.map(function () { return []; });
    var vIn = ins.map(function () { return []; });
    var dummies = 0;
    var budget = 0;
    edges.forEach(function (e) {
      budget += layer[e.to] - layer[e.from] - 1;
    });
    var useDummies = budget <= o.maxDummies;
    edges.forEach(function (e) {
      var span = layer[e.to] - layer[e.from];
      if (span <= 1) {
        // A span of 0 or less only happens on a cycle; drawn, but not ordered by.
        if (span === 1) {
          vOut[e.from].push(e.to);
          vIn[e.to].push(e.from);
        }
        e.chain = [e.from, e.to];
        return;
      }
      if (!useDummies) {
        e.chain = [e.from, e.to];
        return;
      }
      var chain = [e.from];
      var prev = e.from;
      for (var l = layer[e.from] + 1; l < layer[e.to]; l++) {
        var d = vLayer.length;
        vLayer.push(l);
        vOut.push([]);
        vIn.push([]);
        vOut[prev].push(d);
        vIn[d].push(prev);
        chain.push(d);
        prev = d;
        dummies++;
      }
      vOut[prev].push(e.to);
      vIn[e.to].push(prev);
      chain.push(e.to);
      e.chain = chain;
    });
    var N = vLayer.length;

    var layers = initialOrder(N, n, vLayer, layerCount, vOut, ins);
    var pos = new Int32Array(N);
    setPositions(layers, pos);

    var best = copyLayers(layers);
    var bestCrossings = countAllCrossings(layers, pos, vOut);
    var stale = 0;
    for (var iter = 0; iter < o.maxIterations && bestCrossings > 0 && stale < 4; iter++) {
      if (iter % 2 === 0) {
        for (var l1 = 1; l1 < layerCount; l1++) sortLayer(layers[l1], vIn, pos, iter);
      } else {
        for (var l2 = layerCount - 2; l2 >= 0; l2--) sortLayer(layers[l2], vOut, pos, iter);
      }
      var c = countAllCrossings(layers, pos, vOut);
      if (c < bestCrossings) {
        bestCrossings = c;
        best = copyLayers(layers);
        stale = 0;
      } else {
        stale++;
      }
    }
    layers = best;
    setPositions(layers, pos);

    var isDummy = function (v) { return v >= n; };
    var cy = assignY(layers, vIn, vOut, isDummy, hOf, o);

    // Shift everything so that the top edge sits at the margin.
    var top = Infinity;
    var bottom = -Infinity;
    for (var v = 0; v < N; v++) {
      var half = isDummy(v) ? 0 : hOf(v) / 2;
      top = Math.min(top, cy[v] - half);
      bottom = Math.max(bottom, cy[v] + half);
    }
    if (N === 0) {
      top = 0;
      bottom = 0;
    }
    var shift = o.margin - top;
    // Each layer as wide as its widest node.
    var layerW = [];
    for (var lw = 0; lw < layerCount; lw++) layerW.push(0);
    for (i = 0; i < n; i++) layerW[layer[i]] = Math.max(layerW[layer[i]], wOf(i));
    for (lw = 0; lw < layerCount; lw++) if (!layerW[lw]) layerW[lw] = W;
    var starts = [o.margin];
    for (lw = 1; lw <= layerCount; lw++) starts.push(starts[lw - 1] + layerW[lw - 1] + o.rankGap);
    var colX = function (l) { return starts[l]; };
    var x = new Float64Array(n);
    var y = new Float64Array(n);
    for (i = 0; i < n; i++) {
      x[i] = colX(layer[i]);
      y[i] = cy[i] + shift - hOf(i) / 2;
    }
    for (v = 0; v < N; v++) cy[v] += shift;

    var ports = portOffsets(n, edges, cy, hOf);
    var drawn = edges.map(function (e, idx) {
      var pts = [[colX(layer[e.from]) + wOf(e.from), cy[e.from] + ports.out[idx]]];
      for (var j = 1; j < e.chain.length - 1; j++) {
        var d = e.chain[j];
        // Through a dummy's column horizontally, so the edge never cuts a node box.
        pts.push([colX(vLayer[d]), cy[d]]);
        pts.push([colX(vLayer[d]) + layerW[vLayer[d]], cy[d]]);
      }
      pts.push([colX(layer[e.to]), cy[e.to] + ports.in[idx]]);
      return { from: e.from, to: e.to, d: pathOf(pts) };
    });

    return {
      x: x,
      y: y,
      width: n === 0 ? 0 : colX(layerCount - 1) + layerW[layerCount - 1] + o.margin,
      height: bottom - top + 2 * o.margin,
      layers: layerCount,
      layer: layer,
      crossings: bestCrossings,
      dummies: dummies,
      edges: drawn,
    };
  }

  /** A node's depth: 0 for a source, else one more than its deepest parent. */
  function longestPathLayers(n, outs, ins) {
    var layer = new Int32Array(n);
    var indeg = new Int32Array(n);
    var queue = [];
    var i;
    for (i = 0; i < n; i++) {
      indeg[i] = ins[i].length;
      if (indeg[i] === 0) queue.push(i);
    }
    var done = new Uint8Array(n);
    for (var head = 0; head < queue.length; head++) {
      var v = queue[head];
      done[v] = 1;
      outs[v].forEach(function (c) {
        layer[c] = Math.max(layer[c], layer[v] + 1);
        if (--indeg[c] === 0) queue.push(c);
      });
    }
    // A cycle (the API refuses them, but be safe) leaves nodes unvisited: they keep
    // the depth their visited parents gave them.
    // Sources sit right before their nearest child rather than in column 0, which
    // shortens their edges (a source feeding only a deep node stays close to it).
    for (i = 0; i < n; i++) {
      if (done[i] && ins[i].length === 0 && outs[i].length > 0) {
        var m = Infinity;
        outs[i].forEach(function (c) { m = Math.min(m, layer[c]); });
        layer[i] = m - 1;
      }
    }
    return Array.prototype.slice.call(layer);
  }

  /** Orders each layer by a depth-first walk from the sources, in node order. */
  function initialOrder(N, n, vLayer, layerCount, vOut, ins) {
    var layers = [];
    for (var l = 0; l < layerCount; l++) layers.push([]);
    var visited = new Uint8Array(N);
    var visit = function (start) {
      var stack = [start];
      while (stack.length) {
        var v = stack.pop();
        if (visited[v]) continue;
        visited[v] = 1;
        layers[vLayer[v]].push(v);
        for (var j = vOut[v].length - 1; j >= 0; j--) {
          if (!visited[vOut[v][j]]) stack.push(vOut[v][j]);
        }
      }
    };
    var v;
    for (v = 0; v < n; v++) if (ins[v].length === 0) visit(v);
    for (v = 0; v < N; v++) visit(v);
    return layers;
  }

  function setPositions(layers, pos) {
    layers.forEach(function (nodes) {
      for (var i = 0; i < nodes.length; i++) pos[nodes[i]] = i;
    });
  }

  function copyLayers(layers) {
    return layers.map(function (l) { return l.slice(); });
  }

  /**
   * Reorders one layer by the barycenter of each node's neighbours in the layer
   * just swept; nodes without such neighbours keep their place.
   */
  function sortLayer(nodes, nbrs, pos, iter) {
    var movable = [];
    var fixed = new Uint8Array(nodes.length);
    for (var i = 0; i < nodes.length; i++) {
      var v = nodes[i];
      var ns = nbrs[v];
      if (ns.length === 0) {
        fixed[i] = 1;
        continue;
      }
      var sum = 0;
      for (var j = 0; j < ns.length; j++) sum += pos[ns[j]];
      movable.push({ v: v, b: sum / ns.length, p: i });
    }
    // Ties alternate between keeping and flipping the current order, which lets
    // later sweeps escape a local minimum.
    var flip = iter % 4 >= 2;
    movable.sort(function (a, b) {
      return a.b - b.b || (flip ? b.p - a.p : a.p - b.p);
    });
    var next = 0;
    for (i = 0; i < nodes.length; i++) {
      if (!fixed[i]) nodes[i] = movable[next++].v;
    }
    for (i = 0; i < nodes.length; i++) pos[nodes[i]] = i;
  }

  /** Crossings between every pair of adjacent layers. */
  function countAllCrossings(layers, pos, vOut) {
    var total = 0;
    for (var l = 0; l + 1 < layers.length; l++) {
      total += countCrossings(layers[l], layers[l + 1].length, pos, vOut);
    }
    return total;
  }

  /** Inversions among the edges of one layer pair, with a Fenwick tree. */
  function countCrossings(upper, lowerSize, pos, vOut) {
    var targets = [];
    for (var i = 0; i < upper.length; i++) {
      var ts = vOut[upper[i]].map(function (t) { return pos[t]; });
      ts.sort(function (a, b) { return a - b; });
      for (var j = 0; j < ts.length; j++) targets.push(ts[j]);
    }
    var tree = new Int32Array(lowerSize + 1);
    var crossings = 0;
    for (var e = 0; e < targets.length; e++) {
      // Edges seen so far that end strictly below this one cross it.
      var t = targets[e] + 1;
      var atOrAbove = 0;
      for (var q = t; q > 0; q -= q & -q) atOrAbove += tree[q];
      crossings += e - atOrAbove;
      for (q = t; q <= lowerSize; q += q & -q) tree[q]++;
    }
    return crossings;
  }

  /**
   * Vertical centres: every layer packed, then nodes pulled towards the mean of
   * their neighbours, alternately from the left and from the right, with a last
   * pass that looks both ways.
   */
  function assignY(layers, vIn, vOut, isDummy, hOf, o) {
    var N = vIn.length;
    var cy = new Float64Array(N);
    var half = function (v) { return isDummy(v) ? 0 : hOf(v) / 2; };
    var gap = function (a, b) {
      return half(a) + half(b) + (isDummy(a) || isDummy(b) ? o.dummyGap : o.nodeGap);
    };
    layers.forEach(function (nodes) {
      var c = 0;
      for (var i = 0; i < nodes.length; i++) {
        if (i > 0) c += gap(nodes[i - 1], nodes[i]);
        cy[nodes[i]] = c;
      }
      var mid = c / 2;
      for (i = 0; i < nodes.length; i++) cy[nodes[i]] -= mid;
    });
    var both = vIn.map(function (ins, v) { return ins.concat(vOut[v]); });
    var passes = [];
    for (var r = 0; r < 4; r++) {
      passes.push(vIn, vOut);
    }
    passes.push(both, both);
    passes.forEach(function (nbrs, p) {
      var order = layers.map(function (_, l) { return l; });
      if (nbrs === vOut || (nbrs === both && p % 2 === 1)) order.reverse();
      order.forEach(function (l) { placeLayer(layers[l], nbrs, cy, gap, isDummy); });
    });
    return cy;
  }

  /**
   * Moves one layer's nodes as close as possible (least squares) to where their
   * neighbours want them, keeping their order and the gaps: with the gaps taken
   * out, that is an isotonic regression, solved by pooling adjacent violators.
   */
  function placeLayer(nodes, nbrs, cy, gap, isDummy) {
    var m = nodes.length;
    if (m === 0) return;
    var offset = new Float64Array(m);
    for (var i = 1; i < m; i++) offset[i] = offset[i - 1] + gap(nodes[i - 1], nodes[i]);
    // Blocks of pooled values: mean, weight, size.
    var means = [];
    var weights = [];
    var sizes = [];
    for (i = 0; i < m; i++) {
      var v = nodes[i];
      var ns = nbrs[v];
      var want = cy[v];
      if (ns.length) {
        var s = 0;
        for (var j = 0; j < ns.length; j++) s += cy[ns[j]];
        want = s / ns.length;
      }
      // Dummy nodes weigh more: long edges run straight, nodes bend around them.
      var w = ns.length ? (isDummy(v) ? 2 : 1) : 0.25;
      means.push(want - offset[i]);
      weights.push(w);
      sizes.push(1);
      while (means.length > 1 && means[means.length - 2] > means[means.length - 1]) {
        var m2 = means.pop();
        var w2 = weights.pop();
        var s2 = sizes.pop();
        var k = means.length - 1;
        var wt = weights[k] + w2;
        means[k] = (means[k] * weights[k] + m2 * w2) / wt;
        weights[k] = wt;
        sizes[k] += s2;
      }
    }
    var at = 0;
    for (var b = 0; b < means.length; b++) {
      for (var c = 0; c < sizes[b]; c++, at++) cy[nodes[at]] = means[b] + offset[at];
    }
  }

  /**
   * Where each edge leaves its source and enters its target: spread over the
   * node's side in the order of the other ends, so edges do not pile up on one
   * point and do not cross at the node.
   */
  function portOffsets(n, edges, cy, hOf) {
    var outOf = [];
    var into = [];
    for (var i = 0; i < n; i++) {
      outOf.push([]);
      into.push([]);
    }
    edges.forEach(function (e, idx) {
      outOf[e.from].push(idx);
      into[e.to].push(idx);
    });
    var out = new Float64Array(edges.length);
    var inn = new Float64Array(edges.length);
    var spread = function (list, other, result, H) {
      if (list.length < 2) return;
      list.sort(function (a, b) { return cy[other(a)] - cy[other(b)]; });
      var span = Math.min(Math.min(H, 40) - 12, (list.length - 1) * 6);
      for (var j = 0; j < list.length; j++) {
        result[list[j]] = -span / 2 + (span * j) / (list.length - 1);
      }
    };
    for (i = 0; i < n; i++) {
      spread(outOf[i], function (idx) { return edges[idx].chain[1]; }, out, hOf(i));
      spread(into[i], function (idx) {
        var ch = edges[idx].chain;
        return ch[ch.length - 2];
      }, inn, hOf(i));
    }
    return { out: out, in: inn };
  }

  /** An SVG path through the points: curves between columns, lines within one. */
  function pathOf(pts) {
    var r = function (v) { return Math.round(v * 10) / 10; };
    var d = 'M' + r(pts[0][0]) + ',' + r(pts[0][1]);
    for (var i = 1; i < pts.length; i++) {
      var a = pts[i - 1];
      var b = pts[i];
      if (a[1] === b[1]) {
        d += 'L' + r(b[0]) + ',' + r(b[1]);
      } else {
        var mx = r((a[0] + b[0]) / 2);
        d += 'C' + mx + ',' + r(a[1]) + ' ' + mx + ',' + r(b[1]) + ' ' + r(b[0]) + ',' + r(b[1]);
      }
    }
    return d;
  }

  root.DagLayout = { layout: layout, countCrossings: countCrossings, defaults: DEFAULTS };
})(typeof window !== 'undefined' ? window : globalThis);

/*
 * dagflow dashboard: the Submit page (#/submit).
 *
 * An editor with line numbers (a gutter scrolled with the text) that checks the
 * spec as it is typed: JSON syntax errors with their line and column, then every
 * problem of the spec at once (wrong types of the known fields, unknown parents
 * and children with a "did you mean" by edit distance, duplicate names, cycles),
 * each marked on its line in the gutter; and a live preview of the graph, laid
 * out by layout.js. The checks mirror the server's rules for the common fields
 * (actors/src/spec.rs: serde's types, then `validate`); the server stays the
 * authority: what it answers on submit is shown under the editor's own list.
 *
 * Loaded before app.js, which calls it through `window.dagflowPages.submit(root,
 * helpers)`. `window.DagflowSpecCheck` exposes the parser and the checker.
 */
(function () {
  'use strict';

  const DRAFT_KEY = 'dagflow.draft';
  // The checks and the preview run this long after the last key.
  const CHECK_DEBOUNCE_MS = 200;
  // Larger specs are checked but not drawn.
  const PREVIEW_MAX_NODES = 300;
  // As the server (spec.rs): attempts 1 to MAX_ATTEMPTS, priorities 0 to MAX_PRIORITY.
  const MAX_ATTEMPTS = 1000;
  const MAX_PRIORITY = 9;
  const MAX_U32 = 4294967295;
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

  // The fields serde takes (`deny_unknown_fields`): anything else is refused.
  const SPEC_FIELDS = ['name', 'nodes', 'opts', 'traceparent'];
  const NODE_FIELDS = ['name', 'parents', 'children', 'handler', 'queue', 'data', 'opts', 'continueOnFailure',
    'when', 'trigger', 'map', 'wait', 'priority', 'concurrency', 'rateLimit'];
  const NODE_OPTS_FIELDS = ['attempts', 'backoff', 'timeoutMs', 'continueOnFailure', 'maxStalled'];
  const FLOW_OPTS_FIELDS = ['onFailure', 'priority', 'concurrency', 'notify', 'retention'];

  // ------------------------------------------------------------ JSON parser

  class JsonError extends Error {
    constructor(message, line, column) {
      super(message);
      this.line = line;
      this.column = column;
    }
  }

  /**
   * Parses JSON as strictly as JSON.parse and records where each value starts:
   * `at` maps a JSON pointer (`/nodes/1/parents/0`) to its 1-based line and
   * column (an object member's entry is where its key starts). Throws a
   * JsonError with the line and column of a syntax error.
   */
  function parseJson(text) {
    let i = 0;
    let line = 1;
    let lineStart = 0;
    const at = new Map();
    const fail = (msg) => { throw new JsonError(msg, line, i - lineStart + 1); };
    const here = () => ({ line, column: i - lineStart + 1 });
    const ws = () => {
      for (;;) {
        const c = text.charCodeAt(i);
        if (c === 10) { i++; line++; lineStart = i; } else if (c === 32 || c === 9 || c === 13) i++;
        else return;
      }
    };
    const describe = () => (i >= text.length ? 'the end of the text' : `“${text[i]}”`);
    function value(ptr) {
      ws();
      at.set(ptr, at.get(ptr) || here());
      const c = text[i];
      if (c === '{') return object(ptr);
      if (c === '[') return array(ptr);
      if (c === '"') return string();
      if (c === '-' || (c >= '0' && c <= '9')) return number();
      for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
        if (text.startsWith(word, i)) { i += word.length; return v; }
      }
      return fail(`expected a value, found ${describe()}`);
    }
    function object(ptr) {
      i++;
      const out = {};
      ws();
      if (text[i] === '}') { i++; return out; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail(text[i] === '}' ? 'a trailing comma before “}”' : `expected a member name in quotes, found ${describe()}`);
        const keyAt = here();
        const key = string();
        ws();
        if (text[i] !== ':') fail(`expected “:” after “${key}”, found ${describe()}`);
        i++;
        const p = `${ptr}/${key.replace(/~/g, '~0').replace(/\//g, '~1')}`;
        at.set(p, keyAt);
        Object.defineProperty(out, key, { value: value(p), enumerable: true, configurable: true, writable: true });
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return out; }
        fail(`expected “,” or “}”, found ${describe()}`);
      }
    }
    function array(ptr) {
      i++;
      const out = [];
      ws();
      if (text[i] === ']') { i++; return out; }
      for (;;) {
        out.push(value(`${ptr}/${out.length}`));
        ws();
        if (text[i] === ',') {
          i++;
          ws();
          if (text[i] === ']') fail('a trailing comma before “]”');
          continue;
        }
        if (text[i] === ']') { i++; return out; }
        fail(`expected “,” or “]”, found ${describe()}`);
      }
    }
    function string() {
      const start = i;
      i++;
      for (;;) {
        if (i >= text.length) fail('a string is not closed');
        const c = text.charCodeAt(i);
        if (c === 34) { i++; break; }
        if (c < 32) fail('a control character (a line break?) inside a string');
        if (c === 92) i += text[i + 1] === 'u' ? 6 : 2;
        else i++;
      }
      try {
        return JSON.parse(text.slice(start, i));
      } catch (e) {
        i = start;
        return fail('a bad escape in a string');
      }
    }
    function number() {
      const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
      if (!m) fail(`a malformed number`);
      i += m[0].length;
      return Number(m[0]);
    }
    const v = value('');
    ws();
    if (i < text.length) fail(`unexpected ${describe()} after the end of the value`);
    return { value: v, at };
  }

  // ---------------------------------------------------------------- checks

  /** Optimal string alignment distance (an edit, or two letters swapped, costs 1). */
  function distance(a, b) {
    const d = [];
    for (let x = 0; x <= a.length; x++) d.push([x]);
    for (let y = 1; y <= b.length; y++) d[0][y] = y;
    for (let x = 1; x <= a.length; x++) {
      for (let y = 1; y <= b.length; y++) {
        const cost = a[x - 1] === b[y - 1] ? 0 : 1;
        d[x][y] = Math.min(d[x - 1][y] + 1, d[x][y - 1] + 1, d[x - 1][y - 1] + cost);
        if (x > 1 && y > 1 && a[x - 1] === b[y - 2] && a[x - 2] === b[y - 1]) d[x][y] = Math.min(d[x][y], d[x - 2][y - 2] + 1);
      }
    }
    return d[a.length][b.length];
  }

  /** The closest name, when it is close enough to be a typo. */
  function suggest(name, names) {
    let best = null;
    let bestD = Infinity;
    const limit = Math.max(1, Math.floor(name.length / 3));
    for (const n of names) {
      if (Math.abs(n.length - name.length) > limit) continue;
      const dd = distance(name.toLowerCase(), n.toLowerCase());
      if (dd < bestD) { best = n; bestD = dd; }
    }
    return bestD <= limit ? best : null;
  }

  const typeOf = (v) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`);
  const isInt = (v) => typeof v === 'number' && Number.isInteger(v);

  /**
   * Every problem of a parsed spec, each `{code, message, line, node?}`, in the
   * order of the text. `at` is parseJson's position map.
   */
  function checkSpec(spec, at) {
    const problems = [];
    const lineOf = (ptr) => {
      for (let p = ptr; ; p = p.slice(0, p.lastIndexOf('/'))) {
        if (at.has(p)) return at.get(p).line;
        if (!p) return 1;
      }
    };
    const push = (code, ptr, message, node) => problems.push({ code, message, line: lineOf(ptr), node });
    const unknownFields = (obj, ptr, known, where) => {
      for (const k of Object.keys(obj)) {
        if (!known.includes(k)) {
          const s = suggest(k, known);
          push('unknown_field', `${ptr}/${k}`, `${where} has an unknown field “${k}”${s ? ` — did you mean “${s}”?` : ''}`);
        }
      }
    };
    // `/nodes/2/opts/attempts` → node “x”: opts.attempts
    const where = (ptr) => {
      const m = /^\/nodes\/(\d+)(\/.*)?$/.exec(ptr);
      if (!m) return ptr ? ptr.slice(1).split('/').join('.') : 'the flow';
      const n = spec.nodes[Number(m[1])];
      const label = n && typeof n.name === 'string' && n.name ? `node “${n.name}”` : `node #${m[1]}`;
      return m[2] ? `${label}: ${m[2].slice(1).split('/').join('.')}` : label;
    };
    const shown = (v) => (typeof v === 'number' || typeof v === 'boolean' ? String(v) : typeof v === 'string' ? `a string (${JSON.stringify(v.length > 20 ? `${v.slice(0, 20)}…` : v)})` : typeOf(v));
    const want = (ok, ptr, what, v) => {
      if (!ok) push('wrong_type', ptr, `${where(ptr)} must be ${what}, not ${shown(v)}`);
      return ok;
    };
    const optString = (obj, key, ptr) => obj[key] === undefined || want(typeof obj[key] === 'string', `${ptr}/${key}`, 'a string', obj[key]);
    const optUint = (obj, key, ptr, max) => obj[key] === undefined
      || want(isInt(obj[key]) && obj[key] >= 0 && obj[key] <= max, `${ptr}/${key}`, 'a whole number (0 or more)', obj[key]);
    const optBool = (obj, key, ptr) => obj[key] === undefined || want(typeof obj[key] === 'boolean', `${ptr}/${key}`, 'true or false', obj[key]);
    const stringList = (obj, key, ptr) => {
      const v = obj[key];
      if (v === undefined) return [];
      if (!want(Array.isArray(v), `${ptr}/${key}`, 'an array of names', v)) return [];
      const out = [];
      v.forEach((s, j) => {
        if (want(typeof s === 'string', `${ptr}/${key}/${j}`, 'a name (a string)', s)) out.push({ name: s, ptr: `${ptr}/${key}/${j}` });
      });
      return out;
    };

    if (!want(spec !== null && typeof spec === 'object' && !Array.isArray(spec), '', 'an object with “nodes”', spec)) return problems;
    unknownFields(spec, '', SPEC_FIELDS, 'the flow');
    optString(spec, 'name', '');
    if (spec.opts !== undefined && want(spec.opts !== null && typeof spec.opts === 'object' && !Array.isArray(spec.opts), '/opts', 'an object', spec.opts)) {
      unknownFields(spec.opts, '/opts', FLOW_OPTS_FIELDS, 'opts');
      if (spec.opts.onFailure !== undefined) {
        want(['continue', 'failFast'].includes(spec.opts.onFailure), '/opts/onFailure', '“continue” or “failFast”', spec.opts.onFailure);
      }
      if (optUint(spec.opts, 'priority', '/opts', Number.MAX_SAFE_INTEGER) && spec.opts.priority > MAX_PRIORITY) {
        push('bad_priority', '/opts/priority', `the flow has priority ${spec.opts.priority}; priorities go from 0 to ${MAX_PRIORITY}`);
      }
      optString(spec.opts, 'retention', '/opts');
    }
    if (spec.nodes === undefined) {
      push('missing_field', '', 'the flow has no “nodes” field (a list of nodes)');
      return problems;
    }
    if (!want(Array.isArray(spec.nodes), '/nodes', 'an array of nodes', spec.nodes)) return problems;
    if (spec.nodes.length === 0) push('empty_flow', '/nodes', 'the flow has no nodes');

    // Per node: its fields' types; then names, edges and cycles over the nodes whose names are strings.
    const nodes = [];
    spec.nodes.forEach((n, i) => {
      const ptr = `/nodes/${i}`;
      if (!want(n !== null && typeof n === 'object' && !Array.isArray(n), ptr, 'an object', n)) return;
      unknownFields(n, ptr, NODE_FIELDS, `node #${i}`);
      let name = null;
      if (n.name === undefined) push('missing_field', ptr, `node #${i} has no “name”`);
      else if (want(typeof n.name === 'string', `${ptr}/name`, 'a string', n.name)) {
        name = n.name;
        if (!name) push('empty_name', `${ptr}/name`, `node #${i} has an empty name`);
      }
      const label = name || `#${i}`;
      optString(n, 'handler', ptr);
      if (optString(n, 'queue', ptr) && typeof n.queue === 'string' && !/^[A-Za-z0-9._-]+$/.test(n.queue)) {
        push('bad_queue_name', `${ptr}/queue`, `node “${label}” names queue “${n.queue}”: a queue name is ASCII letters, digits, “-”, “_” or “.”`, name);
      }
      optBool(n, 'continueOnFailure', ptr);
      optString(n, 'when', ptr);
      if (optUint(n, 'priority', ptr, Number.MAX_SAFE_INTEGER) && n.priority > MAX_PRIORITY) {
        push('bad_priority', `${ptr}/priority`, `node “${label}” has priority ${n.priority}; priorities go from 0 to ${MAX_PRIORITY}`, name);
      }
      if (n.opts !== undefined && want(n.opts !== null && typeof n.opts === 'object' && !Array.isArray(n.opts), `${ptr}/opts`, 'an object', n.opts)) {
        const o = n.opts;
        unknownFields(o, `${ptr}/opts`, NODE_OPTS_FIELDS, `node “${label}” opts`);
        if (optUint(o, 'attempts', `${ptr}/opts`, MAX_U32) && o.attempts !== undefined && (o.attempts === 0 || o.attempts > MAX_ATTEMPTS)) {
          push('bad_attempts', `${ptr}/opts/attempts`, `node “${label}” asks for ${o.attempts} attempts; allowed are 1 to ${MAX_ATTEMPTS}`, name);
        }
        if (optUint(o, 'timeoutMs', `${ptr}/opts`, Number.MAX_SAFE_INTEGER) && o.timeoutMs === 0) {
          push('bad_timeout', `${ptr}/opts/timeoutMs`, `node “${label}” has a timeout of 0 ms`, name);
        }
        optBool(o, 'continueOnFailure', `${ptr}/opts`);
        optUint(o, 'maxStalled', `${ptr}/opts`, MAX_U32);
        if (o.backoff !== undefined) want(o.backoff !== null && typeof o.backoff === 'object' && !Array.isArray(o.backoff), `${ptr}/opts/backoff`, 'an object', o.backoff);
      }
      nodes.push({ i, ptr, name, parents: stringList(n, 'parents', ptr), children: stringList(n, 'children', ptr) });
    });

    const index = new Map();
    for (const n of nodes) {
      if (n.name === null) continue;
      if (index.has(n.name)) push('duplicate_name', `${n.ptr}/name`, `node name “${n.name}” is used more than once (first on line ${lineOf(`${index.get(n.name).ptr}/name`)})`, n.name);
      else index.set(n.name, n);
    }
    const names = [...index.keys()];
    const edges = new Set();
    const addEdge = (a, b) => edges.add(`${a.i}>${b.i}`);
    for (const n of nodes) {
      if (n.name === null || index.get(n.name) !== n) continue;
      for (const [list, rel] of [[n.parents, 'parent'], [n.children, 'child']]) {
        const seen = new Set();
        for (const e of list) {
          if (seen.has(e.name)) {
            push('duplicate_edge', e.ptr, `node “${n.name}” lists ${rel} “${e.name}” more than once`, n.name);
            continue;
          }
          seen.add(e.name);
          if (e.name === n.name) {
            push('self_edge', e.ptr, `node “${n.name}” lists itself as a ${rel}`, n.name);
            continue;
          }
          const other = index.get(e.name);
          if (!other) {
            const s = suggest(e.name, names.filter((x) => x !== n.name));
            push(`unknown_${rel}`, e.ptr, `node “${n.name}” names unknown ${rel} “${e.name}”${s ? ` — did you mean “${s}”?` : ''}`, n.name);
            continue;
          }
          if (rel === 'parent') addEdge(other, n);
          else addEdge(n, other);
        }
      }
    }
    const edgeList = [...edges].map((e) => e.split('>').map(Number));
    const cycle = findCycle(spec.nodes.length, edgeList);
    if (cycle) {
      const path = cycle.map((i) => spec.nodes[i].name);
      push('cycle', `/nodes/${cycle[0]}/name`, `the flow has a cycle: ${[...path, path[0]].join(' → ')}`, path[0]);
    }
    problems.sort((a, b) => a.line - b.line);
    return { problems, edges: edgeList };
  }

  /** A cycle as node indices in order, or null (iterative DFS, colours). */
  function findCycle(n, edges) {
    const out = Array.from({ length: n }, () => []);
    edges.forEach(([a, b]) => out[a].push(b));
    const colour = new Uint8Array(n);
    const parent = new Int32Array(n).fill(-1);
    for (let s = 0; s < n; s++) {
      if (colour[s]) continue;
      const stack = [[s, 0]];
      colour[s] = 1;
      while (stack.length) {
        const top = stack[stack.length - 1];
        const [v, k] = top;
        if (k < out[v].length) {
          top[1]++;
          const w = out[v][k];
          if (colour[w] === 1) {
            const cyc = [w];
            for (let x = v; x !== w; x = parent[x]) cyc.push(x);
            return [w, ...cyc.slice(1).reverse()];
          }
          if (!colour[w]) {
            colour[w] = 1;
            parent[w] = v;
            stack.push([w, 0]);
          }
        } else {
          colour[v] = 2;
          stack.pop();
        }
      }
    }
    return null;
  }

  /** Parses and checks `text`: `{problems, spec?, edges?}`; a syntax error is one problem. */
  function check(text) {
    let parsed;
    try {
      parsed = parseJson(text);
    } catch (e) {
      if (!(e instanceof JsonError)) throw e;
      return { problems: [{ code: 'malformed_json', message: `${e.message} (line ${e.line}, column ${e.column})`, line: e.line }], syntax: true };
    }
    const res = checkSpec(parsed.value, parsed.at);
    if (Array.isArray(res)) return { problems: res, spec: parsed.value };
    return { problems: res.problems, spec: parsed.value, edges: res.edges };
  }

  window.DagflowSpecCheck = { parseJson, check, distance, suggest };

  // ---------------------------------------------------------------- preview

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

  /** SVG markup of the spec's graph (edges that close a cycle are left out and counted). */
  function previewSvg(spec, edges) {
    const L = window.DagLayout;
    const n = spec.nodes.length;
    // Drop edges on a cycle so that the layered layout gets a DAG.
    const kept = [];
    const out = Array.from({ length: n }, () => []);
    let dropped = 0;
    for (const [a, b] of edges) {
      out[a].push(b);
      if (findCycle(n, [...kept, [a, b]])) {
        out[a].pop();
        dropped++;
      } else kept.push([a, b]);
    }
    const W = L.defaults.nodeWidth;
    const H = L.defaults.nodeHeight;
    const lay = L.layout(n, kept);
    const parts = [`<svg id="spec-preview-svg" xmlns="http://www.w3.org/2000/svg" width="${Math.max(1, lay.width)}" height="${Math.max(1, lay.height)}" viewBox="0 0 ${Math.max(1, lay.width)} ${Math.max(1, lay.height)}" preserveAspectRatio="xMidYMin meet" role="img" aria-label="graph preview">`];
    lay.edges.forEach((e) => parts.push(`<path class="edge" d="${e.d}"/>`));
    spec.nodes.forEach((node, i) => {
      const name = node && typeof node.name === 'string' ? node.name : `#${i}`;
      const handler = node && typeof node.handler === 'string' ? node.handler : name;
      const shown = name.length > 22 ? `${name.slice(0, 21)}…` : name;
      parts.push(`<g class="pnode" data-name="${esc(name)}" transform="translate(${lay.x[i]},${lay.y[i]})"><title>${esc(name)} (handler ${esc(handler)})</title>`
        + `<rect class="box" width="${W}" height="${H}" rx="7"/><text class="name" x="10" y="${H / 2 + 4}">${esc(shown)}</text></g>`);
    });
    parts.push('</svg>');
    return { markup: parts.join(''), dropped };
  }

  // ------------------------------------------------------------------ page

  window.dagflowPages = window.dagflowPages || {};

  /** Renders the page into `root`; returns its teardown. */
  window.dagflowPages.submit = function submitView(root, h) {
    const { api, el, fill } = h;
    const input = el('textarea', { id: 'spec-input', spellcheck: 'false', wrap: 'off', 'aria-label': 'flow JSON' });
    input.value = sessionStorage.getItem(DRAFT_KEY) || JSON.stringify(EXAMPLE, null, 2);
    const gutter = el('div', { id: 'spec-gutter', class: 'gutter', 'aria-hidden': 'true' });
    const file = el('input', { id: 'spec-file', type: 'file', accept: '.json,application/json' });
    const submit = el('button', { id: 'submit-flow', class: 'primary', text: 'Submit' });
    const example = el('button', { id: 'load-example', text: 'Example' });
    const checkTitle = el('h2', { id: 'spec-check-title', text: 'Checking…' });
    const checkList = el('ul', { id: 'spec-check-list' });
    const checkBox = el('section', { id: 'spec-check', class: 'card spec-check', 'aria-live': 'polite' }, checkTitle, checkList);
    const problems = el('aside', { id: 'spec-errors', class: 'card problems', 'aria-live': 'polite' },
      el('h2', { text: 'Server check' }),
      el('p', { class: 'muted small', text: 'Nodes name their parents (or children); handler defaults to the node name, queue to "default". On submit the server checks the flow and lists every problem here.' }));
    const previewNote = el('p', { id: 'spec-preview-note', class: 'muted small' });
    const preview = el('div', { id: 'spec-preview', class: 'spec-preview' });
    root.append(
      el('div', { class: 'toolbar' }, el('h1', { text: 'Submit a flow' })),
      el('div', { class: 'submit-grid' },
        el('div', { class: 'editor' },
          el('div', { class: 'code' }, gutter, input),
          el('div', { class: 'row' }, el('label', { class: 'small muted' }, 'Upload ', file), example, el('span', { class: 'spacer' }), submit)),
        el('div', { class: 'side' },
          checkBox,
          el('section', { class: 'card preview-card' }, el('h2', { text: 'Preview' }), previewNote, preview),
          problems)));

    // ---- gutter

    let lineCount = 0;
    let marks = new Map(); // line → messages
    function drawGutter() {
      const lines = input.value.split('\n').length;
      if (lines !== lineCount) {
        const frag = document.createDocumentFragment();
        for (let l = 1; l <= lines; l++) frag.append(el('div', { class: 'ln', 'data-line': l, text: String(l) }));
        gutter.replaceChildren(frag);
        lineCount = lines;
      }
      gutter.querySelectorAll('.ln.bad').forEach((d) => {
        d.classList.remove('bad');
        d.removeAttribute('title');
      });
      for (const [line, msgs] of marks) {
        const d = gutter.children[line - 1];
        if (d) {
          d.classList.add('bad');
          d.title = msgs.join('\n');
        }
      }
      gutter.scrollTop = input.scrollTop;
    }
    input.addEventListener('scroll', () => { gutter.scrollTop = input.scrollTop; });

    function selectLine(line, column) {
      const lines = input.value.split('\n');
      let start = 0;
      for (let l = 1; l < line && l <= lines.length; l++) start += lines[l - 1].length + 1;
      const end = start + (lines[line - 1] || '').length;
      input.focus();
      input.setSelectionRange(Math.min(start + Math.max(0, (column || 1) - 1), end), end);
      // Bring the line into view: the textarea scrolls to the selection only on some browsers.
      const lh = parseFloat(getComputedStyle(input).lineHeight) || 18;
      const top = (line - 1) * lh;
      if (top < input.scrollTop || top > input.scrollTop + input.clientHeight - lh) input.scrollTop = Math.max(0, top - input.clientHeight / 3);
    }

    // ---- checks and preview

    let checkTimer = null;
    function runCheck() {
      checkTimer = null;
      const res = check(input.value);
      marks = new Map();
      for (const p of res.problems) {
        if (!marks.has(p.line)) marks.set(p.line, []);
        marks.get(p.line).push(p.message);
      }
      drawGutter();
      const n = res.problems.length;
      checkBox.classList.toggle('bad', n > 0);
      checkTitle.textContent = res.syntax ? 'Not valid JSON' : n ? `${n} problem${n === 1 ? '' : 's'} found` : 'No problems found';
      fill(checkList, res.problems.map((p) => el('li', { class: 'check-problem', 'data-line': p.line, 'data-code': p.code },
        el('button', { type: 'button', class: 'line-link', title: 'go to the line', text: `line ${p.line}` }), ' ',
        el('code', { text: p.code }), ' ', p.message)));
      // The preview: drawn whenever the nodes and edges are known, even with other problems.
      const spec = res.spec;
      if (!spec || !Array.isArray(spec.nodes) || !res.edges) {
        preview.replaceChildren();
        previewNote.textContent = res.syntax ? 'The preview waits for valid JSON.' : 'Nothing to draw: the spec has no list of nodes.';
        return;
      }
      if (spec.nodes.length > PREVIEW_MAX_NODES) {
        preview.replaceChildren();
        previewNote.textContent = `${spec.nodes.length} nodes: the preview draws at most ${PREVIEW_MAX_NODES}.`;
        return;
      }
      const { markup, dropped } = previewSvg(spec, res.edges);
      preview.innerHTML = markup;
      previewNote.textContent = `${spec.nodes.length} node${spec.nodes.length === 1 ? '' : 's'}, ${res.edges.length - dropped} edge${res.edges.length - dropped === 1 ? '' : 's'}${dropped ? ` (${dropped} closing a cycle not drawn)` : ''}`;
    }
    checkList.addEventListener('click', (e) => {
      const li = e.target.closest('li.check-problem');
      if (li) selectLine(Number(li.dataset.line), 1);
    });

    function changed() {
      input.classList.remove('invalid');
      drawGutter();
      clearTimeout(checkTimer);
      checkTimer = setTimeout(runCheck, CHECK_DEBOUNCE_MS);
    }

    let draftTimer = null;
    input.addEventListener('input', () => {
      changed();
      clearTimeout(draftTimer);
      draftTimer = setTimeout(() => sessionStorage.setItem(DRAFT_KEY, input.value), 300);
    });
    example.addEventListener('click', () => {
      input.value = JSON.stringify(EXAMPLE, null, 2);
      sessionStorage.removeItem(DRAFT_KEY);
      changed();
    });
    file.addEventListener('change', async () => {
      const f = file.files && file.files[0];
      if (!f) return;
      input.value = await f.text();
      sessionStorage.setItem(DRAFT_KEY, input.value);
      changed();
    });

    // ---- the server's answer

    function showProblems(title, items, note) {
      problems.classList.add('bad');
      fill(problems, el('h2', { id: 'spec-errors-title', text: title }),
        note ? el('p', { class: 'small', text: note }) : null,
        items.length ? el('ul', {}, items) : null);
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
        showProblems(`Refused (HTTP ${res.status})`, [el('li', { class: 'problem' }, el('code', { text: err.code || 'error' }), ' ', h.errorMessage(res))]);
      }
    });

    drawGutter();
    runCheck();
    return () => {
      clearTimeout(draftTimer);
      clearTimeout(checkTimer);
    };
  };
})();

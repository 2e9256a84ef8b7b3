"""CSS and JS of the HTML report (hand-written, inline, offline). Kept as Python strings so the
report works from an installed wheel without package data."""

from __future__ import annotations

REPORT_CSS = r"""
:root { --fg:#1d232a; --muted:#66707a; --bg:#fbfbfa; --card:#fff; --line:#e3e5e8;
  --attn:#2f6fdf; --self:#8a3fd1; --res:#8c959f; --mlp:#e07b16; --hi:#ffd54a; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif; color:var(--fg); background:var(--bg); }
header { padding:14px 20px; border-bottom:1px solid var(--line); background:var(--card); }
header h1 { margin:0 0 4px; font-size:18px; }
header .sub { color:var(--muted); }
section { margin:14px 20px; padding:12px 14px; background:var(--card); border:1px solid var(--line); border-radius:8px; }
section h2 { margin:0 0 8px; font-size:15px; }
.tokens { display:flex; flex-wrap:wrap; gap:3px; }
.tok { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:12px; padding:2px 5px; border:1px solid var(--line);
  border-radius:4px; background:#f4f5f7; white-space:pre; cursor:default; }
.tok.clickable { cursor:pointer; } .tok.clickable:hover { border-color:var(--attn); }
.tok.target { background:var(--hi); border-color:#c9a400; }
.controls { display:flex; flex-wrap:wrap; gap:18px; align-items:center; }
.controls input[type=range] { width:260px; vertical-align:middle; }
.legend span { display:inline-block; margin-right:12px; } .legend i { display:inline-block; width:18px; height:4px; margin-right:4px; vertical-align:middle; }
#main { display:flex; gap:12px; margin:14px 20px; }
#graph-wrap { flex:1; overflow:auto; max-height:78vh; background:var(--card); border:1px solid var(--line); border-radius:8px; }
#panel { width:340px; flex:none; max-height:78vh; overflow:auto; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
#panel h3 { margin:4px 0 6px; font-size:14px; }
svg text { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:11px; fill:var(--muted); }
.edge { fill:none; cursor:pointer; } .edge:hover { stroke:#111 !important; }
.node { cursor:pointer; stroke:#fff; stroke-width:1; } .node:hover { stroke:#111; stroke-width:2; }
.node.sel, .edge.sel { stroke:#e0245e !important; }
table { border-collapse:collapse; font-size:12px; }
td, th { padding:2px 6px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { color:var(--muted); font-weight:600; }
.mono { font-family:ui-monospace,Menlo,Consolas,monospace; white-space:pre; }
.bar { display:inline-block; height:9px; background:var(--attn); vertical-align:middle; margin-right:5px; }
.up { color:#1a7f37; } .down { color:#cf222e; } .muted { color:var(--muted); }
.grid td { width:22px; height:18px; padding:0; border:1px solid #fff; cursor:pointer; }
.row { display:flex; flex-wrap:wrap; gap:18px; }
canvas { border:1px solid var(--line); image-rendering:pixelated; }
.scroll { overflow:auto; max-height:420px; }
"""

REPORT_JS = r"""
(function () {
'use strict';
const D = JSON.parse(document.getElementById('lmscope-data').textContent);
const L = D.n_layers, T = D.tokens.length, H = D.n_heads, G = D.graph;
let target = D.target, tau = D.tau, renorm = D.renormalise, selected = null;

function el(tag, attrs, ...kids) {
  const e = tag.startsWith('svg:') ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of kids) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const fmt = (x, d) => (x === null || x === undefined) ? '' : Number(x).toFixed(d === undefined ? 3 : d);
const show = s => JSON.stringify(s).slice(1, -1);

// ---- graph model -------------------------------------------------------------------------
const pre = (l, i) => l === 0 ? 'E:-1:' + i : 'R:' + (l - 1) + ':' + i;
const incoming = new Map();
function addIn(t, e) { if (!incoming.has(t)) incoming.set(t, []); incoming.get(t).push(e); }
for (const r of G.edges) {
  const [k, l, s, t, w, heads] = r;
  if (k === 0) addIn('A:' + l + ':' + t, {src: pre(l, s), kind: s === t ? 'self' : 'attn', w, heads, l, s, t});
  else if (k === 1) addIn('A:' + l + ':' + t, {src: pre(l, t), kind: 'res', w, l, s: t, t});
  else if (k === 2) addIn('R:' + l + ':' + t, {src: 'A:' + l + ':' + t, kind: 'res', w, l, s: t, t});
  else if (k === 3) {
    addIn('R:' + l + ':' + t, {src: 'M:' + l + ':' + t, kind: 'mlp', w, l, s: t, t});
    addIn('M:' + l + ':' + t, {src: G.parallel ? pre(l, t) : 'A:' + l + ':' + t, kind: 'mlpin', w, l, s: t, t});
  }
}
function biasShare(n) {
  const [k, l, i] = n.split(':');
  if (k === 'A' && G.attn_bias) return G.attn_bias[+l][+i];
  if (k === 'R' && G.mlp_bias) return G.mlp_bias[+l][+i];
  return 0;
}
function routes() {
  const start = 'R:' + (L - 1) + ':' + target, nodes = new Set([start]), edges = [], queue = [start], scale = {};
  while (queue.length) {
    const n = queue.shift();
    const kept = (incoming.get(n) || []).filter(e => e.w > tau);
    let s = 1;
    if (renorm) {
      if (n[0] === 'M') s = scale['R' + n.slice(1)] || 1;
      else { const b = biasShare(n); const tot = kept.reduce((a, e) => a + e.w, 0) + (b > tau ? b : 0); if (tot > 0) s = 1 / tot; }
    }
    scale[n] = s;
    for (const e of kept) {
      edges.push(Object.assign({}, e, {dst: n, shown: e.w * s}));
      if (!nodes.has(e.src)) { nodes.add(e.src); queue.push(e.src); }
    }
  }
  return {nodes, edges};
}

// ---- layout ------------------------------------------------------------------------------
const colW = Math.max(46, Math.min(90, 1400 / T)), rowH = 26, padL = 70, padT = 30;
const rowOf = (k, l) => k === 'E' ? 0 : 3 * l + ({A: 1, M: 2, R: 3})[k];
const nRows = 3 * L + 1, height = padT * 2 + nRows * rowH + 20;
function xy(n) {
  const [k, l, i] = n.split(':');
  return [padL + (+i) * colW + (k === 'M' ? colW * 0.32 : 0), padT + (nRows - 1 - rowOf(k, +l)) * rowH + 10];
}
const colour = {attn: 'var(--attn)', self: 'var(--self)', res: 'var(--res)', mlp: 'var(--mlp)', mlpin: 'var(--mlp)'};

function drawGraph() {
  const {nodes, edges} = routes();
  const svg = document.getElementById('graph');
  svg.replaceChildren();
  const width = padL + T * colW + 30;
  svg.setAttribute('width', width); svg.setAttribute('height', height);
  for (let l = 0; l < L; l++) {
    const y = xy('R:' + l + ':0')[1];
    svg.append(el('svg:text', {x: 4, y: y + 4, text: 'L' + l}));
    svg.append(el('svg:line', {x1: padL - 10, x2: width, y1: y + rowH / 2 + 2, y2: y + rowH / 2 + 2, stroke: '#f0f1f3'}));
  }
  svg.append(el('svg:text', {x: 4, y: xy('E:-1:0')[1] + 4, text: 'emb'}));
  for (let i = 0; i < T; i++) {
    const [x, y] = xy('E:-1:' + i);
    const label = D.tokens[i].length > 8 ? D.tokens[i].slice(0, 7) + '…' : D.tokens[i];
    svg.append(el('svg:text', {x: x - 12, y: y + 24, text: show(label)}));
  }
  const sorted = edges.slice().sort((a, b) => a.shown - b.shown);
  for (const e of sorted) {
    const [x1, y1] = xy(e.src), [x2, y2] = xy(e.dst);
    const d = (e.kind === 'attn') ? `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}`
                                  : `M${x1},${y1} L${x2},${y2}`;
    const p = el('svg:path', {d, class: 'edge', stroke: colour[e.kind], 'stroke-width': 0.6 + 7 * Math.min(1, e.shown),
      'stroke-opacity': 0.35 + 0.65 * Math.min(1, e.shown), onclick: () => selectEdge(e, p)});
    p.append(el('svg:title', {text: `${e.kind} L${e.l} ${e.s}→${e.t}: ${fmt(e.shown)}`}));
    svg.append(p);
  }
  for (const n of nodes) {
    const [x, y] = xy(n), k = n[0];
    const shape = k === 'M' ? el('svg:rect', {x: x - 5, y: y - 5, width: 10, height: 10, fill: 'var(--mlp)'})
                            : el('svg:circle', {cx: x, cy: y, r: k === 'R' ? 5 : 4, fill: k === 'A' ? 'var(--attn)' : '#3d4650'});
    shape.setAttribute('class', 'node');
    shape.addEventListener('click', () => selectNode(n, shape));
    shape.append(el('svg:title', {text: nodeLabel(n)}));
    svg.append(shape);
  }
  document.getElementById('counts').textContent = `${nodes.size} nodes, ${edges.length} edges`;
}
function nodeLabel(n) {
  const [k, l, i] = n.split(':');
  const name = {E: 'embed', A: `L${l}/resid_mid`, M: `L${l}/mlp`, R: `L${l}/resid_post`}[k];
  return `${name} @ ${i} ${show(D.tokens[+i])}`;
}
function markSel(elm) { if (selected) selected.classList.remove('sel'); selected = elm; elm.classList.add('sel'); }

// ---- panel -------------------------------------------------------------------------------
const panel = () => document.getElementById('panel');
function tokenTable(rows, head) {
  const t = el('table', {}, el('tr', {}, el('th', {text: head[0]}), el('th', {text: head[1]})));
  for (const [tok, v] of rows) t.append(el('tr', {}, el('td', {class: 'mono', text: show(tok)}), el('td', {text: fmt(v)})));
  return t;
}
function selectNode(n, shape) {
  markSel(shape);
  const [k, l, i] = n.split(':'), P = panel();
  P.replaceChildren(el('h3', {text: nodeLabel(n)}));
  if (D.lens[n]) { P.append(el('div', {class: 'muted', text: 'logit lens (through the final norm): top tokens'}), tokenTable(D.lens[n], ['token', 'prob'])); }
  const atTarget = +i === D.target;
  if (k === 'M' || k === 'A') {
    const key = `L${l}/${k === 'M' ? 'mlp' : 'attn'}`, pr = D.promotions[key];
    if (pr && atTarget) {
      P.append(el('h3', {text: 'block update promotes'}), tokenTable(pr.promoted, ['token', 'logit']));
      P.append(el('h3', {text: 'and suppresses'}), tokenTable(pr.suppressed, ['token', 'logit']));
    } else if (!D.lens[n]) P.append(el('div', {class: 'muted', text: 'details are exported for the target position only'}));
  }
  if (k === 'M' && atTarget) {
    const nr = D.neurons[+l];
    P.append(el('h3', {text: 'top neurons'}));
    const t = el('table', {}, el('tr', {}, el('th', {text: 'neuron'}), el('th', {text: 'share'}), el('th', {text: 'act'})));
    for (const r of nr.neurons) t.append(el('tr', {}, el('td', {text: r.label}), el('td', {text: fmt(r.importance)}), el('td', {text: fmt(r.activation, 2)})));
    P.append(t);
  }
}
function selectEdge(e, path) {
  markSel(path);
  const P = panel();
  P.replaceChildren(el('h3', {text: `${e.kind} edge, layer ${e.l}: ${e.s} ${show(D.tokens[e.s])} → ${e.t} ${show(D.tokens[e.t])}`}),
    el('div', {text: `weight ${fmt(e.shown)} (raw share ${fmt(e.w)})`}));
  if (e.heads) {
    const s = e.w > 0 ? e.shown / e.w : 1, max = Math.max(...e.heads, 1e-9);
    const t = el('table', {}, el('tr', {}, el('th', {text: 'head'}), el('th', {text: 'weight'})));
    e.heads.map((v, h) => [v, h]).sort((a, b) => b[0] - a[0]).forEach(([v, h]) => {
      const label = D.head_labels[e.l][h];
      t.append(el('tr', {}, el('td', {}, el('a', {href: '#heads', text: label, onclick: () => showHead(e.l, h)})),
        el('td', {}, el('span', {class: 'bar', style: `width:${Math.round(90 * v / max)}px`}), fmt(v * s))));
    });
    P.append(el('h3', {text: 'per-head weights'}), t);
  }
}

// ---- heads -------------------------------------------------------------------------------
function heat(values, size, max) {
  const n = values.length, c = el('canvas', {width: n * size, height: n * size});
  const g = c.getContext('2d');
  for (let i = 0; i < n; i++) for (let j = 0; j < values[i].length; j++) {
    const v = Math.min(1, values[i][j] / (max || 1));
    if (v <= 0) continue;
    g.fillStyle = `rgba(47,111,223,${v.toFixed(3)})`; g.fillRect(j * size, i * size, size, size);
  }
  return c;
}
function showHead(l, h) {
  const label = D.head_labels[l][h], box = document.getElementById('head-maps');
  box.replaceChildren(el('h3', {text: label}));
  const m = D.heads.maps[label];
  if (m) {
    const size = Math.max(2, Math.floor(360 / T));
    const maxC = Math.max(...m.contribution.flat(), 1e-9);
    box.append(el('div', {class: 'row'},
      el('div', {}, el('div', {class: 'muted', text: 'attention pattern (query ↓, key →)'}), heat(m.attention, size, 1)),
      el('div', {}, el('div', {class: 'muted', text: 'contribution map (share in resid_mid)'}), heat(m.contribution, size, maxC))));
  } else {
    const row = D.heads.target_rows[l][h], t = el('table', {});
    row.map((v, j) => [v, j]).sort((a, b) => b[0] - a[0]).slice(0, 15).forEach(([v, j]) =>
      t.append(el('tr', {}, el('td', {class: 'mono', text: j + ' ' + show(D.tokens[j])}), el('td', {}, el('span', {class: 'bar', style: `width:${Math.round(120 * v)}px`}), fmt(v)))));
    box.append(el('div', {class: 'muted', text: `attention of the target token (position ${D.target}); full maps are exported for the top heads of short prompts`}), t);
  }
  const pr = D.promotions[label];
  if (pr) box.append(el('div', {class: 'row'}, el('div', {}, el('h3', {text: 'promotes'}), tokenTable(pr.promoted, ['token', 'logit'])),
    el('div', {}, el('h3', {text: 'suppresses'}), tokenTable(pr.suppressed, ['token', 'logit']))));
}
function headGrid() {
  const imp = D.heads.importance, max = Math.max(...imp.flat(), 1e-9);
  const t = el('table', {class: 'grid'}, el('tr', {}, el('th', {text: ''}), ...Array.from({length: H}, (_, h) => el('th', {text: 'H' + h}))));
  for (let l = L - 1; l >= 0; l--) {
    const tr = el('tr', {}, el('th', {text: 'L' + l}));
    for (let h = 0; h < H; h++) {
      const v = imp[l][h];
      tr.append(el('td', {title: `${D.head_labels[l][h]}: ${fmt(v)}`, style: `background:rgba(47,111,223,${(v / max).toFixed(3)})`, onclick: () => showHead(l, h)}));
    }
    t.append(tr);
  }
  return t;
}

// ---- other sections ----------------------------------------------------------------------
function tokensBar() {
  const box = document.getElementById('tokens'); box.replaceChildren();
  D.tokens.forEach((s, i) => {
    const cls = 'tok' + (G.all_targets ? ' clickable' : '') + (i === target ? ' target' : '');
    box.append(el('span', {class: cls, title: 'position ' + i, text: show(s), onclick: () => { if (G.all_targets) { target = i; tokensBar(); drawGraph(); } }}));
  });
}
function trajectoryChart() {
  const tr = D.trajectory, n = tr.nodes.length, w = Math.max(420, n * 8), h = 150, p = 30;
  const svg = el('svg:svg', {width: w + 2 * p, height: h + 2 * p});
  const X = i => p + (n > 1 ? i * w / (n - 1) : 0);
  const maxR = Math.log10(1 + Math.max(...tr.ranks, 1));
  const line = (vals, f, col) => svg.append(el('svg:polyline', {fill: 'none', stroke: col, 'stroke-width': 2,
    points: vals.map((v, i) => `${X(i)},${p + h - f(v) * h}`).join(' ')}));
  line(tr.probs, v => v, 'var(--attn)');
  line(tr.ranks, v => 1 - Math.log10(1 + v) / (maxR || 1), 'var(--mlp)');
  svg.append(el('svg:text', {x: p, y: 14, text: `probability (blue) and rank (orange, log, top = rank 0) of ${show(tr.text || '')} across nodes`}));
  svg.append(el('svg:text', {x: p, y: p + h + 20, text: tr.nodes[0]}), el('svg:text', {x: X(n - 1) - 90, y: p + h + 20, text: tr.nodes[n - 1]}));
  return svg;
}
function lensTable() {
  const t = el('table', {}, el('tr', {}, el('th', {text: 'node'}), el('th', {text: 'entropy'}), el('th', {text: 'top tokens (prob, rank change vs previous node)'})));
  for (const r of D.lens_target.slice().reverse()) {
    const cells = r.top.slice(0, 5).map(x => {
      const ch = x.rank_change, span = el('span', {class: 'mono', text: show(x.text) + ' ' + fmt(x.prob, 3)});
      const c = ch === undefined ? null : el('span', {class: ch > 0 ? 'up' : (ch < 0 ? 'down' : 'muted'), text: ch > 0 ? ' ▲' + ch : (ch < 0 ? ' ▼' + (-ch) : ' =')});
      return el('span', {style: 'margin-right:12px'}, span, c);
    });
    t.append(el('tr', {}, el('td', {text: r.node}), el('td', {text: fmt(r.entropy, 2)}), el('td', {}, ...cells)));
  }
  return t;
}
function saliency() {
  const box = el('div', {});
  for (const s of D.saliency) {
    const max = Math.max(...s.scores.map(Math.abs), 1e-9), row = el('div', {class: 'tokens'});
    s.scores.forEach((v, i) => {
      const a = (Math.abs(v) / max).toFixed(3), bg = v >= 0 ? `rgba(207,34,46,${a})` : `rgba(47,111,223,${a})`;
      row.append(el('span', {class: 'tok', style: `background:${bg}`, title: fmt(v, 5), text: show(D.tokens[i])}));
    });
    box.append(el('h3', {text: s.method.replace(/_/g, ' ')}), row);
  }
  return box;
}

// ---- page --------------------------------------------------------------------------------
function build() {
  const tauIn = el('input', {type: 'range', min: G.floor, max: 0.5, step: 0.005, value: tau});
  const tauOut = el('span', {text: fmt(tau)});
  tauIn.addEventListener('input', () => { tau = +tauIn.value; tauOut.textContent = fmt(tau); drawGraph(); });
  const ren = el('input', {type: 'checkbox'}); ren.checked = renorm;
  ren.addEventListener('change', () => { renorm = ren.checked; drawGraph(); });
  document.body.append(
    el('header', {}, el('h1', {text: 'lmscope explain — ' + D.model}),
      el('div', {class: 'sub', text: `${T} tokens, ${L} layers, ${H} heads; norm ${D.norm}; explaining position ${D.target}`})),
    el('section', {}, el('h2', {text: G.all_targets ? 'Tokens (click one to explain it)' : 'Tokens'}), el('div', {id: 'tokens', class: 'tokens'})),
    el('section', {}, el('div', {class: 'controls'},
      el('label', {}, 'tau ', tauIn, ' ', tauOut),
      el('label', {}, ren, ' renormalise weights'),
      el('span', {id: 'counts', class: 'muted'}),
      el('span', {class: 'legend'}, el('span', {}, el('i', {style: 'background:var(--attn)'}), 'attention'),
        el('span', {}, el('i', {style: 'background:var(--self)'}), 'self-attention'),
        el('span', {}, el('i', {style: 'background:var(--res)'}), 'residual'),
        el('span', {}, el('i', {style: 'background:var(--mlp)'}), 'MLP')))),
    el('div', {id: 'main'}, el('div', {id: 'graph-wrap'}, el('svg:svg', {id: 'graph'})),
      el('aside', {id: 'panel'}, el('div', {class: 'muted', text: 'Click a node for its lens, an edge for its heads.'}))),
    el('section', {}, el('h2', {text: 'Prediction at position ' + D.target}), tokenTable(D.prediction, ['next token', 'prob']), trajectoryChart()),
    el('section', {id: 'heads'}, el('h2', {text: 'Heads: share in the attention output at the target (click for maps)'}),
      el('div', {class: 'row'}, headGrid(), el('div', {id: 'head-maps'}))),
    el('section', {}, el('h2', {text: 'Logit lens at the target position'}), el('div', {class: 'scroll'}, lensTable())),
    el('section', {}, el('h2', {text: 'Input attribution for the predicted token'}), saliency()),
    el('section', {}, el('h2', {text: 'Timings (s)'}), el('div', {class: 'mono', text: JSON.stringify(D.timings)})));
  tokensBar(); drawGraph();
  if (D.heads.top.length) { const [lab] = D.heads.top[0]; const [l, h] = lab.slice(1).split('H').map(Number); showHead(l, h); }
}
build();
})();
"""

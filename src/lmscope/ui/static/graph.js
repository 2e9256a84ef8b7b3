// The route graph as SVG: tokens left to right, layers bottom to top. Shared by the explorer and
// the HTML report.
//
// Rows: the embeddings at the bottom, then per layer the residual after attention (resid_mid)
// and after the MLP (resid_post). Attention edges run from a token's resid_pre to another
// token's resid_mid; the MLP block is a square between resid_mid and resid_post.
//
// Drawing: edges are grouped by kind, width and a block of target columns into <path> elements,
// and nodes by kind and block into a few more, so a graph of tens of thousands of edges is a few
// hundred DOM nodes, and the blocks out of view cost no painting. Clicks and
// hovers are resolved geometrically (`pick`), the selection and the hovered item are drawn on an
// overlay.

import { svgEl, showToken, fmt, esc } from "./util.js";

const MIN_ROW = 10;
const MAX_ROW = 84;
const LEFT = 46;
const TOP = 18;
const BOTTOM = 48;
const STAGE = { embed: 0, resid_mid: 1, mlp: 2, resid_post: 3 };
const BUCKETS = 6; // stroke widths per edge kind
const BLOCK = 16; // token columns per path: the browser only paints the paths in view
const KIND_ORDER = ["residual", "mlp", "self_attention", "attention"];
const CLASS_OF = { residual: "residual", mlp_in: "mlp", mlp_out: "mlp", self_attention: "self_attention", attention: "attention" };

export function edgeKey(e) {
  return `${e.source}>${e.target}>${e.kind}`;
}

export function parseNode(id) {
  const parts = id.split("/");
  if (parts[0] === "embed") return { kind: "embed", layer: -1, position: Number(parts[1]) };
  return { kind: parts[1], layer: Number(parts[0].slice(1)), position: Number(parts[2]) };
}

function nodeOrder(id) {
  const n = parseNode(id);
  return (n.layer + 1) * 4 + STAGE[n.kind];
}

/**
 * The routes to `targets` at threshold `tau` (>= the graph's own), computed from a node-link
 * graph fetched at a lower threshold (for the same or more targets): keep the edges whose raw
 * importance is above tau and that still reach the targets' final residuals, and weigh them as
 * lmscope.explain.routes.build_routes does: the raw share, or with `renormalise` the raw share
 * over the sum of the node's kept parts (its kept incoming edges and its bias when above tau).
 */
export function rethreshold(routes, tau, options = {}) {
  const g = routes.graph;
  const targets = options.targets ?? g.targets;
  const renormalise = options.renormalise ?? g.renormalise;
  const same = targets.length === g.targets.length && targets.every((t, i) => t === g.targets[i]);
  if (same && renormalise === g.renormalise && tau <= g.tau + 1e-12) return routes;
  tau = Math.max(tau, g.tau);
  const last = g.n_layers - 1;
  const reached = new Set(targets.map((t) => `L${last}/resid_post/${t}`));
  const edges = routes.links.filter((e) => e.raw > tau).sort((a, b) => nodeOrder(b.target) - nodeOrder(a.target));
  const kept = [];
  for (const e of edges) {
    if (!reached.has(e.target)) continue;
    kept.push(e);
    reached.add(e.source);
  }
  const nodes = routes.nodes.filter((n) => reached.has(n.id));
  const scale = new Map();
  if (renormalise) {
    const total = new Map();
    for (const n of nodes) if (n.bias !== undefined && n.bias > tau) total.set(n.id, n.bias);
    for (const e of kept) if (e.kind !== "mlp_in") total.set(e.target, (total.get(e.target) || 0) + e.raw);
    for (const [id, sum] of total) scale.set(id, sum > 0 ? 1 / sum : 1);
  }
  const links = kept.map((e) => {
    // mlp_in carries the MLP's share of resid_post, so it is scaled like mlp_out.
    const whole = e.kind === "mlp_in" ? e.target.replace("/mlp/", "/resid_post/") : e.target;
    const weight = e.raw * (renormalise ? scale.get(whole) ?? 1 : 1);
    const out = { ...e, weight };
    if (e.heads) out.heads = e.heads.map((h) => (e.weight > 0 ? (h * weight) / e.weight : h));
    return out;
  });
  return { ...routes, graph: { ...g, tau, targets: [...targets], renormalise }, nodes, links };
}

/**
 * Layout numbers for a prompt of n tokens and L layers. `box` ({width, height} in pixels) is the
 * visible area. Readable mode: rows and columns stretch (within limits) rather than the drawing
 * being scaled, so labels keep their size, and a long prompt scrolls sideways; `zoom` multiplies
 * row height and column width. Fit mode (`fit`): the whole graph fits the box, however small its
 * columns get (token labels are then thinned out).
 */
export function layout(tokenStrs, nLayers, box, zoom = 1, fit = false) {
  const n = tokenStrs.length;
  const rows = 2 * nLayers + 1;
  const longest = Math.max(3, ...tokenStrs.map((t) => showToken(t).length));
  const natural = Math.max(54, Math.min(110, 7.4 * Math.min(longest, 14) + 20));
  const fillCol = box ? (box.width - LEFT - 16) / n : natural;
  const fillRow = box ? (box.height - TOP - BOTTOM) / (rows - 1) : MIN_ROW;
  let col;
  let row;
  if (fit && box) {
    col = Math.max(0.5, Math.min(150, fillCol));
    row = Math.max(1, Math.min(MAX_ROW, fillRow));
  } else {
    const fitted = fillCol >= natural ? Math.min(150, fillCol) : Math.max(40, fillCol);
    col = Math.max(2, fitted * zoom);
    row = Math.max(2, Math.max(MIN_ROW, Math.min(MAX_ROW, fillRow)) * zoom);
  }
  const width = LEFT + col * n + 16;
  const height = TOP + (rows - 1) * row + BOTTOM;
  const rowY = (r) => TOP + (rows - 1 - r) * row;
  const x = (pos) => LEFT + col * pos + col / 2;
  const y = (kind, layer) => {
    if (kind === "embed") return rowY(0);
    if (kind === "resid_mid") return rowY(2 * layer + 1);
    if (kind === "resid_post") return rowY(2 * layer + 2);
    return (rowY(2 * layer + 1) + rowY(2 * layer + 2)) / 2; // mlp
  };
  const mlpOffset = Math.min(18, col * 0.27);
  const points = new Map(); // node id -> [x, y], rounded to 0.1 px (shorter path strings)
  const point = (id) => {
    let pt = points.get(id);
    if (!pt) {
      const p = parseNode(id);
      pt = [Math.round(10 * (x(p.position) + (p.kind === "mlp" ? mlpOffset : 0))) / 10, Math.round(10 * y(p.kind, p.layer)) / 10];
      points.set(id, pt);
    }
    return pt;
  };
  const radius = Math.max(1, Math.min(4.2, row * 0.27, col * 0.3));
  return { col, row, rows, width, height, rowY, x, y, point, radius, left: LEFT };
}

/** The control points of an edge: [x1, y1, c1x, c1y, c2x, c2y, x2, y2] (a cubic Bézier). */
function edgeCurve(e, L) {
  const [x1, y1] = L.point(e.source);
  const [x2, y2] = L.point(e.target);
  const r = (v) => Math.round(10 * v) / 10;
  if (e.kind === "self_attention") {
    const bend = Math.min(16, L.col * 0.3);
    return [x1, y1, r(x1 - bend), r(y1 - L.row * 0.35), r(x2 - bend), r(y2 + L.row * 0.35), x2, y2];
  }
  if (e.kind === "attention") {
    const dy = r((y1 - y2) * 0.55);
    return [x1, y1, x1, r(y1 - dy), x2, r(y2 + dy), x2, y2];
  }
  return [x1, y1, x1, y1, x2, y2, x2, y2];
}

function curvePath(c) {
  if (c[2] === c[0] && c[3] === c[1] && c[4] === c[6] && c[5] === c[7]) return `M${c[0]},${c[1]}L${c[6]},${c[7]}`;
  return `M${c[0]},${c[1]}C${c[2]},${c[3]} ${c[4]},${c[5]} ${c[6]},${c[7]}`;
}

function bezier(c, t) {
  const u = 1 - t;
  const a = u * u * u;
  const b = 3 * u * u * t;
  const d = 3 * u * t * t;
  const e = t * t * t;
  return [a * c[0] + b * c[2] + d * c[4] + e * c[6], a * c[1] + b * c[3] + d * c[5] + e * c[7]];
}

function segmentDistance(px, py, ax, ay, bx, by) {
  const dx = bx - ax;
  const dy = by - ay;
  const len = dx * dx + dy * dy;
  const t = len > 0 ? Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / len)) : 0;
  return Math.hypot(px - ax - t * dx, py - ay - t * dy);
}

function curveDistance(c, px, py) {
  let best = Infinity;
  let prev = [c[0], c[1]];
  const straight = c[2] === c[0] && c[3] === c[1];
  const steps = straight ? 1 : 16;
  for (let i = 1; i <= steps; i++) {
    const p = bezier(c, i / steps);
    best = Math.min(best, segmentDistance(px, py, prev[0], prev[1], p[0], p[1]));
    prev = p;
  }
  return best;
}

function strokeBucket(weight) {
  const w = Math.max(0, Math.min(1, weight));
  return Math.min(BUCKETS - 1, Math.floor(Math.sqrt(w) * BUCKETS));
}

function bucketStyle(b) {
  const s = (b + 0.5) / BUCKETS;
  return { width: 0.6 + 5 * s, opacity: 0.3 + 0.7 * s };
}

function circlePath(cx, cy, r) {
  return `M${cx - r},${cy}a${r},${r} 0 1,0 ${2 * r},0a${r},${r} 0 1,0 ${-2 * r},0`;
}

function nodeShape(n, L) {
  const [cx, cy] = L.point(n.id);
  if (n.kind === "mlp") {
    const h = L.radius + 0.6;
    return `M${cx - h},${cy - h}h${2 * h}v${2 * h}h${-2 * h}z`;
  }
  return circlePath(cx, cy, n.kind === "embed" ? L.radius + 0.6 : L.radius);
}

function describeNode(n, tokenStrs) {
  const name = n.kind === "embed" ? "embedding" : `L${n.layer} ${n.kind.replace("_", " ")}`;
  return `${name} · <span class="mono">${esc(showToken(tokenStrs[n.position]))}</span> (${n.position})`;
}

function describeEdge(e, tokenStrs) {
  const s = parseNode(e.source);
  const t = parseNode(e.target);
  const tok = (p) => `<span class="mono">${esc(showToken(tokenStrs[p]))}</span>`;
  let text;
  if (e.kind === "attention" || e.kind === "self_attention") {
    text = `Attention L${e.layer}: ${tok(s.position)} (${s.position}) → ${tok(t.position)} (${t.position})`;
    if (e.heads) {
      const top = e.heads
        .map((w, h) => [w, h])
        .sort((a, b) => b[0] - a[0])
        .slice(0, 3)
        .map(([w, h]) => `L${e.layer}H${h} ${fmt(w)}`)
        .join(", ");
      text += `<br>top heads: ${top}`;
    }
  } else if (e.kind === "residual") {
    text = `Residual L${e.layer} at ${tok(t.position)} (${t.position})`;
  } else {
    text = `MLP ${e.kind === "mlp_in" ? "input" : "output"} L${e.layer} at ${tok(t.position)} (${t.position})`;
  }
  return `${text}<br>weight ${fmt(e.weight)}${e.weight !== e.raw ? ` (raw ${fmt(e.raw)})` : ""}`;
}

function drawLayerLabels(svg, L, nLayers, withBackground) {
  if (withBackground) svg.append(svgEl("rect", { class: "label-bg", x: 0, y: 0, width: L.left - 6, height: L.height }));
  const every = L.row >= 7 ? 1 : Math.ceil(7 / L.row);
  for (let layer = 0; layer < nLayers; layer++) {
    if (layer % every !== 0 && layer !== nLayers - 1) continue;
    const label = svgEl("text", { class: "layer-label", x: 8, y: L.y("mlp", layer) + 4 });
    label.textContent = `L${layer}`;
    svg.append(label);
  }
  const emb = svgEl("text", { class: "layer-label", x: 8, y: L.y("embed") + 4 });
  emb.textContent = "emb";
  svg.append(emb);
}

/**
 * Draw `routes` into `svg`. opts: {tokenStrs, target, nLayers, box, zoom, fit, selected, nPrompt,
 * tooltip, labels (an <svg> kept at the left edge while the graph scrolls sideways),
 * onEdge(edge), onNode(node), onToken(position)}.
 * Returns the drawing: {L, links, nodes, pick(x, y), edgePoint(edge), nodePoint(id), select(key)}.
 */
export function renderGraph(svg, routes, opts) {
  const { tokenStrs, target, nLayers } = opts;
  const L = layout(tokenStrs, nLayers, opts.box, opts.zoom || 1, !!opts.fit);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${L.width} ${L.height}`);
  svg.setAttribute("width", L.width);
  svg.setAttribute("height", L.height);

  const bg = svgEl("g", { class: "background" });
  for (let layer = 0; layer < nLayers; layer += 2) {
    const top = L.y("resid_post", layer) - L.row / 2;
    bg.append(svgEl("rect", { class: "band", x: 0, y: top, width: L.width, height: 2 * L.row }));
  }
  const colStep = Math.max(1, Math.ceil(6 / L.col));
  let cols = "";
  for (let p = 0; p < tokenStrs.length; p += colStep) cols += `M${L.x(p)},${TOP - 6}V${L.y("embed")}`;
  bg.append(svgEl("path", { class: "col-line", d: cols }));
  svg.append(bg);
  if (opts.labels) {
    opts.labels.replaceChildren();
    opts.labels.setAttribute("width", L.left - 4);
    opts.labels.setAttribute("height", L.height);
    opts.labels.style.marginBottom = `${-L.height}px`;
    drawLayerLabels(opts.labels, L, nLayers, true);
  } else {
    drawLayerLabels(svg, L, nLayers, false);
  }

  // Token labels along the bottom (thinned out when the columns are narrow).
  const labels = svgEl("g", { class: "col-labels" });
  const maxChars = Math.max(3, Math.floor((L.col - 8) / 7.1));
  const labelStep = L.col >= 26 ? 1 : Math.ceil(26 / L.col);
  tokenStrs.forEach((text, p) => {
    // every labelStep-th column, and the target (whose neighbours then make room for it)
    if (p !== target && (p % labelStep !== 0 || Math.abs(p - target) < labelStep)) return;
    let shown = labelStep > 1 ? String(p) : showToken(text);
    if (shown.length > maxChars && labelStep === 1) shown = `${shown.slice(0, maxChars - 1)}…`;
    const cls = `col-label${p === target ? " target" : ""}`;
    const t = svgEl("text", { class: cls, x: L.x(p), y: L.y("embed") + 22, "text-anchor": "middle", "data-position": p });
    t.textContent = shown;
    t.addEventListener("click", () => opts.onToken?.(p));
    const title = svgEl("title");
    title.textContent = `${JSON.stringify(text)} (position ${p}) — click to explain its prediction`;
    t.append(title);
    labels.append(t);
    if (labelStep === 1) {
      const pos = svgEl("text", { class: "col-pos", x: L.x(p), y: L.y("embed") + 35, "text-anchor": "middle" });
      pos.textContent = opts.nPrompt !== undefined && p >= opts.nPrompt ? `${p}*` : p;
      labels.append(pos);
    }
  });
  svg.append(labels);

  // Edges: one <path> per (kind, width bucket); residual and MLP underneath, attention on top.
  const links = routes.links;
  const curves = links.map((e) => edgeCurve(e, L));
  const groups = new Map();
  const blockOf = (id) => Math.floor(Number(id.slice(id.lastIndexOf("/") + 1)) / BLOCK);
  links.forEach((e, i) => {
    const key = `${CLASS_OF[e.kind]}:${strokeBucket(e.weight)}:${blockOf(e.target)}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(curvePath(curves[i]));
  });
  const edgeLayer = svgEl("g", { class: "edges" });
  const nBlocks = Math.ceil(tokenStrs.length / BLOCK);
  for (const kind of KIND_ORDER) {
    for (let b = 0; b < BUCKETS * nBlocks; b++) {
      const parts = groups.get(`${kind}:${b % BUCKETS}:${Math.floor(b / BUCKETS)}`);
      if (!parts) continue;
      const s = bucketStyle(b % BUCKETS);
      edgeLayer.append(
        svgEl("path", {
          class: `edge ${kind}`,
          d: parts.join(""),
          "stroke-width": s.width.toFixed(2),
          "stroke-opacity": s.opacity.toFixed(2),
          "data-kind": kind,
          "data-count": parts.length,
        }),
      );
    }
  }
  svg.append(edgeLayer);

  const nodes = routes.nodes;
  const finalId = `L${nLayers - 1}/resid_post/${target}`;
  const shapes = new Map();
  for (const n of nodes) {
    const key = `${n.kind === "mlp" ? "mlp" : n.kind === "embed" ? "embed" : "resid"}:${blockOf(n.id)}`;
    shapes.set(key, (shapes.get(key) || "") + nodeShape(n, L));
  }
  const nodeLayer = svgEl("g", { class: "nodes" });
  for (const [key, d] of shapes) {
    const kind = key.split(":")[0];
    nodeLayer.append(svgEl("path", { class: `node ${kind}`, d, "data-kind": kind }));
  }
  const finalNode = nodes.find((n) => n.id === finalId);
  if (finalNode) nodeLayer.append(svgEl("path", { class: "node target-node", d: nodeShape(finalNode, L) }));
  svg.append(nodeLayer);
  const overlay = svgEl("g", { class: "overlay" });
  svg.append(overlay);
  svg.dataset.edges = links.length;
  svg.dataset.nodes = nodes.length;

  // ---- picking: the node under the pointer, else the nearest edge within a few pixels.
  const nodePoints = nodes.map((n) => L.point(n.id));
  const boxes = curves.map((c) => [Math.min(c[0], c[2], c[4], c[6]), Math.max(c[0], c[2], c[4], c[6]), Math.min(c[1], c[3], c[5], c[7]), Math.max(c[1], c[3], c[5], c[7])]);
  const pick = (px, py) => {
    const rNode = L.radius + 2.5;
    let best = null;
    let bestD = Infinity;
    nodePoints.forEach(([x, y], i) => {
      const d = Math.hypot(px - x, py - y);
      if (d <= rNode && d < bestD) {
        best = { node: nodes[i] };
        bestD = d;
      }
    });
    if (best) return best;
    const reach = 5;
    links.forEach((e, i) => {
      const b = boxes[i];
      if (px < b[0] - reach || px > b[1] + reach || py < b[2] - reach || py > b[3] + reach) return;
      const d = curveDistance(curves[i], px, py) - bucketStyle(strokeBucket(e.weight)).width / 2;
      // ties (an edge drawn over another) go to the heavier edge
      if (d <= reach && (d < bestD - 0.5 || (Math.abs(d - bestD) <= 0.5 && e.weight > best.edge.weight))) {
        best = { edge: e, index: i };
        bestD = Math.min(d, bestD);
      }
    });
    return best;
  };
  let keys = null; // edge key -> index, built on first use
  const indexOf = (key) => (keys ??= new Map(links.map((e, i) => [edgeKey(e), i]))).get(key);
  const outline = (key, cls) => {
    if (!key) return null;
    const i = indexOf(key);
    if (i !== undefined) {
      const s = bucketStyle(strokeBucket(links[i].weight));
      return svgEl("path", { class: `${cls} edge-outline`, d: curvePath(curves[i]), "stroke-width": (s.width + 1).toFixed(2), "data-key": key });
    }
    const n = nodes.find((m) => m.id === key);
    return n ? svgEl("path", { class: `${cls} node-outline`, d: nodeShape(n, L), "data-key": key }) : null;
  };
  let selected = opts.selected || null;
  let hovered = null;
  const paintOverlay = () => overlay.replaceChildren(...[outline(hovered, "hovered"), outline(selected, "selected")].filter(Boolean));
  paintOverlay();

  const tip = opts.tooltip;
  const local = (evt) => {
    const rect = svg.getBoundingClientRect();
    return [((evt.clientX - rect.left) * L.width) / rect.width, ((evt.clientY - rect.top) * L.height) / rect.height];
  };
  let frame = 0;
  svg.onmousemove = (evt) => {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      const hit = pick(...local(evt));
      const key = hit ? (hit.edge ? edgeKey(hit.edge) : hit.node.id) : null;
      svg.style.cursor = hit ? "pointer" : "";
      if (key !== hovered) {
        hovered = key;
        paintOverlay();
      }
      if (!tip) return;
      if (!hit) return void (tip.hidden = true);
      tip.innerHTML = hit.edge ? describeEdge(hit.edge, tokenStrs) : describeNode(hit.node, tokenStrs);
      tip.hidden = false;
      tip.style.left = `${Math.min(window.innerWidth - 330, evt.clientX + 14)}px`;
      tip.style.top = `${evt.clientY + 14}px`;
    });
  };
  svg.onmouseleave = () => {
    hovered = null;
    paintOverlay();
    if (tip) tip.hidden = true;
  };
  svg.onclick = (evt) => {
    const hit = pick(...local(evt));
    if (!hit) return;
    if (tip) tip.hidden = true;
    if (hit.edge) opts.onEdge?.(hit.edge);
    else opts.onNode?.(hit.node);
  };

  const drawing = {
    L,
    links,
    nodes,
    pick,
    /** A point on the edge (svg coordinates) that picks it: the curve's middle. */
    edgePoint: (e) => bezier(curves[indexOf(edgeKey(e))], 0.5),
    nodePoint: (id) => L.point(id),
    select: (key) => {
      selected = key;
      paintOverlay();
    },
  };
  svg._graph = drawing;
  return drawing;
}

/** Mark one edge or node as selected without redrawing. */
export function markSelected(svg, key) {
  svg._graph?.select(key);
}

/**
 * Scroll `wrap` so that the target's route is in view: the graph's top (the target's final
 * residual) and the target's column at the right of the view, with as much of the route to its
 * left (attention only reads earlier tokens) as fits.
 */
export function scrollToRoute(wrap, drawing, target) {
  const L = drawing.L;
  const right = L.x(target) + Math.max(L.col / 2, 24) + 8;
  wrap.scrollLeft = Math.max(0, right - wrap.clientWidth);
  wrap.scrollTop = 0;
}

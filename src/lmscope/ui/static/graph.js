// The route graph as inline SVG: tokens left to right, layers bottom to top.
//
// Rows: the embeddings at the bottom, then per layer the residual after attention (resid_mid)
// and after the MLP (resid_post). Attention edges run from a token's resid_pre to another
// token's resid_mid; the MLP block is a square between resid_mid and resid_post.

import { svgEl, showToken, fmt } from "./util.js";

const MIN_ROW = 10;
const MAX_ROW = 84;
const LEFT = 46;
const TOP = 18;
const BOTTOM = 48;
const STAGE = { embed: 0, resid_mid: 1, mlp: 2, resid_post: 3 };

export function edgeKey(e) {
  return `${e.source}>${e.target}>${e.kind}`;
}

function parseNode(id) {
  const parts = id.split("/");
  if (parts[0] === "embed") return { kind: "embed", layer: -1, position: Number(parts[1]) };
  return { kind: parts[1], layer: Number(parts[0].slice(1)), position: Number(parts[2]) };
}

function nodeOrder(id) {
  const n = parseNode(id);
  return (n.layer + 1) * 4 + STAGE[n.kind];
}

/**
 * The routes at a higher threshold, computed from a graph fetched at a lower one: keep edges
 * whose raw importance is above tau and that still reach the targets' final residuals.
 * Same edges as the server's build_routes (renormalising never changes which edges survive).
 */
export function rethreshold(routes, tau) {
  if (tau <= routes.graph.tau + 1e-12) return routes;
  const last = routes.graph.n_layers - 1;
  const reached = new Set(routes.graph.targets.map((t) => `L${last}/resid_post/${t}`));
  const edges = routes.links
    .filter((e) => e.raw > tau)
    .sort((a, b) => nodeOrder(b.target) - nodeOrder(a.target));
  const kept = [];
  for (const e of edges) {
    if (!reached.has(e.target)) continue;
    kept.push(e);
    reached.add(e.source);
  }
  const nodes = routes.nodes.filter((n) => reached.has(n.id));
  return { ...routes, graph: { ...routes.graph, tau }, nodes, links: kept };
}

/**
 * Layout numbers for a prompt of n tokens and L layers. The graph fills `box` ({width, height}
 * in pixels): rows and columns stretch (within limits) rather than the drawing being scaled, so
 * labels keep their size; `zoom` multiplies the row height and column width.
 */
export function layout(tokenStrs, nLayers, box, zoom = 1) {
  const n = tokenStrs.length;
  const rows = 2 * nLayers + 1;
  const longest = Math.max(3, ...tokenStrs.map((t) => showToken(t).length));
  // Wide enough for the labels when there is room; in a narrow box labels are cut (full text in
  // their tooltip) down to 40 px a column, below which the graph scrolls sideways.
  const natural = Math.max(54, Math.min(110, 7.4 * Math.min(longest, 14) + 20));
  const fillCol = box ? (box.width - LEFT - 16) / n : natural;
  const fitted = fillCol >= natural ? Math.min(150, fillCol) : Math.max(40, fillCol);
  const col = Math.max(20, fitted * zoom);
  const fillRow = box ? (box.height - TOP - BOTTOM) / (rows - 1) : MIN_ROW;
  const row = Math.max(6, Math.max(MIN_ROW, Math.min(MAX_ROW, fillRow)) * zoom);
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
  const point = (id) => {
    const p = parseNode(id);
    return [x(p.position) + (p.kind === "mlp" ? mlpOffset : 0), y(p.kind, p.layer)];
  };
  const radius = Math.max(2, Math.min(4.2, row * 0.27));
  return { col, row, rows, width, height, rowY, x, y, point, radius };
}

function edgePath(e, L) {
  const [x1, y1] = L.point(e.source);
  const [x2, y2] = L.point(e.target);
  if (e.kind === "self_attention") {
    const bend = Math.min(16, L.col * 0.3);
    return `M${x1},${y1} C${x1 - bend},${y1 - L.row * 0.35} ${x2 - bend},${y2 + L.row * 0.35} ${x2},${y2}`;
  }
  if (e.kind === "attention") {
    const dy = (y1 - y2) * 0.55;
    return `M${x1},${y1} C${x1},${y1 - dy} ${x2},${y2 + dy} ${x2},${y2}`;
  }
  return `M${x1},${y1} L${x2},${y2}`;
}

function describeNode(n, tokenStrs) {
  const name = n.kind === "embed" ? "embedding" : `L${n.layer} ${n.kind.replace("_", " ")}`;
  return `${name} · <span class="mono">${escapeHtml(showToken(tokenStrs[n.position]))}</span> (${n.position})`;
}

function escapeHtml(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function describeEdge(e, tokenStrs) {
  const s = parseNode(e.source);
  const t = parseNode(e.target);
  const tok = (p) => `<span class="mono">${escapeHtml(showToken(tokenStrs[p]))}</span>`;
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

/**
 * Draw `routes` into `svg`. opts: {tokenStrs, target, nLayers, box, zoom, selected, nPrompt,
 * tooltip, onEdge(edge), onNode(node), onToken(position)}.
 */
export function renderGraph(svg, routes, opts) {
  const { tokenStrs, target, nLayers } = opts;
  const L = layout(tokenStrs, nLayers, opts.box, opts.zoom || 1);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${L.width} ${L.height}`);
  svg.setAttribute("width", L.width);
  svg.setAttribute("height", L.height);

  const bg = svgEl("g", { class: "background" });
  for (let layer = 0; layer < nLayers; layer++) {
    const top = L.y("resid_post", layer) - L.row / 2;
    if (layer % 2 === 0) {
      bg.append(svgEl("rect", { class: "band", x: 0, y: top, width: L.width, height: 2 * L.row }));
    }
    if (L.row >= 7 || layer % 5 === 0 || layer === nLayers - 1) {
      const label = svgEl("text", { class: "layer-label", x: 8, y: L.y("mlp", layer) + 4 });
      label.textContent = `L${layer}`;
      bg.append(label);
    }
  }
  const embLabel = svgEl("text", { class: "layer-label", x: 8, y: L.y("embed") + 4 });
  embLabel.textContent = "emb";
  bg.append(embLabel);
  for (let p = 0; p < tokenStrs.length; p++) {
    bg.append(svgEl("line", { class: "col-line", x1: L.x(p), x2: L.x(p), y1: TOP - 6, y2: L.y("embed") }));
  }
  svg.append(bg);

  // Token labels along the bottom.
  const labels = svgEl("g", { class: "col-labels" });
  const maxChars = Math.max(3, Math.floor((L.col - 8) / 7.1));
  tokenStrs.forEach((text, p) => {
    let shown = showToken(text);
    if (shown.length > maxChars) shown = `${shown.slice(0, maxChars - 1)}…`;
    const cls = `col-label${p === target ? " target" : ""}`;
    const t = svgEl("text", { class: cls, x: L.x(p), y: L.y("embed") + 22, "text-anchor": "middle", "data-position": p });
    t.textContent = shown;
    t.addEventListener("click", () => opts.onToken?.(p));
    const title = svgEl("title");
    title.textContent = `${JSON.stringify(text)} (position ${p}) — click to explain its prediction`;
    t.append(title);
    const pos = svgEl("text", { class: "col-pos", x: L.x(p), y: L.y("embed") + 35, "text-anchor": "middle" });
    pos.textContent = opts.nPrompt !== undefined && p >= opts.nPrompt ? `${p}*` : p;
    labels.append(t, pos);
  });
  svg.append(labels);

  const tip = opts.tooltip;
  const showTip = (evt, html) => {
    if (!tip) return;
    tip.innerHTML = html;
    tip.hidden = false;
    tip.style.left = `${Math.min(window.innerWidth - 330, evt.clientX + 14)}px`;
    tip.style.top = `${evt.clientY + 14}px`;
  };
  const hideTip = () => {
    if (tip) tip.hidden = true;
  };

  // Edges: residual and MLP underneath, attention on top.
  const order = { residual: 0, mlp_in: 1, mlp_out: 1, self_attention: 2, attention: 3 };
  const edges = [...routes.links].sort((a, b) => order[a.kind] - order[b.kind] || a.weight - b.weight);
  const edgeLayer = svgEl("g", { class: "edges" });
  for (const e of edges) {
    const d = edgePath(e, L);
    const w = Math.max(0, Math.min(1, e.weight));
    const g = svgEl("g", { class: "edge-g", "data-key": edgeKey(e), "data-kind": e.kind });
    g.append(
      svgEl("path", {
        class: `edge ${e.kind}`,
        d,
        "stroke-width": (0.6 + 5 * Math.sqrt(w)).toFixed(2),
        "stroke-opacity": (0.3 + 0.7 * Math.sqrt(w)).toFixed(2),
      }),
    );
    const hit = svgEl("path", { class: `hit ${e.kind}`, d });
    hit.addEventListener("click", (evt) => {
      evt.stopPropagation();
      hideTip();
      opts.onEdge?.(e);
    });
    hit.addEventListener("mousemove", (evt) => showTip(evt, describeEdge(e, tokenStrs)));
    hit.addEventListener("mouseleave", hideTip);
    g.append(hit);
    if (opts.selected === edgeKey(e)) g.classList.add("selected");
    edgeLayer.append(g);
  }
  svg.append(edgeLayer);

  const nodeLayer = svgEl("g", { class: "nodes" });
  const finalId = `L${nLayers - 1}/resid_post/${target}`;
  for (const n of routes.nodes) {
    const [cx, cy] = L.point(n.id);
    let shape;
    if (n.kind === "mlp") {
      const half = L.radius + 0.6;
      shape = svgEl("rect", { x: cx - half, y: cy - half, width: 2 * half, height: 2 * half, rx: 1.5, class: "node mlp" });
    } else {
      const cls = n.kind === "embed" ? "node embed" : "node resid";
      shape = svgEl("circle", { cx, cy, r: n.kind === "embed" ? L.radius + 0.6 : L.radius, class: cls });
    }
    if (n.id === finalId) shape.classList.add("target-node");
    if (opts.selected === n.id) shape.classList.add("selected");
    shape.setAttribute("data-id", n.id);
    shape.setAttribute("data-kind", n.kind);
    shape.addEventListener("click", (evt) => {
      evt.stopPropagation();
      hideTip();
      opts.onNode?.(n);
    });
    shape.addEventListener("mousemove", (evt) => showTip(evt, describeNode(n, tokenStrs)));
    shape.addEventListener("mouseleave", hideTip);
    nodeLayer.append(shape);
  }
  svg.append(nodeLayer);
  return L;
}

/** Mark one edge or node as selected without redrawing. */
export function markSelected(svg, key) {
  svg.querySelectorAll(".selected").forEach((n) => n.classList.remove("selected"));
  if (!key) return;
  const g = svg.querySelector(`g.edge-g[data-key="${CSS.escape(key)}"]`);
  if (g) g.classList.add("selected");
  const node = svg.querySelector(`[data-id="${CSS.escape(key)}"]`);
  if (node) node.classList.add("selected");
}

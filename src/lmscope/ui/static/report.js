// The HTML report: one explanation drawn offline from the data embedded in the page, with the
// explorer's own graph, token and panel modules. Clicking a token retargets every section.

import { el, showToken, fmt, pct, debounce } from "./util.js";
import { renderGraph, rethreshold, scrollToRoute, layout, parseNode } from "./graph.js";
import { renderTokens, saliencyView } from "./tokens.js";
import { barList, chips, heatmap, trajectoryChart, edgePanel, headView, neuronTable, neuronPanel, lensPanel, routeCheckView, NEURON_HINT } from "./panels.js";

const D = JSON.parse(document.getElementById("lmscope-data").textContent);
const $ = (id) => document.getElementById(id);
const explorable = new Set(D.targets);
const state = { target: D.target, zoom: 1, fit: false, selected: null, drawing: null };

/** The embedded graph (compact rows) as a node-link graph for graph.js's rethreshold. */
function fullGraph() {
  const G = D.graph;
  const pre = (l, p) => (l === 0 ? `embed/${p}` : `L${l - 1}/resid_post/${p}`);
  const links = [];
  for (const [code, layer, s, t, raw, heads] of G.edges) {
    const base = { layer, raw, weight: raw };
    if (code === 0) {
      links.push({ ...base, source: pre(layer, s), target: `L${layer}/resid_mid/${t}`, kind: s === t ? "self_attention" : "attention", heads });
    } else if (code === 1) {
      links.push({ ...base, source: pre(layer, t), target: `L${layer}/resid_mid/${t}`, kind: "residual" });
    } else if (code === 2) {
      links.push({ ...base, source: `L${layer}/resid_mid/${t}`, target: `L${layer}/resid_post/${t}`, kind: "residual" });
    } else {
      links.push({ ...base, source: `L${layer}/mlp/${t}`, target: `L${layer}/resid_post/${t}`, kind: "mlp_out" });
      const from = G.parallel ? pre(layer, t) : `L${layer}/resid_mid/${t}`;
      links.push({ ...base, source: from, target: `L${layer}/mlp/${t}`, kind: "mlp_in" });
    }
  }
  const ids = new Set(D.targets.map((t) => `L${D.n_layers - 1}/resid_post/${t}`));
  for (const e of links) ids.add(e.source).add(e.target);
  const nodes = [...ids].map((id) => {
    const n = { id, ...parseNode(id) };
    if (n.kind === "resid_mid") n.bias = G.attn_bias ? G.attn_bias[n.layer][n.position] : 0;
    if (n.kind === "resid_post") n.bias = G.mlp_bias ? G.mlp_bias[n.layer][n.position] : 0;
    return n;
  });
  const graph = { targets: D.targets, tau: G.floor, renormalise: false, norm: D.norm, n_layers: D.n_layers, n_tokens: D.tokens.length, n_heads: D.n_heads };
  return { directed: true, multigraph: true, graph, nodes, links };
}
const FULL = fullGraph();

function tau() {
  return Number($("tau").value);
}

function routes() {
  return rethreshold(FULL, tau(), { targets: [state.target], renormalise: $("renormalise").checked });
}

function here() {
  return D.per_target[String(state.target)];
}

function positionsText() {
  const t = D.targets;
  return t.length === D.tokens.length ? "every position" : `positions ${t[0]}–${t[t.length - 1]}`;
}

// ---- graph ----------------------------------------------------------------------------------
function graphBox() {
  const wrap = $("graph-wrap");
  return { width: wrap.clientWidth, height: wrap.clientHeight - 8 };
}

function drawGraph() {
  const shown = routes();
  state.drawing = renderGraph($("graph"), shown, {
    tokenStrs: D.tokens,
    target: state.target,
    nLayers: D.n_layers,
    box: graphBox(),
    zoom: state.zoom,
    fit: state.fit,
    selected: state.selected,
    tooltip: $("tooltip"),
    labels: $("graph-layers"),
    onEdge,
    onNode,
    onToken: (p) => explorable.has(p) && setTarget(p),
  });
  $("graph-footer").textContent =
    `${shown.nodes.length} nodes, ${shown.links.length} edges at τ = ${shown.graph.tau.toFixed(3)}` +
    `${shown.graph.renormalise ? " (renormalised)" : ""} · norm ${D.norm}`;
}

function panel(...children) {
  $("panel").replaceChildren(...children);
}

function note(text) {
  return el("p", { class: "muted" }, text);
}

function onNode(node) {
  state.selected = node.id;
  state.drawing.select(node.id);
  if (node.kind === "mlp") showNeurons(node.layer, node.position);
  else showLens(node.id);
}

function onEdge(edge) {
  const key = `${edge.source}>${edge.target}>${edge.kind}`;
  state.selected = key;
  state.drawing.select(key);
  if (edge.kind === "attention" || edge.kind === "self_attention") {
    const pos = parseNode(edge.target).position;
    const src = parseNode(edge.source).position;
    const box = el("div", { id: "edge-head" });
    const render = (selectedHead) =>
      edgePanel(edge, { token_strs: D.tokens }, {
        selectedHead,
        onHead: (layer, head) => {
          bars.replaceWith((bars = render(head)));
          box.replaceChildren(headDetails(layer, head, pos, [pos, src]));
        },
      });
    const top = edge.heads ? edge.heads.indexOf(Math.max(...edge.heads)) : 0;
    let bars = render(top);
    box.append(headDetails(edge.layer, top, pos, [pos, src]));
    panel(bars, el("hr", { class: "section-sep" }), box);
  } else if (edge.kind === "residual") {
    showLens(edge.target);
  } else {
    const mlp = edge.kind === "mlp_in" ? edge.target : edge.source;
    showNeurons(edge.layer, parseNode(mlp).position);
  }
}

function showNeurons(layer, pos) {
  const P = D.per_target[String(pos)];
  if (!P) return panel(note(`Neurons are embedded for ${positionsText()}; click a token there.`));
  const block = P.neurons[layer];
  panel(neuronPanel({ ...block, token_strs: D.tokens, block: P.promotions[`L${layer}/mlp`] }));
}

function showLens(id) {
  const { kind, layer, position } = parseNode(id);
  const name = kind === "embed" ? "embed" : `L${layer}/${kind}`;
  const P = D.per_target[String(position)];
  if (P) {
    const row = P.lens.find((r) => r.node === name);
    return panel(lensPanel({ ...row, token_strs: D.tokens }, { predicted: P.prediction[0].token }));
  }
  const top = D.node_lens[`${name}/${position}`];
  if (!top) return panel(note(`The logit lens is embedded for ${positionsText()} and for route nodes.`));
  panel(lensPanel({ node: name, position, top: top.map(([text, prob], rank) => ({ text, prob, rank })), token_strs: D.tokens }, {}));
}

/** One head at position `pos`: its maps when embedded, else the position's attention row. */
function headDetails(layer, head, pos, highlight) {
  const label = `L${layer}H${head}`;
  const P = D.per_target[String(pos)];
  const maps = D.head_maps[label];
  const promotion = P?.promotions[label];
  if (maps) {
    const data = {
      label,
      target: pos,
      importance: P ? P.head_importance[layer][head] : undefined,
      attention: { values: maps.attention },
      contribution: { values: maps.contribution },
      promotion,
      token_strs: D.tokens,
    };
    return headView(data, { tooltip: $("tooltip"), highlight });
  }
  const row = P?.head_rows[label];
  const box = el("div", { class: "head-view" }, el("h3", {}, `Head ${label}`));
  if (row) {
    const rows = row.map((v, j) => ({ label: `${j} ${showToken(D.tokens[j])}`, value: v })).sort((a, b) => b.value - a.value).slice(0, 12);
    box.append(el("p", { class: "hint" }, `attention of position ${pos} (top keys)`), barList(rows));
  } else {
    box.append(note("Full maps are embedded for the top heads of prompts up to 128 tokens."));
  }
  if (promotion) box.append(el("h3", {}, "Promotes"), chips(promotion.promoted, "pos"), el("h3", {}, "Suppresses"), chips(promotion.suppressed, "neg"));
  return box;
}

// ---- sections ---------------------------------------------------------------------------------
function section(id, title, ...children) {
  const box = $(id);
  box.dataset.target = state.target;
  box.replaceChildren(el("h2", {}, title), ...children.filter(Boolean));
}

function predictionSection(P) {
  const pred = P.prediction[0];
  section(
    "prediction",
    `Prediction at position ${state.target}`,
    el("div", { class: "kv" }, el("span", {}, "token"), el("b", { class: "mono" }, showToken(D.tokens[state.target])), el("span", {}, "predicts"), el("b", { class: "mono" }, `${showToken(pred.text)} ${pct(pred.prob)}`)),
    barList(P.prediction.map((t) => ({ label: showToken(t.text), value: t.prob, title: `id ${t.token} · logit ${fmt(t.logit)}` })), { fill: "prob", valueText: pct }),
    el("h3", {}, "Through the layers ", el("span", { class: "pill" }, `“${showToken(P.trajectory.text)}”`)),
    trajectoryChart(P.trajectory),
    el("p", { class: "hint" }, "Solid: rank of the predicted token in the logit lens (top = #1). Dashed: its probability."),
    // The route check was made for the explained position only (explain(route_check=True)).
    D.route_check && state.target === D.target ? el("h3", {}, "Route check") : null,
    D.route_check && state.target === D.target ? routeCheckView({ target_text: P.prediction.find((t) => t.token === D.route_check.target)?.text, ...D.route_check }) : null,
  );
}

function headsSection(P) {
  const nL = P.head_importance.length;
  const rows = [...P.head_importance].reverse();
  const box = el("div", { id: "head-box" });
  const open = (layer, head) => box.replaceChildren(headDetails(layer, head, state.target, null));
  section(
    "heads",
    `Heads at position ${state.target}`,
    el("p", { class: "hint" }, "Each head's share in the attention output at this position; click one for its maps."),
    heatmap(rows, {
      maxWidth: 400,
      rowLabels: rows.map((_, i) => `L${nL - 1 - i}`),
      colLabels: rows[0].map((_, h) => `H${h}`),
      cellHeight: Math.max(6, Math.min(14, Math.floor(300 / nL))),
      tooltip: $("tooltip"),
      describe: (i, j, v) => `L${nL - 1 - i}H${j}: ${fmt(v)}`,
      onCell: (i, j) => open(nL - 1 - i, j),
    }),
    barList(P.top_heads.map(([label, w]) => ({ label, value: w, key: label })), {
      onClick: (r) => open(...r.label.slice(1).split("H").map(Number)),
    }),
    box,
  );
  if (P.top_heads.length) open(...P.top_heads[0][0].slice(1).split("H").map(Number));
}

function neuronsSection(P) {
  const rows = [...P.neurons].reverse().flatMap((block) => block.neurons);
  section(
    "neurons",
    `Top neurons at position ${state.target}`,
    el("div", { class: "scroll" }, neuronTable(rows, { id: "report-neurons" })),
    el("p", { class: "hint" }, NEURON_HINT),
  );
}

function lensSection(P) {
  const change = (t) => (t.rank_change > 0 ? ` ▲${t.rank_change}` : t.rank_change < 0 ? ` ▼${-t.rank_change}` : "");
  const table = el(
    "table",
    { class: "data lens-nodes", id: "report-lens" },
    el("thead", {}, el("tr", {}, el("th", {}, "node"), el("th", {}, "entropy"), el("th", {}, "top tokens (probability, rank change)"))),
    el(
      "tbody",
      {},
      [...P.lens].reverse().map((r) =>
        el(
          "tr",
          { dataset: { node: r.node } },
          el("td", { class: "mono" }, r.node),
          el("td", { class: "num" }, fmt(r.entropy, 2)),
          el("td", {}, r.top.map((t) => el("span", { class: "lens-tok" }, el("span", { class: "mono" }, showToken(t.text)), el("span", { class: "num" }, `${pct(t.prob)}${change(t)}`)))),
        ),
      ),
    ),
  );
  section("lens", `Logit lens at position ${state.target}`, el("div", { class: "scroll" }, table));
}

function saliencySection(P) {
  const views = P.saliency.map((attr) => el("div", {}, el("h3", {}, attr.method.replace(/_/g, " ")), saliencyView(attr, D.tokens)));
  const hint = P.saliency.some((s) => s.method === "gradient_x_input")
    ? null
    : el("p", { class: "hint" }, `Gradient × input is embedded where it was computed (position ${D.target}, or every explorable position of a small model); attention rollout everywhere.`);
  section("saliency", `Input attribution for the prediction at position ${state.target}`, hint, ...views);
}

function drawSections() {
  const P = here();
  predictionSection(P);
  headsSection(P);
  neuronsSection(P);
  lensSection(P);
  saliencySection(P);
}

function drawTokens() {
  renderTokens($("tokens"), D.tokens, {
    target: state.target,
    onClick: setTarget,
    clickable: (p) => explorable.has(p),
    showPos: true,
    title: (p) => (explorable.has(p) ? `position ${p}: click to explain the prediction made here` : `position ${p} (not embedded in this report)`),
  });
  const pred = here().prediction[0];
  $("graph-summary").replaceChildren("Position ", el("b", {}, String(state.target)), " ", el("span", { class: "mono" }, `“${showToken(D.tokens[state.target])}”`), " predicts ", el("b", { class: "mono" }, `“${showToken(pred.text)}”`), ` (${pct(pred.prob)})`);
}

function setTarget(position) {
  if (!explorable.has(position)) return;
  state.target = position;
  state.selected = null;
  document.body.dataset.target = position;
  drawTokens();
  drawGraph();
  scrollToRoute($("graph-wrap"), state.drawing, position);
  drawSections();
  panel(note("Click an edge, an MLP block or a residual node in the graph."));
}

function init() {
  $("report-title").textContent = `${D.model} · ${D.tokens.length} tokens · ${D.n_layers} layers × ${D.n_heads} heads · norm ${D.norm}`;
  $("tokens-hint").textContent =
    D.targets.length === D.tokens.length
      ? "Click a token to explain the prediction made there: every section follows."
      : `Click a token at positions ${D.targets[0]}–${D.targets[D.targets.length - 1]} to explain the prediction made there (the others are not embedded): every section follows.`;
  const slider = $("tau");
  slider.min = D.graph.floor;
  slider.max = 0.5;
  slider.value = D.tau;
  $("tau-value").textContent = tau().toFixed(3);
  slider.addEventListener("input", () => {
    $("tau-value").textContent = tau().toFixed(3);
    drawGraph();
  });
  $("renormalise").checked = D.renormalise;
  $("renormalise").addEventListener("change", drawGraph);
  const zoomTo = (zoom, fit = false) => {
    state.zoom = Math.max(0.1, Math.min(4, zoom));
    state.fit = fit;
    drawGraph();
  };
  const current = () => (state.fit ? state.drawing.L.col / layout(D.tokens, D.n_layers, graphBox(), 1, false).col : state.zoom);
  $("zoom-in").addEventListener("click", () => zoomTo(current() * 1.25));
  $("zoom-out").addEventListener("click", () => zoomTo(current() / 1.25));
  $("zoom-fit").addEventListener("click", () => zoomTo(1, true));
  window.addEventListener("resize", debounce(drawGraph, 200));
  const t = D.timings;
  $("timings").textContent = Object.keys(t).length
    ? `Computed in Python when the explanation was made: ${Object.entries(t).map(([k, v]) => `${k.replace(/_/g, " ")} ${v.toFixed(3)} s`).join(" · ")}.`
    : "";
  setTarget(D.target);
}

init();

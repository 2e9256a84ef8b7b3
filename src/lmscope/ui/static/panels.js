// The inspector: overview of an explanation and the panels for a clicked edge, head, MLP or node.

import { el, svgEl, showToken, fmt, pct, ramp, esc } from "./util.js";
import { saliencyView } from "./tokens.js";

const INDIGO = [79, 70, 229];

/** Horizontal bars: rows [{label, value, title?, key?}]; values scaled to the largest. */
export function barList(rows, { onClick, selected, fill = "", valueText = fmt } = {}) {
  const max = Math.max(1e-12, ...rows.map((r) => Math.abs(r.value)));
  return el(
    "div",
    { class: "bars" },
    rows.map((r) =>
      el(
        "div",
        {
          class: `bar-row${onClick ? " clickable" : ""}${selected !== undefined && selected === r.key ? " selected" : ""}`,
          title: r.title,
          dataset: { key: r.key ?? r.label },
          onclick: onClick ? () => onClick(r) : undefined,
        },
        el("span", { class: "bar-label" }, r.label),
        el("span", { class: "bar-track" }, el("span", { class: `bar-fill ${fill}`, style: { width: `${(100 * Math.abs(r.value)) / max}%`, display: "block" } })),
        el("span", { class: "bar-value" }, valueText(r.value)),
      ),
    ),
  );
}

export function chips(tokens, cls) {
  return el(
    "div",
    { class: "chips" },
    tokens.map((t) => el("span", { class: `chip ${cls}`, title: `id ${t.token} · ${fmt(t.logit)}` }, showToken(t.text))),
  );
}

/**
 * A heatmap on a canvas. values[i][j]; rowLabels/colLabels (token strings) drawn when cells are
 * large enough; highlight [i, j] outlines a cell; onCell(i, j) makes cells clickable; colours
 * are |value / max| ** gamma.
 */
export function heatmap(values, { rowLabels, colLabels, rgb = INDIGO, highlight, onCell, tooltip, describe, maxWidth = 350, cellHeight, gamma = 0.5 } = {}) {
  const nRows = values.length;
  const nCols = values[0]?.length || 0;
  const showLabels = !!rowLabels;
  const labelW = showLabels ? 58 : 0;
  const labelH = showLabels ? 48 : 0;
  const cw = Math.max(3, Math.min(26, Math.floor((maxWidth - labelW) / Math.max(1, nCols))));
  const ch = cellHeight || cw;
  const canvas = el("canvas");
  const dpr = window.devicePixelRatio || 1;
  const width = labelW + cw * nCols + 2;
  const height = ch * nRows + labelH + 2;
  canvas.width = width * dpr;
  canvas.height = height * dpr;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  let max = 0;
  for (const row of values) for (const v of row) max = Math.max(max, Math.abs(v));
  max = max || 1;
  for (let i = 0; i < nRows; i++) {
    for (let j = 0; j < nCols; j++) {
      // gamma < 1 lifts small values so a map is not all white beside one large cell
      ctx.fillStyle = ramp(Math.abs(values[i][j] / max) ** gamma, rgb);
      ctx.fillRect(labelW + j * cw, i * ch, cw, ch);
    }
  }
  ctx.strokeStyle = "#e3e6eb";
  ctx.strokeRect(labelW + 0.5, 0.5, cw * nCols, ch * nRows);
  if (highlight) {
    const [hi, hj] = highlight;
    ctx.strokeStyle = "#111827";
    ctx.lineWidth = 2;
    ctx.strokeRect(labelW + hj * cw + 1, hi * ch + 1, cw - 2, ch - 2);
  }
  if (showLabels && ch >= 9) {
    ctx.fillStyle = "#667085";
    ctx.font = `${Math.min(11, ch - 1)}px ui-monospace, Menlo, Consolas, monospace`;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    rowLabels.forEach((t, i) => ctx.fillText(clip(showToken(t), 8), labelW - 4, i * ch + ch / 2));
    ctx.save();
    ctx.textAlign = "right";
    colLabels.forEach((t, j) => {
      ctx.save();
      ctx.translate(labelW + j * cw + cw / 2, ch * nRows + 4);
      ctx.rotate(-Math.PI / 3);
      ctx.fillText(clip(showToken(t), 7), 0, 0);
      ctx.restore();
    });
    ctx.restore();
  }
  const cellAt = (evt) => {
    const rect = canvas.getBoundingClientRect();
    const j = Math.floor((evt.clientX - rect.left - labelW) / cw);
    const i = Math.floor((evt.clientY - rect.top) / ch);
    return i >= 0 && i < nRows && j >= 0 && j < nCols ? [i, j] : null;
  };
  if (tooltip && describe) {
    canvas.addEventListener("mousemove", (evt) => {
      const cell = cellAt(evt);
      if (!cell) return void (tooltip.hidden = true);
      tooltip.innerHTML = describe(cell[0], cell[1], values[cell[0]][cell[1]]);
      tooltip.hidden = false;
      tooltip.style.left = `${Math.min(window.innerWidth - 330, evt.clientX + 14)}px`;
      tooltip.style.top = `${evt.clientY + 14}px`;
    });
    canvas.addEventListener("mouseleave", () => (tooltip.hidden = true));
  }
  if (onCell) {
    canvas.style.cursor = "pointer";
    canvas.addEventListener("click", (evt) => {
      const cell = cellAt(evt);
      if (cell) onCell(cell[0], cell[1]);
    });
  }
  return el("div", { class: "heatmap-wrap" }, canvas);
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/** The rank (log scale) and probability of the predicted token across the residual nodes. */
export function trajectoryChart(traj) {
  const w = 340;
  const h = 110;
  const pad = { l: 30, r: 8, t: 8, b: 20 };
  const n = traj.nodes.length;
  const X = (i) => pad.l + ((w - pad.l - pad.r) * i) / Math.max(1, n - 1);
  const maxRank = Math.max(1, ...traj.ranks);
  const Yr = (r) => pad.t + ((h - pad.t - pad.b) * Math.log10(r + 1)) / Math.log10(maxRank + 1);
  const Yp = (p) => pad.t + (h - pad.t - pad.b) * (1 - p);
  const svg = svgEl("svg", { class: "spark", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none" });
  svg.append(svgEl("line", { class: "axis", x1: pad.l, x2: w - pad.r, y1: h - pad.b, y2: h - pad.b }));
  svg.append(svgEl("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: h - pad.b }));
  svg.append(svgEl("path", { class: "line", d: traj.ranks.map((r, i) => `${i ? "L" : "M"}${X(i)},${Yr(r)}`).join(" ") }));
  svg.append(svgEl("path", { class: "line2", d: traj.probs.map((p, i) => `${i ? "L" : "M"}${X(i)},${Yp(p)}`).join(" ") }));
  const label = (x, y, text, anchor = "start") => {
    const t = svgEl("text", { x, y, "text-anchor": anchor });
    t.textContent = text;
    svg.append(t);
  };
  label(pad.l - 4, pad.t + 8, "#1", "end");
  label(pad.l - 4, h - pad.b, `#${maxRank + 1}`, "end");
  label(pad.l, h - 5, "emb");
  label(w - pad.r, h - 5, traj.nodes[n - 1], "end");
  return svg;
}

/**
 * The overview of one explanation. handlers: onHead(layer, head), onSaliency(method) -> Promise,
 * tooltip.
 */
export function overviewPanel(ex, handlers) {
  const target = ex.target;
  const predicted = ex.prediction[0];
  const root = el("div", { class: "overview" });
  root.append(
    el("h3", {}, "Prediction"),
    el(
      "div",
      { class: "kv" },
      el("span", {}, "position"),
      el("b", {}, `${target} · `, el("span", { class: "mono" }, showToken(ex.token_strs[target]))),
      el("span", {}, "next token"),
      el("b", {}, el("span", { class: "mono" }, showToken(predicted.text)), ` ${pct(predicted.prob)}`),
    ),
    barList(
      ex.prediction.map((t) => ({ label: showToken(t.text), value: t.prob, title: `id ${t.token} · logit ${fmt(t.logit)}` })),
      { fill: "prob", valueText: pct },
    ),
  );

  const traj = ex.trajectory;
  root.append(
    el("h3", {}, "Through the layers ", el("span", { class: "pill" }, `“${showToken(traj.text)}”`)),
    trajectoryChart(traj),
    el("p", { class: "hint" }, "Solid: rank of the predicted token in the logit lens (top = #1). Dashed: its probability."),
  );

  root.append(
    el("h3", {}, "Top heads at this position"),
    barList(
      ex.top_heads.slice(0, 8).map(([label, w]) => ({ label, value: w, key: label })),
      {
        onClick: (r) => {
          const [l, h] = r.label.slice(1).split("H").map(Number);
          handlers.onHead(l, h);
        },
      },
    ),
  );
  const nL = ex.head_importance.length;
  const rows = [...ex.head_importance].reverse();
  const nH = rows[0]?.length || 0;
  root.append(
    el("h3", {}, "Head importance (layers × heads)"),
    heatmap(rows, {
      maxWidth: 340,
      rowLabels: rows.map((_, i) => `L${nL - 1 - i}`),
      colLabels: Array.from({ length: nH }, (_, h) => `H${h}`),
      cellHeight: Math.max(6, Math.min(14, Math.floor(300 / nL))),
      tooltip: handlers.tooltip,
      describe: (i, j, v) => `L${nL - 1 - i}H${j}: ${fmt(v)}`,
      onCell: (i, j) => handlers.onHead(nL - 1 - i, j),
    }),
  );

  if (handlers.onRouteCheck || ex.route_check) {
    const box = el("div", { id: "route-check" });
    const button = el("button", { type: "button", class: "small", id: "route-check-btn", title: "ablate the route's heads and MLP blocks vs as many random ones (12 more forward passes)" }, "check route");
    const run = async () => {
      button.disabled = true;
      box.replaceChildren(el("p", { class: "muted" }, "ablating the route and random components…"));
      try {
        box.replaceChildren(routeCheckView(await handlers.onRouteCheck()));
      } catch (err) {
        box.replaceChildren(el("p", { class: "down" }, err.message));
      } finally {
        button.disabled = false;
      }
    };
    button.addEventListener("click", run);
    if (ex.route_check) box.replaceChildren(routeCheckView(ex.route_check));
    else box.replaceChildren(el("p", { class: "hint" }, "Does the route matter? Ablate its components against random ones."));
    root.append(el("h3", {}, "Route check ", handlers.onRouteCheck ? button : null), box);
  }

  const salBox = el("div", {});
  const method = el(
    "select",
    { "aria-label": "saliency method", id: "saliency-method" },
    ["gradient_x_input", "integrated_gradients", "attention_rollout"].map((m) => el("option", { value: m }, m.replace(/_/g, " "))),
  );
  const names = new Map(ex.tokens.map((t, i) => [t, ex.token_strs[i]]));
  for (const t of ex.prediction) names.set(t.token, t.text);
  const drawSaliency = (attr) =>
    salBox.replaceChildren(saliencyView({ target_text: names.get(attr.target), ...attr }, ex.token_strs));
  const load = async () => {
    salBox.replaceChildren(el("p", { class: "muted" }, "computing…"));
    try {
      drawSaliency(await handlers.onSaliency(method.value));
    } catch (err) {
      salBox.replaceChildren(el("p", { class: "down" }, err.message));
    }
  };
  method.addEventListener("change", load);
  root.append(el("h3", {}, "Input saliency ", method), salBox);
  const given = ex.saliency.find((s) => s.method !== "attention_rollout");
  if (given) {
    method.value = given.method;
    drawSaliency(given);
  } else {
    method.value = "gradient_x_input";
    load();
  }
  return root;
}

/** Per-head shares of one attention edge; clicking a head loads its maps into `headBox`. */
export function edgePanel(edge, ex, { onHead, selectedHead }) {
  const src = Number(edge.source.split("/").pop());
  const tgt = Number(edge.target.split("/").pop());
  const tok = (p) => el("span", { class: "mono" }, showToken(ex.token_strs[p]));
  const heads = edge.heads || [];
  const rows = heads
    .map((w, h) => ({ label: `L${edge.layer}H${h}`, value: w, key: h }))
    .sort((a, b) => b.value - a.value);
  return el(
    "div",
    {},
    el("h3", {}, `Attention edge · layer ${edge.layer}`),
    el(
      "div",
      { class: "kv" },
      el("span", {}, "from"),
      el("b", {}, tok(src), ` (${src})`),
      el("span", {}, "to"),
      el("b", {}, tok(tgt), ` (${tgt})`),
      el("span", {}, "weight"),
      el("b", {}, fmt(edge.weight), edge.raw !== edge.weight ? ` (raw ${fmt(edge.raw)})` : ""),
    ),
    el("h3", {}, "Contribution of each head"),
    el("div", { id: "head-bars" }, barList(rows, { onClick: (r) => onHead(edge.layer, r.key), selected: selectedHead })),
  );
}

/** One head: attention pattern, contribution map and the tokens it promotes at the target. */
export function headView(data, { tooltip, highlight }) {
  const strs = data.token_strs;
  const describe = (kind) => (i, j, v) =>
    `${kind} ${data.label}: <span class="mono">${esc(showToken(strs[i]))}</span> (${i}) ← <span class="mono">${esc(showToken(strs[j]))}</span> (${j}): ${fmt(v)}`;
  const labels = strs.length <= 48 ? { rowLabels: strs, colLabels: strs } : {};
  return el(
    "div",
    { class: "head-view", id: "head-view" },
    el("h3", {}, `Head ${data.label}`, " ", el("span", { class: "pill" }, `share at ${data.target}: ${fmt(data.importance)}`)),
    el("p", { class: "hint" }, "Attention pattern (query rows × key columns)"),
    heatmap(data.attention.values, { ...labels, tooltip, describe: describe("attention"), highlight }),
    el("p", { class: "hint" }, "Contribution map: share of the head's part from each key in the query's residual"),
    heatmap(data.contribution.values, { ...labels, rgb: [162, 89, 217], tooltip, describe: describe("contribution"), highlight }),
    data.promotion
      ? [el("h3", {}, `Promoted at position ${data.target}`), chips(data.promotion.promoted, "pos"), el("h3", {}, "Suppressed"), chips(data.promotion.suppressed, "neg")]
      : null,
  );
}

/**
 * What a neuron's part a·W_out[k] promotes at its position: the tokens of its output row's
 * projection (position-free), swapped when the activation a is negative, logits scaled by a.
 */
export function neuronInContext(n) {
  const scaled = (list) => list.map((t) => ({ ...t, logit: t.logit * n.activation }));
  if (n.activation >= 0) return { promoted: scaled(n.promoted), suppressed: scaled(n.suppressed) };
  return { promoted: scaled(n.suppressed), suppressed: scaled(n.promoted) };
}

/** Neurons as a table: label, share, activation and what each promotes / suppresses here. */
export function neuronTable(neurons, attrs = {}) {
  return el(
    "table",
    { class: "data neurons", ...attrs },
    el("thead", {}, el("tr", {}, el("th", {}, "neuron"), el("th", {}, "share"), el("th", {}, "act"), el("th", {}, "promotes / suppresses here"))),
    el(
      "tbody",
      {},
      neurons.map((n) => {
        const here = n.promoted ? neuronInContext(n) : null;
        return el(
          "tr",
          { dataset: { label: n.label } },
          el("td", { class: "mono" }, n.label),
          el("td", { class: "num" }, fmt(n.importance)),
          el("td", { class: "num" }, fmt(n.activation, 2)),
          el("td", { class: "chipcell" }, here ? [chips(here.promoted.slice(0, 4), "pos"), chips(here.suppressed.slice(0, 3), "neg")] : el("span", { class: "muted" }, "–")),
        );
      }),
    ),
  );
}

export const NEURON_HINT =
  "Share: the neuron's part a·W_out[k] in the residual after the block. Tokens: what that part promotes (green) and suppresses (red) here: W_out[k] projected through the unembedding, flipped when the activation a is negative.";

/** The top neurons of an MLP block with what they promote at this position. */
export function neuronPanel(data) {
  const strs = data.token_strs;
  return el(
    "div",
    {},
    el("h3", {}, `MLP block · layer ${data.layer}`),
    el(
      "div",
      { class: "kv" },
      el("span", {}, "position"),
      el("b", {}, `${data.position} · `, el("span", { class: "mono" }, showToken(strs[data.position]))),
      el("span", {}, "residual share"),
      el("b", {}, fmt(data.residual)),
    ),
    data.block ? [el("h3", {}, "The block's update promotes"), chips(data.block.promoted, "pos"), el("h3", {}, "and suppresses"), chips(data.block.suppressed, "neg")] : null,
    el("h3", {}, "Top neurons"),
    neuronTable(data.neurons, { id: "neuron-table" }),
    el("p", { class: "hint" }, NEURON_HINT),
  );
}

function rankChange(t) {
  if (t.rank_change === undefined || t.rank_change === null) return el("span", { class: "muted" }, "–");
  if (t.rank_change > 0) return el("span", { class: "up", title: `was #${t.prev_rank + 1}` }, `▲${t.rank_change}`);
  if (t.rank_change < 0) return el("span", { class: "down", title: `was #${t.prev_rank + 1}` }, `▼${-t.rank_change}`);
  return el("span", { class: "muted" }, "=");
}

/** A probability bar with its number beside it. */
export function probBar(prob, max = 1) {
  return el(
    "div",
    { class: "prob-cell" },
    el("div", { class: "bar-track" }, el("div", { class: "bar-fill prob", style: { width: `${(100 * (prob || 0)) / (max || 1)}%` } })),
    el("span", { class: "bar-value" }, pct(prob)),
  );
}

/** The logit-lens rows of one node: rank, token, probability (bar and number), logit, Δrank. */
export function lensRows(top, predicted, attrs = {}) {
  const maxProb = Math.max(1e-12, ...top.map((t) => t.prob || 0));
  return el(
    "table",
    { class: "data lens", ...attrs },
    el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "token"), el("th", {}, "prob"), el("th", {}, "logit"), el("th", {}, "Δrank"))),
    el(
      "tbody",
      {},
      top.map((t, i) =>
        el(
          "tr",
          { class: t.token === predicted ? "predicted" : "", title: t.token === predicted ? "the model's final prediction" : undefined },
          el("td", { class: "num" }, (t.rank ?? i) + 1),
          el("td", { class: "tokcell" }, showToken(t.text)),
          el("td", {}, probBar(t.prob, maxProb)),
          el("td", { class: "num" }, t.logit === undefined ? "–" : fmt(t.logit, 2)),
          el("td", { class: "num" }, rankChange(t)),
        ),
      ),
    ),
  );
}

/** The logit lens of a residual node with rank changes against the previous node. */
export function lensPanel(data, { onFinalNorm, predicted }) {
  const strs = data.token_strs;
  let toggle = null;
  if (onFinalNorm) {
    toggle = el("input", { type: "checkbox", id: "lens-final-norm" });
    toggle.checked = data.final_norm;
    toggle.addEventListener("change", () => onFinalNorm(toggle.checked));
  }
  return el(
    "div",
    {},
    el("h3", {}, `Logit lens · ${data.node}`),
    el(
      "div",
      { class: "kv" },
      el("span", {}, "position"),
      el("b", {}, `${data.position} · `, el("span", { class: "mono" }, showToken(strs[data.position]))),
      data.entropy !== undefined ? [el("span", {}, "entropy"), el("b", {}, `${fmt(data.entropy, 2)} nats`)] : null,
      data.previous !== undefined ? [el("span", {}, "compared with"), el("b", {}, data.previous || "—")] : null,
    ),
    toggle ? el("label", { class: "check" }, toggle, "through the final norm") : null,
    lensRows(data.top, predicted, { id: "lens-table" }),
  );
}

/**
 * The causal check of a route (`route_check` of an explanation): the drop of the watched
 * token's log-probability when the route's heads and MLP blocks are ablated, next to the mean
 * drop for as many random components off the route.
 */
export function routeCheckView(rc) {
  const kinds = rc.components.length
    ? `${rc.components.length} components on the route (${rc.components.slice(0, 12).join(", ")}${rc.components.length > 12 ? ", …" : ""})`
    : "no component is on the route at this τ";
  const rows = [
    { label: "route", value: rc.route_drop, key: "route", title: `log-prob drop when the route's components are zeroed` },
    { label: "random", value: rc.random_drop, key: "random", title: `mean of ${rc.random_drops.length} draws: ${rc.random_drops.map((d) => fmt(d, 3)).join(", ")}` },
  ];
  const verdict = rc.score > 0 ? "the route matters more than random components" : "the route matters no more than random components";
  return el(
    "div",
    { class: "route-check", dataset: { score: rc.score } },
    el(
      "div",
      { class: "kv" },
      el("span", {}, "watched"),
      el("b", {}, el("span", { class: "mono" }, showToken(rc.target_text ?? `<${rc.target}>`)), ` · log p ${fmt(rc.clean_logprob, 3)}`),
      el("span", {}, "faithfulness"),
      el("b", { class: "route-score", title: String(rc.score) }, `${fmt(rc.score, 3)} nats`),
    ),
    barList(rows, { valueText: (v) => fmt(v, 3) }),
    el("p", { class: "hint" }, `Drop of the watched token's log-probability when the route's components are ablated (${rc.mode}), and the mean drop for ${rc.random_drops.length} random sets of as many components off the route: ${verdict}. ${kinds}.`),
  );
}

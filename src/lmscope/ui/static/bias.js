// The explorer's "Bias" tab: counterfactual bias probes of the selected model through
// POST /v1/explain/bias. Every number shown is the server's (the explain library's); the cells
// carry the exact value in their title. A probe is the structure of a probe YAML file, as JSON.

import { el, svgEl, fmt, postJSON } from "./util.js";

const EXAMPLE = {
  probes: [
    {
      name: "gender-occupation",
      template: "The {group} worked as a",
      groups: { male: ["man", "father", "brother"], female: ["woman", "mother", "sister"] },
      targets: [" nurse", " doctor", " engineer"],
    },
  ],
};

/** The probes typed in the text box: a list, {probes: [...]} or one probe, as JSON. */
function typedProbes(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`the probes are not valid JSON (${err.message}); write them as in a probe YAML file, in JSON`);
  }
  if (value && !Array.isArray(value) && Array.isArray(value.probes)) value = value.probes;
  return Array.isArray(value) ? value : [value];
}

/** A number cell: short text, the exact value in its title. */
function num(value, cls = "num") {
  return el("td", { class: cls, title: String(value) }, fmt(value, 4));
}

/** Gap bars with their 95% CI whiskers on one symmetric axis around 0. */
export function gapChart(probe) {
  const rows = [];
  for (const t of probe.targets) {
    for (const [group, g] of Object.entries(t.gaps)) rows.push({ target: t.target, group, ...g });
  }
  const label = 118;
  const plot = 190;
  const rowH = 20;
  const width = label + plot + 78;
  const height = rowH * rows.length + 22;
  const span = Math.max(1e-12, ...rows.flatMap((r) => [Math.abs(r.ci[0]), Math.abs(r.ci[1]), Math.abs(r.gap)]));
  const X = (v) => label + (plot * (v / span + 1)) / 2;
  const svg = svgEl("svg", { class: "bias-chart", viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": `gaps of ${probe.name}` });
  const groups = new Set(rows.map((r) => r.group));
  rows.forEach((r, i) => {
    const y = 4 + rowH * i;
    const g = svgEl("g", { class: "bias-row", "data-target": r.target, "data-group": r.group, "data-gap": r.gap, "data-lo": r.ci[0], "data-hi": r.ci[1] });
    const name = svgEl("text", { x: label - 6, y: y + 12, "text-anchor": "end", class: "bias-label" });
    name.textContent = groups.size > 1 ? `${r.target.trim()} · ${r.group}` : r.target.trim();
    const x0 = X(0);
    const x1 = X(r.gap);
    const significant = r.ci[0] > 0 || r.ci[1] < 0;
    const bar = svgEl("rect", { x: Math.min(x0, x1), y: y + 3, width: Math.max(1, Math.abs(x1 - x0)), height: rowH - 8, class: `bias-bar ${r.gap >= 0 ? "pos" : "neg"}${significant ? " sig" : ""}` });
    const title = svgEl("title");
    title.textContent = `${r.group} − ${probe.reference}: ${r.gap} (95% CI ${r.ci[0]} … ${r.ci[1]})`;
    bar.append(title);
    const mid = y + rowH / 2 - 1;
    const whisker = [
      svgEl("line", { x1: X(r.ci[0]), x2: X(r.ci[1]), y1: mid, y2: mid, class: "bias-ci" }),
      svgEl("line", { x1: X(r.ci[0]), x2: X(r.ci[0]), y1: mid - 4, y2: mid + 4, class: "bias-ci" }),
      svgEl("line", { x1: X(r.ci[1]), x2: X(r.ci[1]), y1: mid - 4, y2: mid + 4, class: "bias-ci" }),
    ];
    const value = svgEl("text", { x: label + plot + 6, y: y + 12, class: "bias-value" });
    value.textContent = `${r.gap >= 0 ? "+" : ""}${fmt(r.gap, 4)}${significant ? " *" : ""}`;
    g.append(name, bar, ...whisker, value);
    svg.append(g);
  });
  const axisY = rowH * rows.length + 6;
  svg.append(svgEl("line", { x1: X(0), x2: X(0), y1: 2, y2: axisY, class: "bias-zero" }));
  for (const v of [-span, 0, span]) {
    const tick = svgEl("text", { x: X(v), y: axisY + 12, "text-anchor": "middle", class: "bias-tick" });
    tick.textContent = v === 0 ? "0" : fmt(v, 3);
    svg.append(tick);
  }
  return svg;
}

/** Mean probability per group and each gap with its CI, one row per target. */
function probabilityTable(probe) {
  const groups = Object.keys(probe.groups);
  const others = groups.filter((g) => g !== probe.reference);
  const head = el("tr", {}, el("th", {}, "target"), ...groups.map((g) => el("th", {}, `P | ${g}`)), ...others.flatMap((g) => [el("th", {}, `gap ${g}`), el("th", {}, "95% CI")]));
  const rows = probe.targets.map((t) =>
    el(
      "tr",
      { dataset: { target: t.target } },
      el("td", { class: "tokcell" }, JSON.stringify(t.target)),
      ...groups.map((g) => num(t.mean[g])),
      ...others.flatMap((g) => [num(t.gaps[g].gap, "num gap"), el("td", { class: "num ci", title: `${t.gaps[g].ci[0]} ${t.gaps[g].ci[1]}` }, `${fmt(t.gaps[g].ci[0], 4)} … ${fmt(t.gaps[g].ci[1], 4)}`)]),
    ),
  );
  return el("table", { class: "data bias-probs" }, el("thead", {}, head), el("tbody", {}, rows));
}

/** The heads and neurons ranked by |mean importance difference| from the reference group. */
function componentTable(probe) {
  const parts = [];
  for (const [group, kinds] of Object.entries(probe.components)) {
    const rows = [];
    for (const kind of ["heads", "neurons"]) {
      kinds[kind].forEach((c, i) =>
        rows.push(el("tr", { dataset: { component: c.component } }, el("td", { class: "num" }, String(i + 1)), el("td", { class: "mono" }, c.component), el("td", {}, kind.slice(0, -1)), num(c.diff, "num diff"))),
      );
    }
    parts.push(
      el("h4", {}, `Carrying ${group} − ${probe.reference}`),
      el("table", { class: "data bias-components", dataset: { group } }, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "component"), el("th", {}, "kind"), el("th", {}, "importance diff"))), el("tbody", {}, rows)),
    );
  }
  return parts;
}

function probeCard(probe) {
  const counts = Object.entries(probe.groups).map(([g, n]) => `${g} ${n}`).join(", ");
  return el(
    "div",
    { class: "bias-probe", dataset: { probe: probe.name } },
    el("h3", {}, probe.name),
    el("p", { class: "hint" }, el("code", {}, probe.template), ` · prompts per group: ${counts} · reference: ${probe.reference}`),
    gapChart(probe),
    el("div", { class: "scroll" }, probabilityTable(probe)),
    ...componentTable(probe),
  );
}

/** Returns open(): shows the form in `panel` (once) and keeps the last result. */
export function biasTab(panel, { model }) {
  let built = false;
  let running = null; // AbortController of the request in flight
  const which = el("select", { id: "bias-set", "aria-label": "probe set" }, el("option", { value: "builtin" }, "built-in set (gender, age)"), el("option", { value: "custom" }, "my probes (JSON)"));
  const text = el("textarea", { id: "bias-probes", rows: 9, spellcheck: "false", hidden: true }, JSON.stringify(EXAMPLE, null, 1));
  const nBoot = el("input", { id: "bias-nboot", type: "number", min: 1, max: 10000, value: 1000 });
  const run = el("button", { type: "button", class: "primary", id: "bias-run" }, "Run probes");
  const stop = el("button", { type: "button", id: "bias-stop", hidden: true }, "Stop");
  const out = el("div", { id: "bias-out" });
  which.addEventListener("change", () => (text.hidden = which.value !== "custom"));

  async function go() {
    let probes = "builtin";
    try {
      if (which.value === "custom") probes = typedProbes(text.value);
    } catch (err) {
      out.replaceChildren(el("p", { class: "down" }, err.message));
      return;
    }
    running?.abort();
    const controller = (running = new AbortController());
    run.disabled = true;
    stop.hidden = false;
    out.replaceChildren(el("p", { class: "muted" }, "Running the probes (one forward and route graph per prompt)…"));
    try {
      const body = await postJSON("/v1/explain/bias", { model: model(), probes, n_boot: Number(nBoot.value) }, controller.signal);
      out.replaceChildren(
        el("p", { class: "hint", id: "bias-summary" }, `${body.model} (${body.weights}) · ${body.n_prompts} prompts · ${body.meta.n_boot} bootstrap resamples. A gap is mean P(target | group) − mean P(target | ${body.probes[0]?.reference ?? "reference"}); * marks a 95% CI that excludes 0.`),
        ...body.probes.map(probeCard),
      );
    } catch (err) {
      if (err.name === "AbortError") out.replaceChildren(el("p", { class: "muted" }, "Stopped."));
      else out.replaceChildren(el("p", { class: "down", id: "bias-error" }, err.param ? `${err.param}: ${err.message}` : err.message));
    } finally {
      if (running === controller) {
        running = null;
        run.disabled = false;
        stop.hidden = true;
      }
    }
  }
  run.addEventListener("click", go);
  stop.addEventListener("click", () => running?.abort());

  return function open() {
    if (built) return;
    built = true;
    panel.replaceChildren(
      el("h3", {}, "Bias probes"),
      el("p", { class: "hint" }, "Templates filled from each group's words; the probability of each target continuation is compared between groups (95% bootstrap CI), and the heads and neurons whose importance differs most are ranked. At most 200 filled prompts."),
      el("div", { class: "row" }, which, el("label", { class: "inline" }, "bootstrap ", nBoot)),
      text,
      el("div", { class: "row" }, stop, run),
      out,
    );
  };
}

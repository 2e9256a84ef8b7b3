// The Experiments tab: the live A/B report of every alias route (GET /v1/experiments), refreshed
// while the tab is open. Every number is shown with its count; nothing is computed here.
import { el, fmt, getJSON, svgEl } from "./util.js";

const REFRESH_MS = 5000;

/** Satisfaction of each version as a bar with its 95% interval on a [0, 1] axis. */
function satisfactionBars(versions) {
  const names = Object.keys(versions);
  const width = 170;
  const height = 24 * names.length + 8;
  const svg = svgEl("svg", { viewBox: `0 0 ${width + 150} ${height}`, width: "100%", class: "ab-bars" });
  names.forEach((name, i) => {
    const sat = versions[name].satisfaction;
    const y = 6 + 24 * i;
    const label = svgEl("text", { x: 0, y: y + 12 });
    label.textContent = name;
    svg.append(label);
    if (!sat) return;
    const x = (v) => 70 + width * Math.max(0, Math.min(1, v));
    svg.append(svgEl("rect", { x: 70, y, width: x(sat.value) - 70, height: 14, class: "ab-bar" }));
    svg.append(svgEl("line", { x1: x(sat.ci95[0]), x2: x(sat.ci95[1]), y1: y + 7, y2: y + 7, class: "ab-ci" }));
    const value = svgEl("text", { x: x(sat.ci95[1]) + 4, y: y + 12 });
    value.textContent = `${fmt(sat.value, 2)} (n=${sat.n})`;
    svg.append(value);
  });
  return svg;
}

function versionTable(versions) {
  const rows = Object.entries(versions).map(([name, v]) =>
    el("tr", {}, el("td", {}, name), el("td", {}, v.requests), el("td", {}, v.errors),
      el("td", {}, v.feedback), el("td", {}, fmt(v.latency_p50_s, 2)), el("td", {}, fmt(v.latency_p95_s, 2))),
  );
  return el("table", { class: "ab-table" },
    el("tr", {}, ...["version", "req.", "err.", "ratings", "p50 s", "p95 s"].map((h) => el("th", {}, h))),
    ...rows);
}

function experimentCard(report) {
  const parts = [el("h3", {}, `Experiment “${report.alias}”`)];
  if (report.weights) parts.push(el("p", { class: "muted" }, `configured split ${JSON.stringify(report.weights)}`));
  parts.push(versionTable(report.versions), satisfactionBars(report.versions));
  const comparison = report.comparison || {};
  if (comparison.verdict) parts.push(el("p", { class: comparison.significant ? "ab-verdict sig" : "ab-verdict" }, comparison.verdict));
  else if (comparison.note) parts.push(el("p", { class: "muted" }, comparison.note));
  const srm = report.sample_ratio;
  if (srm) {
    parts.push(el("p", { class: srm.mismatch ? "ab-srm bad" : "ab-srm" },
      `sample ratio: χ² ${fmt(srm.chi2, 2)}, p ${fmt(srm.p_value, 3)}` +
      (srm.mismatch ? " — mismatch: the split is broken, do not trust the comparison" : " — split as configured")));
  }
  for (const [name, s] of Object.entries(report.shadow || {})) {
    parts.push(el("p", { class: "muted" }, `shadow ${name}: ${s.answers} answers, ${s.errors} errors (logged, never returned)`));
  }
  return el("div", { class: "ab-experiment" }, ...parts);
}

/** Fill `panel` with the live report now and every few seconds while `visible()` says so. */
export function experimentsTab(panel, visible) {
  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const answer = await getJSON("/v1/experiments");
      const cards = answer.data.map(experimentCard);
      panel.replaceChildren(...(cards.length ? cards : [el("p", { class: "muted" }, "No experiment yet: serve with --route ALIAS=ID:W,ID:W.")]));
    } catch (err) {
      panel.replaceChildren(el("p", { class: "muted" }, err.message));
      return; // a server without experiments: nothing to refresh
    }
    if (visible()) timer = setTimeout(refresh, REFRESH_MS);
  }
  return refresh;
}

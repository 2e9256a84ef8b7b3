// One token renderer and one saliency colour scale, shared by the explorer and the HTML report.

import { el, showToken, fmt, ramp } from "./util.js";

const UP = [15, 157, 88]; // raises the explained score
const DOWN = [217, 48, 37]; // lowers it
const UNSIGNED = [79, 70, 229]; // attention rollout: a share, never negative

/** Background and text colour of a saliency score `value` scaled by `max` (|value| <= max). */
export function saliencyColour(value, max, signed = true) {
  const t = Math.min(1, Math.abs(value) / (max || 1));
  const rgb = !signed ? UNSIGNED : value >= 0 ? UP : DOWN;
  return { background: ramp(t, rgb), color: t > 0.6 ? "#fff" : "" };
}

/** The colour scale as a legend: the same function sampled into a gradient, with end labels. */
export function saliencyLegend(max, signed = true) {
  const stops = [];
  const lo = signed ? -1 : 0;
  for (let i = 0; i <= 10; i++) {
    const v = lo + ((1 - lo) * i) / 10;
    stops.push(`${saliencyColour(v * max, max, signed).background} ${i * 10}%`);
  }
  return el(
    "div",
    { class: "sal-legend", "aria-label": "saliency colour scale" },
    el("span", { class: "sal-legend-end" }, signed ? `${fmt(-max, 3)} lowers` : "0"),
    el("span", { class: "sal-legend-bar", style: { background: `linear-gradient(to right, ${stops.join(", ")})` } }),
    el("span", { class: "sal-legend-end" }, signed ? `raises ${fmt(max, 3)}` : fmt(max, 3)),
  );
}

/**
 * One token chip. opts: {target, generated, onClick(p), disabled, showPos, score, max, signed,
 * title}. The chip's text is the token made visible (spaces as dots, newlines as arrows).
 */
export function tokenChip(text, p, opts = {}) {
  const cls = ["tok"];
  if (opts.target === p) cls.push("target");
  if (opts.generated) cls.push("generated");
  if (opts.disabled) cls.push("disabled");
  if (!opts.onClick || opts.disabled) cls.push("static");
  const style = {};
  if (opts.score !== undefined) Object.assign(style, saliencyColour(opts.score, opts.max, opts.signed));
  return el(
    "span",
    {
      class: cls.join(" "),
      style,
      title: opts.title ?? (opts.score !== undefined ? `${p}: ${fmt(opts.score, 4)}` : `position ${p}`),
      dataset: { position: p },
      onclick: opts.onClick && !opts.disabled ? () => opts.onClick(p) : undefined,
    },
    opts.showPos ? el("span", { class: "pos" }, p) : null,
    showToken(text),
  );
}

/**
 * Fill `box` with the token chips of a prompt. opts: {target, nPrompt, onClick(p),
 * clickable(p) -> bool, showPos, title(p)}.
 */
export function renderTokens(box, tokenStrs, opts = {}) {
  box.replaceChildren(
    ...tokenStrs.map((text, p) =>
      tokenChip(text, p, {
        target: opts.target,
        generated: opts.nPrompt !== undefined && p >= opts.nPrompt,
        onClick: opts.onClick,
        disabled: opts.clickable ? !opts.clickable(p) : false,
        showPos: opts.showPos,
        title: opts.title?.(p),
      }),
    ),
  );
  const chip = box.querySelector(".tok.target");
  if (chip) {
    // scroll the strip itself (never the page) so that the target is in view
    const top = chip.getBoundingClientRect().top - box.getBoundingClientRect().top;
    if (top < 0 || top + chip.offsetHeight > box.clientHeight) box.scrollTop += top - (box.clientHeight - chip.offsetHeight) / 2;
  }
  return box;
}

/** An attribution ({method, scores, position, target_text?, foil_text?}) as coloured tokens. */
export function saliencyView(attr, tokenStrs) {
  const max = Math.max(1e-12, ...attr.scores.map(Math.abs));
  const signed = attr.method !== "attention_rollout";
  const what =
    attr.target_text !== undefined && attr.target_text !== null
      ? `score of “${showToken(attr.target_text)}”${attr.foil_text ? ` − “${showToken(attr.foil_text)}”` : ""}`
      : attr.target !== null && attr.target !== undefined
        ? `score of token ${attr.target}`
        : "head-averaged attention";
  const chips = attr.scores.map((s, i) => tokenChip(tokenStrs[i], i, { score: s, max, signed }));
  return el(
    "div",
    { class: "saliency", dataset: { method: attr.method, position: attr.position } },
    el("p", { class: "hint" }, `${what} at position ${attr.position}`),
    saliencyLegend(max, signed),
    el("div", { class: "tokens sal-tokens" }, chips),
  );
}

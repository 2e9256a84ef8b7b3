// Small helpers shared by the explorer and the report: DOM building, token display, number formats, the API.

/** Create an element: el("div", {class: "x", onclick: f}, child, "text", ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element with attributes. */
export function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  return node;
}

/** A token made visible: spaces as middle dots, newlines and tabs as symbols. */
export function showToken(text) {
  if (text === null || text === undefined) return "∅";
  if (text === "") return "∅";
  return text.replace(/ /g, "·").replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "␍");
}

/** Text escaped for innerHTML. */
export function esc(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a < 10 ** -digits || a >= 1e5)) return x.toExponential(1);
  return x.toFixed(digits);
}

export function pct(x) {
  if (x === null || x === undefined) return "–";
  if (x < 0.001) return "<0.1%";
  return `${(100 * x).toFixed(x < 0.1 ? 1 : 0)}%`;
}

/** An error answered by the server as an OpenAI error object. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.param = error?.param ?? null;
    this.code = error?.code ?? null;
    this.type = error?.type ?? null;
  }
}

export function apiHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = localStorage.getItem("lmscope.apiKey");
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function parseError(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    error = { message: `${response.status} ${response.statusText}` };
  }
  return new ApiError(response.status, error);
}

/** POST JSON and return the parsed answer; throws ApiError on an error status. */
export async function postJSON(path, body, signal) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: apiHeaders(), body: JSON.stringify(body), signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { message: `cannot reach the server (${err.message})` });
  }
  if (!response.ok) throw await parseError(response);
  return response.json();
}

export async function getJSON(path) {
  const response = await fetch(path, { headers: apiHeaders() });
  if (!response.ok) throw await parseError(response);
  return response.json();
}

/** Read an OpenAI SSE stream; calls onChunk(parsed) for each `data:` event until [DONE]. */
export async function streamSSE(path, body, onChunk, signal) {
  const response = await fetch(path, { method: "POST", headers: apiHeaders(), body: JSON.stringify(body), signal });
  if (!response.ok) throw await parseError(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(parsed.error.code === "timeout" ? 408 : 500, parsed.error);
        onChunk(parsed);
      }
    }
  }
}

/** Colour for a value in [0, 1] between white and an rgb colour. */
export function ramp(value, rgb) {
  const t = Math.max(0, Math.min(1, value));
  const mix = (c) => Math.round(255 + (c - 255) * t);
  return `rgb(${mix(rgb[0])},${mix(rgb[1])},${mix(rgb[2])})`;
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

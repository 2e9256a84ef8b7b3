// lmscope explorer: wires the prompt, the route graph, the inspector and the generation panel.

import { el, showToken, fmt, pct, postJSON, getJSON, debounce } from "./util.js";
import { renderGraph, rethreshold, markSelected, edgeKey, scrollToRoute, layout } from "./graph.js";
import { renderTokens } from "./tokens.js";
import { generator } from "./generation.js";
import { experimentsTab } from "./experiments.js";
import { biasTab } from "./bias.js";
import { cardTab } from "./card.js";
import { overviewPanel, edgePanel, headView, neuronPanel, lensPanel } from "./panels.js";

const EXAMPLES = [
  "The capital of France is",
  "When Mary and John went to the store, John gave a drink to",
  "The Eiffel Tower is located in the city of",
  "1, 2, 3, 4, 5,",
  "def add(a, b):\n    return",
  "The opposite of hot is",
];

const $ = (id) => document.getElementById(id);
const state = {
  source: null, // what every explain request repeats: {model, prompt | messages, completion, norm}
  ex: null, // the last explanation
  asked: null, // the request body that produced it
  routes: null, // the route graph as fetched (at routes.graph.tau)
  shown: null, // the graph drawn (re-thresholded client-side while the slider moves)
  selected: null,
  zoom: 1, // multiplies the readable row height and column width
  fit: false, // the whole graph in the box
  elapsed: null, // seconds the last explanation took, measured here (request to answer)
  seq: 0,
};

// ---- errors and busy state --------------------------------------------------------------------
function showError(err) {
  if (err?.name === "AbortError") return;
  const status = err?.status ? `${err.status}` : "Error";
  $("error-title").textContent = err?.param ? `${status} · ${err.param}:` : `${status}:`;
  $("error-message").textContent = err?.message || String(err);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function busy(on, text = "Explaining…") {
  $("busy").hidden = !on;
  $("busy-text").textContent = text;
  $("explain-btn").disabled = on;
}

// ---- sources ------------------------------------------------------------------------------------
function tau() {
  return Number($("tau").value);
}

function promptSource(completion) {
  const text = $("prompt").value;
  const source = { model: $("model-select").value || undefined, norm: $("norm").value };
  if ($("chat-mode").checked) source.messages = [{ role: "user", content: text }];
  else source.prompt = text;
  if (completion) source.completion = completion;
  return source;
}

// ---- explaining -----------------------------------------------------------------------------------
async function explain(source, extra = {}) {
  const seq = ++state.seq;
  busy(true);
  const started = performance.now();
  try {
    const asked = {
      ...source,
      tau: tau(),
      renormalise: $("renormalise").checked,
      k: 10,
      saliency: false, // the overview fetches it after the graph is drawn
      ...extra,
    };
    const ex = await postJSON("/v1/explain", asked);
    if (seq !== state.seq) return null;
    clearError();
    state.asked = { ...asked, model: ex.model }; // what "check route" asks again
    // Pin the model that answered (an A/B route alias could pick another one next time).
    state.source = { ...source, model: ex.model };
    state.ex = ex;
    state.elapsed = (performance.now() - started) / 1000;
    state.routes = ex.routes;
    state.shown = shownRoutes();
    state.selected = null;
    drawAll();
    scrollToRoute($("graph-wrap"), $("graph")._graph, ex.target);
    showOverview();
    return ex;
  } catch (err) {
    if (seq === state.seq) showError(err);
    return null;
  } finally {
    if (seq === state.seq) busy(false);
  }
}

function sub(path, body) {
  return postJSON(path, { ...state.source, ...body });
}

function drawAll() {
  const ex = state.ex;
  if (!ex) return;
  $("graph-empty").hidden = true;
  drawTokens();
  drawGraph();
  const pred = ex.prediction[0];
  const summary = $("graph-summary");
  summary.replaceChildren(
    "Position ",
    el("b", {}, String(ex.target)),
    " ",
    el("span", { class: "mono" }, `“${showToken(ex.token_strs[ex.target])}”`),
    " predicts ",
    el("b", { class: "mono" }, `“${showToken(pred.text)}”`),
    ` (${pct(pred.prob)})`,
  );
  if (ex.next_token) {
    const nt = ex.next_token;
    summary.append(
      " · actual next ",
      el("b", { class: "mono" }, `“${showToken(nt.text)}”`),
      ` rank #${nt.rank + 1} (${pct(nt.prob)})`,
    );
  }
  drawFooter();
}

function drawFooter() {
  const ex = state.ex;
  const g = state.shown;
  const trace = ex.timings?.trace;
  const parts = [
    ex.model,
    `${ex.tokens.length} tokens`,
    `${ex.n_layers} layers × ${ex.n_heads} heads`,
    `${g.nodes.length} nodes, ${g.links.length} edges at τ = ${g.graph.tau.toFixed(3)}${g.graph.renormalise ? " (renormalised)" : ""}`,
    `norm ${ex.norm}`,
  ];
  if (ex.cached) parts.push("trace reused");
  else if (trace !== undefined) parts.push(`traced in ${fmt(trace, 2)} s`);
  // measured in the browser: the whole request, network and queue included
  if (state.elapsed !== null) parts.push(`answered in ${fmt(state.elapsed, 2)} s`);
  $("graph-footer").textContent = parts.join(" · ");
}

/** The routes to draw: the fetched graph re-thresholded (and renormalised) in the browser. */
function shownRoutes() {
  return rethreshold(state.routes, Math.max(tau(), state.routes.graph.tau), { renormalise: $("renormalise").checked });
}

function graphBox() {
  const wrap = $("graph-wrap");
  return { width: wrap.clientWidth, height: wrap.clientHeight - 8 };
}

/** The column width of the readable layout at zoom 1 (what zoom multiplies). */
function layoutCol() {
  return layout(state.ex.token_strs, state.ex.n_layers, graphBox(), 1, false).col;
}



function drawTokens() {
  const ex = state.ex;
  renderTokens($("tokens"), ex.token_strs, {
    target: ex.target,
    nPrompt: ex.n_prompt_tokens,
    onClick: setTarget,
    showPos: true,
    title: (p) => `position ${p} · id ${ex.tokens[p]} — click to explain the prediction made here`,
  });
}

function drawGraph() {
  const ex = state.ex;
  renderGraph($("graph"), state.shown, {
    tokenStrs: ex.token_strs,
    target: ex.target,
    nLayers: ex.n_layers,
    nPrompt: ex.n_prompt_tokens,
    box: graphBox(),
    zoom: state.zoom,
    fit: state.fit,
    labels: $("graph-layers"),
    selected: state.selected,
    tooltip: $("tooltip"),
    onEdge,
    onNode,
    onToken: setTarget,
  });
}

function setTarget(position) {
  if (!state.source) return;
  explain(state.source, { target: position });
}

// ---- the tau slider: instant client-side re-threshold, exact graph from the server after -----
const refetchRoutes = debounce(async () => {
  if (!state.ex) return;
  const seq = state.seq;
  try {
    const body = await sub("/v1/explain/routes", {
      target: state.ex.target,
      tau: tau(),
      renormalise: $("renormalise").checked,
    });
    if (seq !== state.seq) return;
    state.routes = body.routes;
    state.shown = shownRoutes();
    drawGraph();
    drawFooter();
  } catch (err) {
    showError(err);
  }
}, 250);

function onTau() {
  $("tau-value").textContent = tau().toFixed(3);
  if (!state.routes) return;
  state.shown = shownRoutes();
  drawGraph();
  drawFooter();
  // The fetched graph holds every edge above its own tau: only a lower tau needs the server.
  if (tau() < state.routes.graph.tau) refetchRoutes();
}

function onRenormalise() {
  if (!state.routes) return;
  state.shown = shownRoutes();
  drawGraph();
  drawFooter();
}

// ---- inspector ----------------------------------------------------------------------------------
const refreshCard = cardTab($("panel-card"));
const refreshExperiments = experimentsTab($("panel-experiments"), () => !$("panel-experiments").hidden);

const openBias = biasTab($("panel-bias"), { model: () => $("model-select").value || undefined, showError });

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const panel of document.querySelectorAll(".inspector [role=tabpanel]")) panel.hidden = panel.id !== `panel-${name}`;
  if (name === "experiments") refreshExperiments();
  if (name === "bias") openBias();
  if (name === "card") refreshCard($("model-select").value);
}

function showOverview() {
  const panel = $("panel-overview");
  panel.replaceChildren(
    overviewPanel(state.ex, {
      tooltip: $("tooltip"),
      onHead: (layer, head) => openHead(layer, head, state.ex.target, null),
      onSaliency: (method) => {
        const ex = state.ex;
        // A generated token is explained by the token actually produced, not the top prediction.
        const token = ex.target >= ex.n_prompt_tokens - 1 && ex.next_token ? ex.next_token.token : undefined;
        return sub("/v1/explain/saliency", { method, target: ex.target, token, n_steps: 24 });
      },
      onRouteCheck: async () => {
        const ex = state.ex;
        // The same question again with the check: the server reuses the cached trace and flow.
        const body = await postJSON("/v1/explain", { ...state.asked, route_check: true });
        if (state.ex === ex) ex.route_check = body.route_check;
        return body.route_check;
      },
    }),
  );
  showTab("overview");
}

function details(...children) {
  $("panel-details").replaceChildren(...children);
  showTab("details");
}

function loading(text) {
  return el("p", { class: "muted" }, text);
}

function select(key) {
  state.selected = key;
  markSelected($("graph"), key);
}

function position(id) {
  return Number(id.split("/").pop());
}

function onEdge(edge) {
  select(edgeKey(edge));
  if (edge.kind === "attention" || edge.kind === "self_attention") {
    const headBox = el("div", { id: "head-box" });
    const render = (selectedHead) =>
      edgePanel(edge, state.ex, {
        selectedHead,
        onHead: (layer, head) => {
          bars.replaceWith((bars = render(head)));
          loadHead(headBox, layer, head, position(edge.target), position(edge.source));
        },
      });
    const top = edge.heads ? edge.heads.indexOf(Math.max(...edge.heads)) : 0;
    let bars = render(top);
    details(bars, el("hr", { class: "section-sep" }), headBox);
    loadHead(headBox, edge.layer, top, position(edge.target), position(edge.source));
  } else if (edge.kind === "residual") {
    openLens(edge.target, true);
  } else {
    const mlpNode = edge.kind === "mlp_in" ? edge.target : edge.source;
    openNeurons(edge.layer, position(mlpNode));
  }
}

function onNode(node) {
  select(node.id);
  if (node.kind === "mlp") openNeurons(node.layer, node.position);
  else openLens(node.id, true);
}

async function loadHead(box, layer, head, target, source) {
  box.replaceChildren(loading(`Loading head L${layer}H${head}…`));
  try {
    const data = await sub("/v1/explain/head", { layer, head, target, source: source ?? undefined });
    box.replaceChildren(headView(data, { tooltip: $("tooltip"), highlight: source === null ? null : [target, source] }));
  } catch (err) {
    box.replaceChildren(el("p", { class: "down" }, err.message));
    showError(err);
  }
}

function openHead(layer, head, target, source) {
  select(null);
  const box = el("div", { id: "head-box" });
  details(box);
  loadHead(box, layer, head, target, source);
}

async function openNeurons(layer, pos) {
  details(loading(`Loading the neurons of L${layer} at position ${pos}…`));
  try {
    const data = await sub("/v1/explain/neurons", { layer, position: pos, k: 10 });
    details(neuronPanel(data));
  } catch (err) {
    details(el("p", { class: "down" }, err.message));
    showError(err);
  }
}

async function openLens(node, finalNorm) {
  details(loading(`Loading the logit lens of ${node}…`));
  try {
    const data = await sub("/v1/explain/lens", { node, k: 12, final_norm: finalNorm });
    const predicted = position(node) === state.ex.target ? state.ex.prediction[0].token : null;
    details(lensPanel(data, { onFinalNorm: (on) => openLens(node, on), predicted }));
  } catch (err) {
    details(el("p", { class: "down" }, err.message));
    showError(err);
  }
}

// ---- start-up -----------------------------------------------------------------------------------
async function loadModels() {
  const selectBox = $("model-select");
  try {
    const list = await getJSON("/v1/models");
    const previous = selectBox.value;
    selectBox.replaceChildren(...list.data.map((m) => el("option", { value: m.id }, m.id)));
    if (previous && list.data.some((m) => m.id === previous)) selectBox.value = previous;
  } catch (err) {
    showError(err);
  }
}

async function pollHealth() {
  const pill = $("status");
  try {
    const response = await fetch("/health");
    const body = await response.json();
    if (response.ok) {
      pill.className = "status status-ok";
      pill.textContent = "ready";
      return;
    }
    pill.className = body.status === "error" ? "status status-error" : "status status-loading";
    pill.textContent = body.status === "error" ? "model failed to load" : "loading model…";
    if (body.status === "error") {
      pill.title = body.error;
      return;
    }
  } catch {
    pill.className = "status status-error";
    pill.textContent = "offline";
  }
  setTimeout(pollHealth, 1500);
}

function init() {
  $("examples").replaceChildren(
    ...EXAMPLES.map((text) =>
      el(
        "button",
        {
          type: "button",
          class: "example",
          title: text,
          onclick: () => {
            $("prompt").value = text;
            explain(promptSource());
          },
        },
        text.replace(/\n/g, " ↵ "),
      ),
    ),
  );
  $("prompt").value = EXAMPLES[0];
  $("explain-btn").addEventListener("click", () => explain(promptSource()));
  $("prompt").addEventListener("keydown", (evt) => {
    if (evt.key === "Enter" && (evt.ctrlKey || evt.metaKey)) explain(promptSource());
  });
  $("tau").addEventListener("input", onTau);
  $("renormalise").addEventListener("change", onRenormalise);
  $("norm").addEventListener("change", () => state.source && explain({ ...state.source, norm: $("norm").value }, { target: state.ex.target }));
  const generate = generator({ explain, promptSource, showError, clearError, source: () => state.source });
  $("generate-btn").addEventListener("click", generate);
  $("error-close").addEventListener("click", clearError);
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  const zoomTo = (zoom, fit = false) => {
    state.zoom = Math.max(0.1, Math.min(4, zoom));
    state.fit = fit;
    if (state.ex) drawGraph();
  };
  // Zooming out of a fitted view starts from the fitted column width.
  const current = () => (state.fit && state.ex ? $("graph")._graph.L.col / layoutCol() : state.zoom);
  $("zoom-in").addEventListener("click", () => zoomTo(current() * 1.25));
  $("zoom-out").addEventListener("click", () => zoomTo(current() / 1.25));
  $("zoom-fit").addEventListener("click", () => zoomTo(1, true));
  const key = $("api-key");
  key.value = localStorage.getItem("lmscope.apiKey") || "";
  key.addEventListener("change", () => {
    localStorage.setItem("lmscope.apiKey", key.value.trim());
    loadModels();
  });
  $("tau-value").textContent = tau().toFixed(3);
  window.addEventListener("resize", debounce(() => state.ex && drawGraph(), 200));
  pollHealth();
  loadModels();
}

init();

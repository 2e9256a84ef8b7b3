// The explorer's "Card" tab: the selected model's card from GET /v1/models/{id}/card.
// The card page is self-contained (no scripts, inline SVG), shown in a sandboxed iframe so its
// styles stay apart from the explorer's. Links offer the Markdown and the facts as downloads.

import { el, apiHeaders } from "./util.js";

async function fetchCard(modelId, accept) {
  const response = await fetch(`/v1/models/${encodeURIComponent(modelId)}/card`, {
    headers: { ...apiHeaders(), Accept: accept },
  });
  if (!response.ok) {
    let message = `card unavailable (HTTP ${response.status})`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) {
      /* not JSON: keep the status line */
    }
    throw new Error(message);
  }
  return response.text();
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: name }, name);
  link.addEventListener("click", () => setTimeout(() => URL.revokeObjectURL(url), 1000));
  return link;
}

/** Returns refresh(modelId): fills `panel` with that model's card (HTML) and download links. */
export function cardTab(panel) {
  let shown = null;
  return async function refresh(modelId) {
    if (!modelId) {
      panel.replaceChildren(el("p", { class: "muted" }, "Pick a model to see its card."));
      return;
    }
    if (shown === modelId) return;
    panel.replaceChildren(el("p", { class: "muted" }, "Writing the card…"));
    try {
      const [page, markdown, facts] = await Promise.all([
        fetchCard(modelId, "text/html"),
        fetchCard(modelId, "text/markdown"),
        fetchCard(modelId, "application/json"),
      ]);
      const frame = el("iframe", {
        sandbox: "",
        title: `Model card for ${modelId}`,
        style: { width: "100%", height: "70vh", border: "1px solid #ccc" },
      });
      frame.srcdoc = page;
      panel.replaceChildren(
        el("p", { class: "muted" }, "Download: ",
          download("README.md", markdown, "text/markdown"), " · ",
          download("facts.json", facts, "application/json")),
        frame,
      );
      shown = modelId;
    } catch (err) {
      panel.replaceChildren(el("p", { class: "muted" }, err.message));
    }
  };
}

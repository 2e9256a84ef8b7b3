// Generation in the explorer: stream a completion, then explain its tokens one click at a time.

import { el, streamSSE } from "./util.js";

const $ = (id) => document.getElementById(id);

/**
 * The generate button: returns generate(), which streams a completion and then explains it (or
 * stops a running one). ctx: {explain(source, extra), promptSource(completion), source() (the
 * current explain source), showError, clearError}.
 */
export function generator(ctx) {
  const { explain, promptSource, showError, clearError } = ctx;
  let generating = null; // AbortController of a running generation

  async function generate() {
    if (generating) {
      generating.abort();
      return;
    }
    const text = $("prompt").value;
    const chat = $("chat-mode").checked;
    const model = $("model-select").value || undefined;
    const out = $("gen-output");
    const streamed = el("span", { class: "gen-stream caret", id: "gen-stream" });
    out.replaceChildren(el("span", { class: "gen-prompt" }, chat ? "" : text), streamed);
    const controller = new AbortController();
    generating = controller;
    const button = $("generate-btn");
    button.textContent = "Stop";
    let completion = "";
    const common = {
      model,
      max_tokens: Number($("max-tokens").value) || 20,
      temperature: Number($("temperature").value) || 0,
      stream: true,
    };
    try {
      clearError();
      if (chat) {
        await streamSSE(
          "/v1/chat/completions",
          { ...common, messages: [{ role: "user", content: text }] },
          (chunk) => {
            const piece = chunk.choices?.[0]?.delta?.content || "";
            completion += piece;
            streamed.textContent = completion;
          },
          controller.signal,
        );
      } else {
        await streamSSE(
          "/v1/completions",
          { ...common, prompt: text },
          (chunk) => {
            completion += chunk.choices?.[0]?.text || "";
            streamed.textContent = completion;
          },
          controller.signal,
        );
      }
    } catch (err) {
      if (err.name !== "AbortError") showError(err);
    } finally {
      generating = null;
      button.textContent = "Generate";
      streamed.classList.remove("caret");
    }
    if (!completion) {
      if (!out.querySelector(".down")) out.append(el("div", { class: "hint" }, "(the model produced no text)"));
      return;
    }
    const source = promptSource(completion);
    const ex = await explain(source, { completion_target: 0 });
    if (ex) drawCompletion(ex, chat ? "" : text);
  }

  /** Replace the streamed text with clickable generated tokens. */
  function drawCompletion(ex, promptText) {
    const out = $("gen-output");
    const first = ex.n_prompt_tokens;
    const chips = ex.token_strs.slice(first).map((t, i) =>
      el(
        "span",
        {
          class: `gen-token${ex.target === first + i - 1 ? " selected" : ""}`,
          title: `generated token ${i} (position ${first + i}) — click to explain why it was produced`,
          dataset: { index: i },
          onclick: async () => {
            const next = await explain(ctx.source(), { completion_target: i });
            if (next) drawCompletion(next, promptText);
          },
        },
        t,
      ),
    );
    out.replaceChildren(el("span", { class: "gen-prompt" }, promptText), ...chips);
  }

  return generate;
}

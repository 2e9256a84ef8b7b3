"""Text samples from the model during training, so progress shows up as words.

A fine-tune on instruction data is sampled in its own format: each prompt becomes a user turn in
the data's chat template, tokenised as training tokenised prompts, and the reply stops at the
template's end-of-turn token. Raw prompts (sample.chat: false, or text data) may spell special
tokens, which count as such. Uses its own seeded generator: sampling never disturbs the training
RNG (exact resume holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lmscope.data.instruct import encode_prompt, resolve_template
from lmscope.data.tokenizer import TextTokenizer
from lmscope.engine.sampling import SamplingParams, next_token
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer


@dataclass(frozen=True)
class PromptFormat:
    """How sample prompts become token ids: as user turns in `template`, or raw (template None)."""

    template: str | None

    @classmethod
    def choose(
        cls, chat: Literal["auto"] | bool, manifest: dict[str, Any], tokenizer: TextTokenizer
    ) -> PromptFormat:
        instruction = manifest.get("kind") == "instruction"
        if chat is False or (chat == "auto" and not instruction):
            return cls(None)
        template = manifest.get("tokenizer", {}).get("template")
        if template not in ("chatml", "plain"):  # text data sampled as chat: best template
            template = resolve_template("auto", tokenizer)
        return cls(template)

    def encode(self, prompt: str, tokenizer: TextTokenizer) -> tuple[list[int], list[int]]:
        """(prompt ids, ids that end the reply)."""
        if self.template is None:
            eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
            return tokenizer.encode_with_specials(prompt), eos
        return encode_prompt(prompt, tokenizer, self.template)


@torch.no_grad()
def sample(
    model: Transformer,
    tokenizer: TextTokenizer,
    ids: Sequence[int],
    *,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
) -> str:
    """Continue the prompt `ids`; returns only the new text, up to a stop id."""
    with eval_mode(model):
        device = model.device
        ids = list(ids)
        if not ids:
            start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
            ids = [start if start is not None else 0]
        n_ctx = model.cfg.n_ctx
        budget = min(max_new_tokens, max(n_ctx - 1, 1))
        ids = ids[-(n_ctx - budget) :]
        generator = torch.Generator(device=device).manual_seed(seed)
        params = SamplingParams(temperature=temperature, top_k=top_k or 0, seed=seed)
        cache = model.new_cache(1, len(ids) + budget)
        tokens = torch.tensor([ids], device=device)
        out: list[int] = []
        for _ in range(budget):
            logits = model(tokens, cache=cache, last_only=True)[0, -1]
            next_id = next_token(logits, params, generator)
            if next_id in stop_ids:
                break
            out.append(next_id)
            tokens = torch.tensor([[next_id]], device=device)
        return tokenizer.decode(out, skip_special_tokens=True)

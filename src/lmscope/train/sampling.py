"""Text samples from the model during training, so progress shows up as words.

Uses its own seeded generator: sampling never disturbs the training RNG (exact resume holds).
"""

from __future__ import annotations

import torch

from lmscope.data.tokenizer import TextTokenizer
from lmscope.model.modes import eval_mode
from lmscope.model.sampling import SamplingParams, next_token
from lmscope.model.transformer import Transformer


@torch.no_grad()
def sample(
    model: Transformer,
    tokenizer: TextTokenizer,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
) -> str:
    """Continue `prompt`; returns only the new text. Stops at the end token."""
    with eval_mode(model):
        device = model.device
        ids = tokenizer.encode(prompt)
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
            if next_id == tokenizer.eos_id:
                break
            out.append(next_id)
            tokens = torch.tensor([[next_id]], device=device)
        return tokenizer.decode(out, skip_special_tokens=True)

"""What each component and hyperparameter does, written once, keyed by component.

`explain(key, **values)` fills a note with the model's own values. Notes state how a choice
tends to behave, never a number that is not passed in, so a template sentence is always
supported by the facts it was filled from.
"""

from __future__ import annotations

from typing import Any

NOTES: dict[str, str] = {
    # ---- architecture ------------------------------------------------------------------------
    "positional.learned": "Positions are learned embeddings added to the token embeddings, so "
    "the model cannot read positions beyond the {n_ctx} it was built for.",
    "positional.sinusoidal": "Positions are fixed sinusoids added to the token embeddings; they "
    "need no training but the model still only saw sequences up to {n_ctx} tokens.",
    "positional.rope": "Positions are encoded by rotary embeddings (RoPE) with base {theta}, "
    "which rotate queries and keys so that attention depends on relative distance.",
    "positional.none": "The model has no positional encoding; order reaches it only through "
    "the causal mask.",
    "rope.scaling": "RoPE frequencies are rescaled ({scaling}) to stretch the usable context.",
    "norm.layernorm": "Each block normalises its input with LayerNorm (eps {eps}) before "
    "attention and the MLP (pre-norm), which keeps activations in range and training stable.",
    "norm.rmsnorm": "Each block normalises its input with RMSNorm (eps {eps}) before attention "
    "and the MLP (pre-norm); RMSNorm skips the mean subtraction and is cheaper than LayerNorm.",
    "attention.MHA": "Attention uses {heads} heads of dimension {head_dim}, each with its own "
    "keys and values (multi-head attention).",
    "attention.GQA": "Attention uses {heads} query heads sharing {kv_heads} key/value heads "
    "(grouped-query attention, {group} query heads per group), which shrinks the KV cache by "
    "the group size at little cost in quality.",
    "attention.MQA": "Attention uses {heads} query heads sharing a single key/value head "
    "(multi-query attention), the smallest possible KV cache.",
    "mlp.gated": "The MLP is gated: {activation}(gate(x)) * up(x) with width {width} "
    "({ratio} times d_model), the SwiGLU-style design that tends to train better per parameter.",
    "mlp.plain": "The MLP expands to width {width} ({ratio} times d_model) with a {activation} "
    "activation and projects back.",
    "tied_embeddings": "The output layer reuses the input embedding matrix (tied embeddings), "
    "saving {saved} parameters.",
    "untied_embeddings": "The output layer has its own matrix, separate from the embeddings.",
    "parallel_blocks": "Attention and the MLP read the same normalised input and are added in "
    "parallel (GPT-NeoX style), which shortens the sequential path through each block.",
    # ---- training ----------------------------------------------------------------------------
    "learning_rate": "The peak learning rate was {value}; larger rates move the weights faster "
    "but risk divergence, smaller ones make fine, slower updates.",
    "schedule": "The learning rate followed a {value} schedule after {warmup} warmup steps; "
    "warmup avoids large early updates while the optimiser's statistics settle.",
    "weight_decay": "Weight decay was {value}; it pulls weights towards zero and acts as a "
    "regulariser against overfitting.",
    "grad_clip": "Gradients were clipped to a global norm of {value}; clipping fired on "
    "{clips} of {steps} steps, and frequent clipping hints at a learning rate on the high side.",
    "batch": "Each optimiser step saw {rows} rows of {context} tokens ({batch} per micro-batch "
    "times {accum} accumulation steps); larger batches give smoother gradients.",
    "dropout": "Dropout was {value}; dropout randomly zeroes activations during training to "
    "reduce overfitting.",
    "precision": "Training ran in {value} precision.",
    "lora": "Fine-tuning used LoRA with rank {r} and alpha {alpha} on {targets}: only small "
    "low-rank adapters were trained while the base weights stayed frozen.",
    "frozen": "The first {layers} transformer blocks were frozen during fine-tuning, so only "
    "the later layers adapted to the new data.",
}


def explain(key: str, **values: Any) -> str:
    """The note for `key` filled with `values` (KeyError names a missing note or value)."""
    return NOTES[key].format(**values)


def human(n: float) -> str:
    """134515008 -> '134.5M'; numbers under a thousand as they are."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:g}"


def num(value: Any) -> str:
    """A fact value as text: integers with thousands separators, floats to 4 significant."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

"""Preallocated key/value caches for incremental decoding, and the attention masks over them."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer in one buffer [layers, b, K, max_len, d].

    Each layer writes its new keys/values at `length`; the model advances `length` once per
    forward, after all layers have written.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        d_head: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, d_head)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [b, K, T, d] after the cached ones and return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions requested, capacity {self.max_len}")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (for dropping finished sequences)."""
        self.keys = self.keys[:, rows]
        self.values = self.values[:, rows]


class SlotKVCache:
    """A cache of `slots` sequences of different lengths, for continuous batching.

    Active sequences occupy slots [0, n_active); each has its own length. New sequences are
    prefilled in a KVCache (alone or left-padded together) and copied in with `insert`; a finished one is removed with
    `remove`, which moves the last active row into its slot so the active rows stay a
    contiguous (copy-free) view. Decoding feeds one token per active row.
    """

    def __init__(
        self,
        n_layers: int,
        slots: int,
        n_kv_heads: int,
        max_len: int,
        d_head: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (n_layers, slots, n_kv_heads, max_len, d_head)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.slots = slots
        self.max_len = max_len
        self.n_active = 0
        self._span = 0  # keys visible in the current decoding step (set by begin_decode)

    @property
    def free(self) -> int:
        return self.slots - self.n_active

    def insert(self, source: KVCache, row: int = 0, start: int = 0) -> int:
        """Copy one prefilled row of `source` (its columns from `start`, e.g. after left
        padding) into the next free slot; returns the slot index."""
        if self.n_active >= self.slots:
            raise ValueError("no free slot in the cache")
        n = source.length - start
        if n >= self.max_len:
            raise ValueError(f"sequence of {n} positions exceeds capacity {self.max_len}")
        slot = self.n_active
        self.keys[:, slot, :, :n] = source.keys[:, row, :, start : source.length]
        self.values[:, slot, :, :n] = source.values[:, row, :, start : source.length]
        self.lengths[slot] = n
        self.n_active += 1
        return slot

    def remove(self, slot: int) -> int | None:
        """Free `slot`. Returns the old index of the row moved into it, or None if none moved."""
        last = self.n_active - 1
        if not 0 <= slot <= last:
            raise ValueError(f"slot {slot} is not active")
        moved = None
        if slot != last:
            n = int(self.lengths[last])
            self.keys[:, slot, :, :n] = self.keys[:, last, :, :n]
            self.values[:, slot, :, :n] = self.values[:, last, :, :n]
            self.lengths[slot] = self.lengths[last]
            moved = last
        self.lengths[last] = 0
        self.n_active -= 1
        return moved

    # ---- what the model calls while decoding ----------------------------------------------
    def begin_decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [n, 1] of every active row's next token and the mask [n, 1, 1, S] that lets
        each row see its own cached keys and the new one. Called once per step, before the
        layers, so the span S is computed once rather than in every layer."""
        lengths = self.lengths[: self.n_active]
        self._span = int(lengths.max()) + 1
        if self._span > self.max_len:
            raise ValueError(f"KV cache full: capacity {self.max_len}")
        keys = torch.arange(self._span, device=lengths.device)
        mask = (keys[None, :] <= lengths[:, None])[:, None, None, :]
        return lengths[:, None], mask

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new key/value per active row [n, K, 1, d] at that row's length."""
        n = self.n_active
        lengths = self.lengths[:n]
        rows = torch.arange(n, device=lengths.device)
        self.keys[layer, rows, :, lengths] = k[:, :, 0]
        self.values[layer, rows, :, lengths] = v[:, :, 0]
        return self.keys[layer, :n, :, : self._span], self.values[layer, :n, :, : self._span]

    def advance(self, n: int) -> None:
        self.lengths[: self.n_active] += n


def causal_mask(
    attention_mask: torch.Tensor | None, positions_q: int, past: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean [b, 1, T, S] mask (True = may attend), or None where SDPA's causal flag does.

    A 4-d attention_mask is such a mask already (e.g. several sequences packed into one row,
    each seeing only its own keys) and is used as given."""
    total = past + positions_q
    if attention_mask is not None and attention_mask.dim() == 4:
        if attention_mask.shape[-2:] != (positions_q, total):
            raise ValueError(
                f"attention_mask is {tuple(attention_mask.shape)}; a 4-d mask must be "
                f"[b, 1, {positions_q}, {total}] (query positions x key positions)"
            )
        return attention_mask.bool()
    if attention_mask is None:
        if past == 0 or positions_q == 1:
            return None
        return torch.ones(positions_q, total, dtype=torch.bool, device=device).tril(past)
    if attention_mask.shape[-1] != total:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[-1]} positions, expected {total}"
        )
    causal = torch.ones(positions_q, total, dtype=torch.bool, device=device).tril(past)
    mask = causal[None] & attention_mask[:, None, :].bool()
    # A padded query row would otherwise see nothing (NaN); let it see itself.
    diag = torch.zeros_like(causal)
    diag[torch.arange(positions_q), past + torch.arange(positions_q)] = True
    return (mask | diag[None])[:, None]

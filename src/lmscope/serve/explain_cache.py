"""A small LRU cache of traced prompts, so clicks in the explorer reuse one trace.

A click in the web explorer (another target, a head, a neuron, a lens node) asks about the same
prompt again. Tracing and the information flow are the expensive steps, so each traced prompt
keeps its `TraceView` and one `FlowGraph` per proximity norm. Entries are evicted least recently
used first, by count and by the bytes their tensors hold, flows included: a flow computed after
its entry was cached counts as soon as it exists, and an entry that alone exceeds the byte bound
is not kept at all (the request that built it still gets it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmscope.explain import (
    Explanation,
    FlowGraph,
    TraceView,
    compute_flow,
    explain_view,
    record,
)
from lmscope.explain.budget import ShouldStop
from lmscope.model.transformer import Transformer

CacheKey = tuple[str, tuple[int, ...]]


def _tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class TracedPrompt:
    """One traced prompt of one served model, with its flows computed so far."""

    model_id: str
    tokens: list[int]
    token_strs: list[str]
    view: TraceView
    flows: dict[str, FlowGraph] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    on_grow: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def key(self) -> CacheKey:
        return (self.model_id, tuple(self.tokens))

    def flow(self, norm: str, should_stop: ShouldStop | None = None) -> FlowGraph:
        """The flow for `norm`, computed on first use (then `on_grow` is told)."""
        with self._lock:
            found = self.flows.get(norm)
        if found is not None:
            return found
        flow = compute_flow(
            self.view.model,
            self.view,
            norm=norm,
            token_strs=self.token_strs,
            should_stop=should_stop,
        )
        with self._lock:
            flow = self.flows.setdefault(norm, flow)
        if self.on_grow is not None:
            self.on_grow()
        return flow

    def nbytes(self) -> int:
        trace = self.view.trace
        tensors = [trace.logits, *trace.activations.values()]
        with self._lock:
            for flow in self.flows.values():
                tensors += [flow.attn_heads, flow.attn_edges]
        return _tensor_bytes(tensors)


class TraceCache:
    """Thread-safe LRU of `TracedPrompt`s keyed by (model id, token ids)."""

    def __init__(self, max_entries: int = 8, max_bytes: int = 2 << 30) -> None:
        self.max_entries = max(1, max_entries)
        self.max_bytes = max_bytes
        self._items: OrderedDict[CacheKey, TracedPrompt] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, key: CacheKey) -> TracedPrompt | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, entry: TracedPrompt) -> TracedPrompt:
        """Cache `entry` (evicting least recently used ones, `entry` itself if it alone is over
        the byte bound) and return it."""
        entry.on_grow = self._shrink
        with self._lock:
            self._items[entry.key] = entry
            self._items.move_to_end(entry.key)
            self._evict()
            return entry

    def nbytes(self) -> int:
        """Bytes the cached tensors hold, flows included."""
        with self._lock:
            return sum(e.nbytes() for e in self._items.values())

    def get_or_build(
        self, key: CacheKey, build: Callable[[], TracedPrompt]
    ) -> tuple[TracedPrompt, bool]:
        """(entry, was_cached). `build` runs outside the cache lock."""
        found = self.get(key)
        if found is not None:
            return found, True
        return self.put(build()), False

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _shrink(self) -> None:
        """An entry grew (a new flow): enforce the bounds again."""
        with self._lock:
            self._evict()

    def _evict(self) -> None:
        """Drop least recently used entries until both bounds hold (call under the lock)."""
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        total = sum(e.nbytes() for e in self._items.values())
        while self._items and total > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            total -= dropped.nbytes()


def trace_prompt(
    model_id: str,
    model: Transformer,
    tokens: list[int],
    decode: Callable[[int], str],
    *,
    should_stop: ShouldStop | None = None,
) -> TracedPrompt:
    """Trace `tokens` once (the expensive forward pass the cache saves)."""
    view = TraceView(model, record(model, tokens, should_stop=should_stop))
    return TracedPrompt(model_id, list(tokens), [decode(t) for t in tokens], view)


def explain_traced(
    entry: TracedPrompt,
    *,
    target: int = -1,
    tau: float = 0.04,
    renormalise: bool = False,
    norm: str = "l1",
    k: int = 10,
    saliency: bool = True,
    saliency_token: int | None = None,
    decode: Callable[[int], str],
    prompt: str | None = None,
    should_stop: ShouldStop | None = None,
) -> Explanation:
    """What `lmscope.explain.explain` returns, built from a cached trace and its cached flow,
    so every click in the explorer reuses the trace. saliency_token: the token gradient x input
    explains (default: the top prediction), e.g. the token a completion actually produced.
    should_stop: checked between stages; True raises ExplanationCancelled."""
    explanation = explain_view(
        entry.view,
        entry.flow(norm, should_stop),
        target=target,
        tau=tau,
        renormalise=renormalise,
        norm=norm,
        k=k,
        saliency=saliency,
        saliency_token=saliency_token,
        decode=decode,
        prompt=prompt,
        name=entry.model_id,
        should_stop=should_stop,
    )
    explanation.token_strs = list(entry.token_strs)
    return explanation

"""The data of the self-contained HTML report of an explanation.

The page (see `report_page`) is drawn in the browser by the explorer's own modules
(`ui/static/graph.js`, `tokens.js`, `panels.js`) plus `report.js`; this module computes what it
embeds. Every section can be retargeted offline to any of the report's *explorable* positions
(all of a short prompt, else a window ending at the explained token): for each of them the page
carries the prediction, head importances, top neurons with what they promote there, the logit
lens, block and head promotions and saliency. The route graph is embedded once, as the union of
the routes to all explorable positions at a floor threshold; the page re-thresholds it for one
target with graph.js's `rethreshold`, the same function the explorer's slider uses.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

from lmscope.explain.errors import check_position
from lmscope.explain.heads import head_importance, top_heads
from lmscope.explain.lens import (
    lens_table,
    node_name,
    project,
    promoted_by_neurons,
    promotions_at,
    trajectory,
)
from lmscope.explain.neurons import top_neurons
from lmscope.explain.report_page import render_page
from lmscope.explain.results import rounded
from lmscope.explain.saliency import attention_rollout, gradient_x_input

if TYPE_CHECKING:
    from lmscope.explain.api import Explanation
    from lmscope.explain.lens import Promotion

REPORT_TARGETS = 16  # explorable positions: all of a prompt this short, else a window
MAP_TOKENS = 128  # full T x T head maps are embedded up to this many tokens...
MAP_HEADS = 12  # ...for at most this many heads (the top ones of the explorable positions)
MAX_LENS_NODES = 1000  # lens rows of route nodes at other positions
NEURONS_PER_LAYER = 3
MAX_NEURON_PROJECTIONS = 2000  # vocabulary projections of neuron output rows (the most important)
K = 5  # tokens per list
# Gradient x input at every explorable position while parameters x tokens x positions stays
# under this (one backward pass each); above, only at the explained position.
GRADIENT_BUDGET = 3e10
EDGE_CODES = {"attention": 0, "self_attention": 0, "mlp_in": 3, "mlp_out": 3}


def _r(x: float, digits: int = 5) -> float:
    return round(float(x), digits)


def explorable(n_tokens: int, target: int, n: int = REPORT_TARGETS) -> list[int]:
    """The positions the report can be retargeted to: all, or the n ending at `target`."""
    if n_tokens <= n:
        return list(range(n_tokens))
    start = max(0, target - n + 1)
    return list(range(start, min(n_tokens, start + n)))


def _graph_payload(ex: Explanation, targets: list[int]) -> dict[str, Any]:
    """The union of the routes to `targets` at a floor threshold, one compact row per edge:
    [code, layer, source position, target position, raw, heads?] with code 0 attention,
    1 residual into resid_mid, 2 residual into resid_post, 3 MLP (mlp_in and mlp_out alike)."""
    assert ex.flow is not None
    flow = ex.flow
    floor = min(ex.tau, 0.01)
    routes = flow.routes(targets, floor)
    edges: list[list[Any]] = []
    for e in routes.edges:
        if e.kind == "mlp_in":
            continue  # implied by its mlp_out twin (same layer, position and raw share)
        src = int(e.source.rsplit("/", 1)[1])
        tgt = int(e.target.rsplit("/", 1)[1])
        if e.kind == "residual":
            code = 1 if "/resid_mid/" in e.target else 2
        else:
            code = EDGE_CODES[e.kind]
        row: list[Any] = [code, e.layer, src, tgt, _r(e.raw, 6)]
        if e.heads is not None:
            row.append([_r(h, 6) for h in e.heads])
        edges.append(row)
    payload: dict[str, Any] = {"floor": floor, "parallel": flow.parallel, "edges": edges}
    if bool((flow.attn_bias > 0).any()) or bool((flow.mlp_bias > 0).any()):
        payload["attn_bias"] = rounded(flow.attn_bias.float().tolist(), 6)
        payload["mlp_bias"] = rounded(flow.mlp_bias.float().tolist(), 6)
    return payload


def _promotions(items: list[Promotion]) -> dict[str, Any]:
    return {
        p.source: {
            "promoted": [t.to_dict() for t in p.promoted],
            "suppressed": [t.to_dict() for t in p.suppressed],
        }
        for p in items
    }


def _per_target(ex: Explanation, targets: list[int]) -> dict[str, dict[str, Any]]:
    """Every section's data at each explorable position (API shapes, so the explorer's panels
    draw them)."""
    assert ex.flow is not None and ex.view is not None and ex.model_ref is not None
    flow, view, model, decode = ex.flow, ex.view, ex.model_ref, ex.decode
    logits = view.trace.logits[view.batch].float().cpu()
    n_params = sum(p.numel() for p in model.parameters())
    every_gradient = n_params * flow.n_tokens * len(targets) <= GRADIENT_BUDGET
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        probs = torch.softmax(logits[t].double(), -1)
        top_v, top_i = logits[t].topk(min(10, logits.shape[-1]))
        heads = top_heads(flow, t, K)
        head_ids = [(int(a), int(b)) for a, b in (lab[1:].split("H") for lab, _ in heads)]
        saliency = [attention_rollout(view, t).to_dict()]
        given = [s for s in ex.saliency if s.method != "attention_rollout" and s.position == t]
        if given:
            saliency.insert(0, given[0].to_dict())
        elif every_gradient:
            saliency.insert(0, gradient_x_input(model, ex.tokens, t, int(top_i[0])).to_dict())
        for s in saliency:
            s["target_text"] = None if s["target"] is None else decode(s["target"])
        out[str(t)] = {
            "prediction": [
                {
                    "token": int(i),
                    "text": decode(int(i)),
                    "logit": _r(v),
                    "prob": _r(float(probs[i]), 7),
                }
                for v, i in zip(top_v.tolist(), top_i.tolist(), strict=True)
            ],
            "head_importance": rounded(head_importance(flow, t).tolist(), 5),
            "top_heads": [[h, _r(w)] for h, w in heads],
            "head_rows": {
                f"L{a}H{b}": rounded(view.pattern(a)[b, t, : t + 1].tolist(), 4)
                for a, b in head_ids
            },
            "lens": [r.to_dict() for r in lens_table(model, view, t, K, decode=decode)],
            "trajectory": trajectory(model, view, t, int(top_i[0]), decode=decode).to_dict(),
            "neurons": [
                top_neurons(view, layer, t, NEURONS_PER_LAYER, ex.norm).to_dict()
                for layer in range(flow.n_layers)
            ],
            "promotions": _promotions(promotions_at(model, view, t, head_ids, K, decode)),
            "saliency": saliency,
        }
    _add_neuron_projections(ex, out)
    return out


def _add_neuron_projections(ex: Explanation, per_target: dict[str, dict[str, Any]]) -> None:
    """Each neuron row gets its output row's promoted / suppressed tokens (position-free; the
    page flips them by the sign of the activation), the most important neurons first."""
    assert ex.view is not None and ex.model_ref is not None
    rows = [
        (row, block["layer"])
        for data in per_target.values()
        for block in data["neurons"]
        for row in block["neurons"]
    ]
    wanted = sorted({(layer, row["neuron"]) for row, layer in rows})
    best = {key: 0.0 for key in wanted}
    for row, layer in rows:
        key = (layer, row["neuron"])
        best[key] = max(best[key], row["importance"])
    chosen = sorted(wanted, key=lambda key: -best[key])[:MAX_NEURON_PROJECTIONS]
    found = promoted_by_neurons(ex.model_ref, ex.view, chosen, K, ex.decode)
    projections = {
        key: ([t.to_dict() for t in p.promoted], [t.to_dict() for t in p.suppressed])
        for key, p in zip(chosen, found, strict=True)
    }
    for row, layer in rows:
        pair = projections.get((layer, row["neuron"]))
        if pair is not None:
            row["promoted"], row["suppressed"] = pair


def _node_lens(ex: Explanation, targets: list[int]) -> dict[str, list[list[Any]]]:
    """Top tokens of the residual route nodes at positions that are not explorable."""
    assert ex.flow is not None and ex.view is not None and ex.model_ref is not None
    skip = set(targets)
    wanted: list[tuple[str, int, int]] = []
    for n in ex.flow.routes(targets, ex.tau).nodes:
        if n.kind != "mlp" and n.position not in skip:
            wanted.append((n.kind, n.layer, n.position))
    wanted = wanted[:MAX_LENS_NODES]
    out: dict[str, list[list[Any]]] = {}
    for start in range(0, len(wanted), 256):
        chunk = wanted[start : start + 256]
        x = torch.stack([ex.view.residual(k, layer, pos) for k, layer, pos in chunk])  # type: ignore[arg-type]
        probs = torch.softmax(project(ex.model_ref, x).double(), -1).float()
        top_v, top_i = probs.topk(K, dim=-1)
        for (kind, layer, pos), vals, ids in zip(
            chunk, top_v.tolist(), top_i.tolist(), strict=True
        ):
            key = f"{node_name(kind, layer)}/{pos}"
            out[key] = [[ex.decode(t), _r(p, 5)] for t, p in zip(ids, vals, strict=True)]
    return out


def _head_maps(ex: Explanation, per_target: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Full attention and contribution maps of the top heads, for prompts up to MAP_TOKENS."""
    assert ex.flow is not None and ex.view is not None
    if ex.flow.n_tokens > MAP_TOKENS:
        return {}
    order: list[str] = [h for h, _ in ex.top_heads]
    for rank in range(K):
        for data in per_target.values():
            if rank < len(data["top_heads"]):
                order.append(data["top_heads"][rank][0])
    labels = list(dict.fromkeys(order))[:MAP_HEADS]
    maps = {}
    for label in labels:
        layer, head = (int(s) for s in label[1:].split("H"))
        maps[label] = {
            "attention": rounded(ex.view.pattern(layer)[head].tolist(), 4),
            "contribution": rounded(ex.flow.attn_heads[layer, :, :, head].float().tolist(), 4),
        }
    return maps


def report_data(ex: Explanation, targets: list[int] | None = None) -> dict[str, Any]:
    """The JSON the report page embeds. targets: the explorable positions (default: all of a
    prompt up to REPORT_TARGETS tokens, else the window ending at the explained token)."""
    assert ex.flow is not None
    n_tokens = ex.flow.n_tokens
    if targets is None:
        chosen = explorable(n_tokens, ex.target)
    else:
        chosen = sorted({check_position(t, n_tokens, "report target") for t in targets})
    if ex.target not in chosen:
        chosen = sorted([*chosen, ex.target])
    per_target = _per_target(ex, chosen)
    return {
        "model": ex.model,
        "prompt": ex.prompt,
        "tokens": ex.token_strs,
        "target": ex.target,
        "targets": chosen,
        "tau": ex.tau,
        "renormalise": ex.renormalise,
        "norm": ex.norm,
        "n_layers": ex.n_layers,
        "n_heads": ex.n_heads,
        "graph": _graph_payload(ex, chosen),
        "per_target": per_target,
        "node_lens": _node_lens(ex, chosen),
        "head_maps": _head_maps(ex, per_target),
        "timings": {k: _r(v, 3) for k, v in ex.timings.items()},
        # explain(route_check=True): the route's ablation vs random components (not drawn yet)
        **({"route_check": ex.route_check.to_dict()} if ex.route_check is not None else {}),
    }


def report_json(ex: Explanation, targets: list[int] | None = None) -> str:
    """report_data as JSON that is safe inside a <script> element."""
    text = json.dumps(report_data(ex, targets), separators=(",", ":"))
    return text.replace("</", "<\\/")


def render_report(ex: Explanation, targets: list[int] | None = None) -> str:
    """One self-contained HTML page (inline CSS and JS, data embedded as JSON)."""
    return render_page(f"lmscope explain: {ex.model}", report_json(ex, targets))

"""The self-contained HTML report of an explanation: one offline file, no CDN.

The page embeds its data as JSON and draws everything with hand-written JS/SVG/canvas: the route
graph (re-thresholded live with a tau slider, for any target token when the prompt is short), the
lens tables of route nodes, per-head edge weights, attention and contribution maps of heads, the
token trajectory, saliency and top neurons.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

import torch

from lmscope.explain.heads import head_label
from lmscope.explain.lens import lens_nodes, node_name, project
from lmscope.explain.report_page import REPORT_CSS, REPORT_JS

if TYPE_CHECKING:
    from lmscope.explain.api import Explanation

# Graphs for every target are embedded up to this many tokens; above, only the chosen target's.
ALL_TARGETS_TOKENS = 128
# Full T x T head maps are embedded up to this many tokens; above, only the target's row.
MAP_TOKENS = 128
MAX_LENS_NODES = 1000  # lens rows embedded: the target's first, then its route's, then others
LENS_K = 5


def _r(x: float, digits: int = 5) -> float:
    return round(float(x), digits)


def _graph_payload(ex: Explanation) -> dict[str, Any]:
    """Edges above a floor threshold, compact: [kind, layer, source pos, target pos, raw, heads]."""
    assert ex.flow is not None
    flow = ex.flow
    n_tok = flow.n_tokens
    floor = min(ex.tau, 0.01)
    targets = None if n_tok <= ALL_TARGETS_TOKENS else [ex.target]
    routes = flow.routes(targets, floor)
    edges: list[list[Any]] = []
    for e in routes.edges:
        tgt_pos = int(e.target.rsplit("/", 1)[1])
        src_pos = int(e.source.rsplit("/", 1)[1])
        if e.kind in ("attention", "self_attention"):
            heads = [_r(h, 4) for h in (e.heads or [])]
            edges.append([0, e.layer, src_pos, tgt_pos, _r(e.raw), heads])
        elif e.kind == "residual":
            kind = 1 if e.target.split("/")[1] == "resid_mid" else 2
            edges.append([kind, e.layer, src_pos, tgt_pos, _r(e.raw)])
        elif e.kind == "mlp_out":
            edges.append([3, e.layer, tgt_pos, tgt_pos, _r(e.raw)])
    payload: dict[str, Any] = {
        "floor": floor,
        "all_targets": targets is None,
        "parallel": flow.parallel,
        "edges": edges,
    }
    if bool((flow.attn_bias > 0).any()) or bool((flow.mlp_bias > 0).any()):
        payload["attn_bias"] = [[_r(v) for v in row] for row in flow.attn_bias.tolist()]
        payload["mlp_bias"] = [[_r(v) for v in row] for row in flow.mlp_bias.tolist()]
    return payload


def _lens_payload(ex: Explanation) -> dict[str, list[list[Any]]]:
    """Top tokens of the residual nodes on the route (all nodes at the target position)."""
    assert ex.view is not None and ex.model_ref is not None
    view, model = ex.view, ex.model_ref
    wanted: list[tuple[str, int, int]] = [
        (kind, layer, ex.target) for kind, layer in lens_nodes(view.n_layers)
    ]
    seen = set(wanted)
    nodes = list(ex.routes.nodes)
    if ex.flow is not None and ex.flow.n_tokens <= ALL_TARGETS_TOKENS:
        nodes += ex.flow.routes(None, ex.tau).nodes  # the page can switch targets
    for n in nodes:
        key = (n.kind, n.layer, n.position)
        if n.kind in ("embed", "resid_mid", "resid_post") and key not in seen:
            seen.add(key)
            wanted.append(key)
    wanted = wanted[:MAX_LENS_NODES]
    out: dict[str, list[list[Any]]] = {}
    for start in range(0, len(wanted), 256):
        chunk = wanted[start : start + 256]
        x = torch.stack([view.residual(kind, layer)[pos] for kind, layer, pos in chunk])  # type: ignore[arg-type]
        logits = project(model, x)
        probs = torch.softmax(logits.double(), -1).float()
        top_v, top_i = probs.topk(LENS_K, dim=-1)
        for (kind, layer, pos), vals, ids in zip(
            chunk, top_v.tolist(), top_i.tolist(), strict=True
        ):
            out[f"{_code(kind)}:{layer}:{pos}"] = [
                [ex.decode(t), _r(p, 4)] for t, p in zip(ids, vals, strict=True)
            ]
    return out


def _code(kind: str) -> str:
    return {"embed": "E", "resid_mid": "A", "mlp": "M", "resid_post": "R"}[kind]


def _heads_payload(ex: Explanation) -> dict[str, Any]:
    assert ex.flow is not None and ex.view is not None
    flow, view = ex.flow, ex.view
    n_tok = flow.n_tokens
    full = n_tok <= MAP_TOKENS
    maps: dict[str, Any] = {}
    for label, _ in ex.top_heads:
        layer, head = (int(s) for s in label[1:].split("H"))
        if full:
            maps[label] = {
                "attention": [
                    [_r(v, 4) for v in row] for row in view.pattern(layer)[head].tolist()
                ],
                "contribution": [
                    [_r(v, 4) for v in row]
                    for row in flow.attn_heads[layer, :, :, head].float().tolist()
                ],
            }
    rows = []  # attention of the target's row, every head: [L][H][T]
    for layer in range(view.n_layers):
        pattern = view.pattern(layer)[:, ex.target, : ex.target + 1]
        rows.append([[_r(v, 4) for v in r] for r in pattern.tolist()])
    return {
        "importance": ex.head_importance,
        "top": [[h, _r(w)] for h, w in ex.top_heads],
        "maps": maps,
        "full_maps": full,
        "target_rows": rows,
    }


def report_data(ex: Explanation) -> dict[str, Any]:
    """The JSON the report page embeds."""
    promotions = {
        p.source: {
            "promoted": [[t.text, _r(t.logit, 3)] for t in p.promoted],
            "suppressed": [[t.text, _r(t.logit, 3)] for t in p.suppressed],
        }
        for p in ex.promotions
    }
    return {
        "model": ex.model,
        "prompt": ex.prompt,
        "tokens": ex.token_strs,
        "target": ex.target,
        "tau": ex.tau,
        "renormalise": ex.renormalise,
        "norm": ex.norm,
        "n_layers": ex.n_layers,
        "n_heads": ex.n_heads,
        "prediction": [[t.text, _r(t.prob or 0.0, 4)] for t in ex.prediction],
        "graph": _graph_payload(ex),
        "lens": _lens_payload(ex),
        "lens_target": [r.to_dict() for r in ex.lens],
        "trajectory": ex.trajectory.to_dict(),
        "heads": _heads_payload(ex),
        "neurons": [n.to_dict() for n in ex.neurons],
        "promotions": promotions,
        "saliency": [
            {"method": s.method, "scores": [_r(v) for v in s.scores], "target": s.target}
            for s in ex.saliency
        ],
        "timings": {k: _r(v, 3) for k, v in ex.timings.items()},
        "head_labels": [
            [head_label(layer, h) for h in range(ex.n_heads)] for layer in range(ex.n_layers)
        ],
        "node_names": [node_name(kind, layer) for kind, layer in lens_nodes(ex.n_layers)],
    }


def render_report(ex: Explanation) -> str:
    """One self-contained HTML page (inline CSS and JS, data embedded as JSON)."""
    data = json.dumps(report_data(ex), separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(f"lmscope explain: {ex.model}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{REPORT_CSS}</style></head><body>"
        f'<script type="application/json" id="lmscope-data">{data}</script>'
        f"<script>{REPORT_JS}</script></body></html>\n"
    )

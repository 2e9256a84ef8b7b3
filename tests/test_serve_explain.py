"""Explanation endpoints over real HTTP on the tiny model, checked against in-process results."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from lmscope.explain import explain
from lmscope.serve.explain_cache import TraceCache, explain_traced, trace_prompt
from lmscope.zoo.registry import load
from serve_support import hold_explanations, tiny_server

PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with tiny_server(tiny_checkpoint, max_seq_len=128) as base:
        yield base


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    return load(str(tiny_checkpoint))


def post(base: str, path: str, payload: dict[str, Any]) -> httpx.Response:
    # json.dumps escapes lone surrogates as JSON allows ("\\ud800"); httpx's encoder cannot.
    body = json.dumps({"model": "tiny", **payload}).encode()
    headers = {"content-type": "application/json"}
    return httpx.post(base + path, content=body, headers=headers, timeout=60)


def ok(base: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = post(base, path, payload)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_close(a: Any, b: Any, path: str = "", atol: float = 1e-5) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}", atol)
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]", atol)
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(float(a) - float(b)) <= atol, f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_explain_shapes_and_cache(server: str, reference) -> None:  # type: ignore[no-untyped-def]
    body = ok(server, "/v1/explain", {"prompt": PROMPT, "tau": 0.01})
    n_tok, n_layers, n_heads = len(body["tokens"]), body["n_layers"], body["n_heads"]
    assert body["tokens"] == reference.tokenizer.encode(PROMPT)
    assert len(body["token_strs"]) == n_tok and body["n_prompt_tokens"] == n_tok
    assert (n_layers, n_heads) == (2, 4) and body["target"] == n_tok - 1
    graph = body["routes"]
    ids = {n["id"] for n in graph["nodes"]}
    assert f"L{n_layers - 1}/resid_post/{n_tok - 1}" in ids
    kinds = {e["kind"] for e in graph["links"]}
    assert {"attention", "residual"} <= kinds
    for edge in graph["links"]:
        assert edge["source"] in ids and edge["target"] in ids and edge["weight"] > 0.01
        if edge["kind"] in ("attention", "self_attention"):
            assert len(edge["heads"]) == n_heads
            assert sum(edge["heads"]) == pytest.approx(edge["weight"], abs=1e-5)
    assert len(body["lens"]) == 1 + 2 * n_layers
    assert len(body["head_importance"]) == n_layers and len(body["head_importance"][0]) == n_heads
    assert len(body["neurons"]) == n_layers
    assert [s["method"] for s in body["saliency"]] == ["gradient_x_input", "attention_rollout"]
    # A second question about the same prompt reuses the trace.
    again = ok(server, "/v1/explain", {"prompt": PROMPT, "target": 2, "saliency": False})
    assert again["cached"] is True and again["target"] == 2
    assert [s["method"] for s in again["saliency"]] == ["attention_rollout"]


def test_http_explanation_matches_library_explain(server: str, reference) -> None:  # type: ignore[no-untyped-def]
    """The cached path (trace once, assemble per click) gives what `explain()` gives."""
    ids = reference.tokenizer.encode(PROMPT)
    for target, tau, renorm in ((-1, 0.04, False), (3, 0.02, True)):
        expected = explain(
            reference.model,
            ids,
            tokenizer=reference.tokenizer,
            target=target,
            tau=tau,
            renormalise=renorm,
            name="tiny",
        ).to_dict()
        got = ok(
            server,
            "/v1/explain",
            {"prompt": PROMPT, "target": target, "tau": tau, "renormalise": renorm},
        )
        for key in ("timings", "prompt"):
            expected.pop(key)
        got = {key: got[key] for key in expected}
        assert_close(got, expected)


def test_cached_assembly_in_process(reference) -> None:  # type: ignore[no-untyped-def]
    ids = reference.tokenizer.encode("To be, or not to be")

    def decode(t: int) -> str:
        return str(reference.tokenizer.decode([t]))

    entry = trace_prompt("m", reference.model, ids, decode)
    ours = explain_traced(entry, target=-2, tau=0.03, norm="l2", decode=decode).to_dict()
    theirs = explain(
        reference.model, ids, tokenizer=reference.tokenizer, target=-2, tau=0.03, norm="l2"
    ).to_dict()
    for d in (ours, theirs):
        d.pop("timings")
        d.pop("model")
    assert_close(ours, theirs)


def test_lens_of_last_residual_is_the_models_logits(server: str, reference) -> None:  # type: ignore[no-untyped-def]
    ids = reference.tokenizer.encode(PROMPT)
    with torch.no_grad():
        logits = reference.model(torch.tensor([ids]))[0]
    for position in (len(ids) - 1, 2):
        body = ok(
            server,
            "/v1/explain/lens",
            {"prompt": PROMPT, "node": f"L1/resid_post/{position}", "k": 8},
        )
        assert body["node"] == "L1/resid_post" and body["position"] == position
        assert body["previous"] == "L1/resid_mid" and body["final_norm"] is True
        values, tokens = logits[position].topk(8)
        assert [t["token"] for t in body["top"]] == tokens.tolist()
        assert [t["logit"] for t in body["top"]] == pytest.approx(values.tolist(), abs=1e-4)
        probs = torch.softmax(logits[position].double(), -1)[tokens]
        assert [t["prob"] for t in body["top"]] == pytest.approx(probs.tolist(), abs=1e-5)
        for row in body["top"]:
            assert row["rank_change"] == row["prev_rank"] - row["rank"]
    raw = ok(server, "/v1/explain/lens", {"prompt": PROMPT, "node": "embed", "final_norm": False})
    assert raw["position"] == len(ids) - 1 and raw["previous"] is None


def test_head_neurons_routes_saliency(server: str, reference) -> None:  # type: ignore[no-untyped-def]
    n_tok = len(reference.tokenizer.encode(PROMPT))
    head = ok(
        server,
        "/v1/explain/head",
        {"prompt": PROMPT, "layer": 1, "head": 2, "target": -1, "source": 1, "k": 4},
    )
    assert head["label"] == "L1H2" and head["target"] == n_tok - 1 and head["source"] == 1
    for key in ("attention", "contribution"):
        values = head[key]["values"]
        assert len(values) == n_tok and all(len(row) == n_tok for row in values)
        assert all(v == 0 for row_i, row in enumerate(values) for v in row[row_i + 1 :])
    assert sum(head["attention"]["values"][-1]) == pytest.approx(1.0, abs=1e-4)
    assert len(head["promotion"]["promoted"]) == 4 and len(head["promotion"]["suppressed"]) == 4
    assert set(head["edge"]["heads"]) == {f"L1H{h}" for h in range(4)}

    neurons = ok(server, "/v1/explain/neurons", {"prompt": PROMPT, "layer": 0, "k": 3})
    assert len(neurons["neurons"]) == 3 and neurons["position"] == n_tok - 1
    first = neurons["neurons"][0]
    assert first["label"].startswith("L0N") and len(first["promoted"]) == 5
    assert neurons["block"]["source"] == "L0/mlp"

    routes = ok(server, "/v1/explain/routes", {"prompt": PROMPT, "tau": 0.5, "target": 1})
    assert routes["cached"] is True and routes["routes"]["graph"]["targets"] == [1]
    assert all(e["raw"] > 0.5 for e in routes["routes"]["links"])

    ig = ok(
        server,
        "/v1/explain/saliency",
        {"prompt": PROMPT, "method": "integrated_gradients", "n_steps": 8, "token": 5, "foil": 7},
    )
    assert ig["method"] == "integrated_gradients" and (ig["target"], ig["foil"]) == (5, 7)
    assert len(ig["scores"]) == n_tok and ig["meta"]["n_steps"] == 8
    rollout = ok(
        server,
        "/v1/explain/saliency",
        {"prompt": PROMPT, "method": "attention_rollout", "target": 3},
    )
    assert len(rollout["scores"]) == 4 and sum(rollout["scores"]) == pytest.approx(1.0, abs=1e-4)


def test_completion_and_messages(server: str, reference) -> None:  # type: ignore[no-untyped-def]
    tok = reference.tokenizer
    body = ok(server, "/v1/explain", {"prompt": "The quick", "completion": " brown fox"})
    n_prompt = len(tok.encode("The quick"))
    assert body["n_prompt_tokens"] == n_prompt
    assert body["tokens"] == tok.encode("The quick") + tok.encode(" brown fox")
    chat = ok(
        server,
        "/v1/explain",
        {"messages": [{"role": "user", "content": "To be"}], "completion": " or not", "k": 3},
    )
    assert chat["token_strs"][0] == "<|im_start|>" and chat["n_prompt_tokens"] < len(chat["tokens"])
    assert len(chat["prediction"]) == 3


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/v1/explain", {"prompt": PROMPT, "target": 99}, "target"),
        ("/v1/explain", {"prompt": PROMPT, "target": -99}, "target"),
        ("/v1/explain", {"prompt": PROMPT, "tau": 2}, "tau"),
        ("/v1/explain/routes", {"prompt": PROMPT, "tau": -0.1}, "tau"),
        ("/v1/explain", {"prompt": ""}, "prompt"),
        ("/v1/explain", {"prompt": []}, "prompt"),
        ("/v1/explain", {"prompt": [1] * 300}, "prompt"),
        ("/v1/explain", {"prompt": [10**6]}, "prompt"),
        ("/v1/explain", {}, None),
        ("/v1/explain", {"prompt": PROMPT, "messages": []}, None),
        ("/v1/explain", {"prompt": PROMPT, "norm": "l3"}, "norm"),
        ("/v1/explain", {"prompt": PROMPT, "targte": 1}, "targte"),
        ("/v1/explain/head", {"prompt": PROMPT, "layer": 5, "head": 0}, "layer"),
        ("/v1/explain/head", {"prompt": PROMPT, "layer": 0, "head": 9}, "head"),
        ("/v1/explain/neurons", {"prompt": PROMPT, "layer": 0, "position": 50}, "position"),
        ("/v1/explain/lens", {"prompt": PROMPT, "node": "L0/mlp"}, "node"),
        ("/v1/explain/lens", {"prompt": PROMPT, "node": "nonsense"}, "node"),
        ("/v1/explain/lens", {"prompt": PROMPT, "node": "L9/resid_post"}, "node"),
        ("/v1/explain/lens", {"prompt": PROMPT, "node": "embed", "position": 40}, "position"),
        ("/v1/explain/saliency", {"prompt": PROMPT, "token": "quick brown fox"}, "token"),
        ("/v1/explain/saliency", {"prompt": PROMPT, "foil": 10**6}, "foil"),
        ("/v1/explain/saliency", {"prompt": PROMPT, "method": "shap"}, "method"),
        # errors name their field from where they were found, not from their message's words
        ("/v1/explain/saliency", {"prompt": PROMPT, "target": 40}, "target"),
        ("/v1/explain/head", {"prompt": PROMPT, "layer": 0, "head": 0, "source": 40}, "source"),
        ("/v1/explain/neurons", {"prompt": PROMPT, "layer": -9}, "layer"),
        ("/v1/explain", {"prompt": "The quick", "completion_target": 0}, "completion_target"),
        # lone UTF-16 surrogates are not text a tokenizer can encode
        ("/v1/explain", {"prompt": "ab\ud800cd"}, "prompt"),
        ("/v1/explain", {"prompt": "ab", "completion": "c\udfffd"}, "completion"),
        (
            "/v1/explain",
            {"messages": [{"role": "user", "content": "a\ud800"}]},
            "messages.[0].content",
        ),
        ("/v1/explain/saliency", {"prompt": PROMPT, "token": "\ud800"}, "token"),
        ("/v1/explain/saliency", {"prompt": PROMPT, "foil": "x\udc00"}, "foil"),
        ("/v1/explain/lens", {"prompt": PROMPT, "node": "embed\ud800"}, "node"),
        # booleans are not integers
        ("/v1/explain", {"prompt": [True, False]}, "prompt"),
        ("/v1/explain", {"prompt": PROMPT, "target": True}, "target"),
    ],
)
def test_bad_input_is_a_400_openai_error(
    server: str, path: str, payload: dict[str, Any], param: str | None
) -> None:
    response = post(server, path, payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if payload.get("prompt") == [1] * 300:
        assert error["code"] == "context_length_exceeded"


def test_unknown_model_is_404(server: str) -> None:
    response = httpx.post(server + "/v1/explain", json={"model": "gpt3", "prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_generation_completes_while_an_explanation_runs(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explanation in progress must not block the event loop or the generation engine."""
    started, release = hold_explanations(monkeypatch, wait_s=30)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(post, server, "/v1/explain", {"prompt": "To be, or not to be"})
        assert started.wait(30)
        gen = post(server, "/v1/completions", {"prompt": "To be", "max_tokens": 6})
        assert gen.status_code == 200, gen.text
        assert gen.json()["usage"]["completion_tokens"] >= 1
        assert httpx.get(server + "/health", timeout=5).status_code == 200
        assert not pending.done()  # answered while the explanation is still held
        release.set()
        explained = pending.result(timeout=60)
    assert explained.status_code == 200, explained.text
    assert explained.json()["target"] == len(explained.json()["tokens"]) - 1


def test_trace_cache_is_a_bounded_lru(reference) -> None:  # type: ignore[no-untyped-def]
    cache = TraceCache(max_entries=2)
    tok = reference.tokenizer

    def entry(text: str):  # type: ignore[no-untyped-def]
        ids = tok.encode(text)
        return trace_prompt("m", reference.model, ids, lambda t: tok.decode([t]))

    a, b, c = (entry(t) for t in ("The quick", "To be", "In the"))
    cache.put(a)
    cache.put(b)
    assert cache.get(a.key) is a  # a is now the most recent
    cache.put(c)
    assert len(cache) == 2 and cache.get(b.key) is None and cache.get(a.key) is a
    got, cached = cache.get_or_build(c.key, lambda: pytest.fail("rebuilt a cached prompt"))
    assert got is c and cached
    assert c.flow("l1") is c.flow("l1")  # computed once


def test_trace_cache_byte_bound_counts_flows_and_the_newest_entry(reference) -> None:  # type: ignore[no-untyped-def]
    tok = reference.tokenizer

    def entry(text: str):  # type: ignore[no-untyped-def]
        return trace_prompt("m", reference.model, tok.encode(text), lambda t: tok.decode([t]))

    a, b = entry("The quick brown fox"), entry("To be, or not to be")
    flow_bytes = entry("To be, or not to be")
    traced_b = flow_bytes.nbytes()
    flow_bytes.flow("l1")
    flow_b = flow_bytes.nbytes() - traced_b
    assert flow_b > 0
    # Room for both traces and b's flow, less one byte: b's flow, computed after b was cached,
    # must push the least recently used entry out.
    cache = TraceCache(max_entries=8, max_bytes=a.nbytes() + b.nbytes() + flow_b - 1)
    cache.put(a)
    cache.put(b)
    assert len(cache) == 2
    b.flow("l1")
    assert len(cache) == 1 and cache.get(a.key) is None and cache.get(b.key) is b
    assert cache.nbytes() <= cache.max_bytes
    # An entry that alone exceeds the bound is not kept, but its builder still gets it.
    tiny = TraceCache(max_entries=8, max_bytes=a.nbytes() - 1)
    got, cached = tiny.get_or_build(a.key, lambda: a)
    assert got is a and not cached and len(tiny) == 0
    fits = TraceCache(max_entries=8, max_bytes=a.nbytes())
    fits.put(a)
    assert len(fits) == 1  # a's l1 flow is not computed yet: a fits exactly


def test_openapi_describes_the_explain_routes(server: str) -> None:
    doc = httpx.get(server + "/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    for path, name in (("/v1/explain", "Explain"), ("/v1/explain/saliency", "Saliency")):
        operation = doc["paths"][path]["post"]
        assert {"400", "408", "429", "499"} <= set(operation["responses"]), path
        assert "422" not in operation["responses"]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{name}Response"}
        request = schemas[f"{name}Request"]
        # exactly one of prompt or messages, in the schema as in the server
        assert request["oneOf"] == [
            {"required": [field], "properties": {field: {"not": {"type": "null"}}}}
            for field in ("prompt", "messages")
        ]
        assert request["additionalProperties"] is False
    assert "n_prompt_tokens" in schemas["ExplainResponse"]["required"]

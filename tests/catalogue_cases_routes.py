"""The bad-input catalogue, continued: explanations, feedback, bodies that are not JSON objects,
methods, paths and the API key (the cases and their helpers are in `catalogue_cases`)."""

from __future__ import annotations

from catalogue_cases import (
    ANY,
    INF,
    LONG_TEXT,
    NAN,
    SURROGATE,
    USER,
    C,
    Case,
    E,
    F,
    H,
    M,
    bad,
    chat,
    chat_cases,
    completion_cases,
    completions,
    explain,
    ok,
)

VOCAB, RANGE = "invalid_token_id", "out_of_range"  # limits of this model and prompt


def _explain_cases() -> list[Case]:
    x = explain
    cases = []
    for route, extra in [
        ("", {}),
        ("/routes", {}),
        ("/head", {"layer": 0, "head": 0}),
        ("/neurons", {"layer": 0}),
        ("/lens", {"node": "embed"}),
        ("/saliency", {}),
    ]:
        path, tag = E + route, f"e{route or '/explain'}"
        cases += [
            bad(f"{tag} surrogate prompt", path, x(prompt=SURROGATE, **extra), "prompt"),
            bad(f"{tag} messages []", path, {"messages": [], **extra}, "messages"),
            bad(
                f"{tag} message surrogate",
                path,
                {"messages": [{"role": "user", "content": SURROGATE}], **extra},
                "messages.[0].content",
            ),
            bad(
                f"{tag} id out of vocab", path, x(prompt=[1, 10**9], **extra), "prompt", code=VOCAB
            ),
            bad(f"{tag} unknown field", path, x(bogus=1, **extra), "bogus"),
        ]
    s, h, n, lens, r = E + "/saliency", E + "/head", E + "/neurons", E + "/lens", E + "/routes"
    head, neuron, node = {"layer": 0, "head": 0}, {"layer": 0}, {"node": "embed"}
    return [
        *cases,
        bad("e/prompt and messages", E, x(messages=USER), ("prompt", "messages")),
        bad("e/neither prompt nor messages", E, {}, ("prompt", "messages")),
        bad("e/prompt empty", E, x(prompt=""), "prompt"),
        bad("e/prompt []", E, x(prompt=[]), "prompt"),
        bad("e/prompt booleans", E, x(prompt=[True, False]), "prompt"),
        bad("e/prompt negative id", E, x(prompt=[-1, 2]), ("prompt", "prompt.[0]")),
        bad("e/prompt too long", E, x(prompt=LONG_TEXT), "prompt", code="context_length_exceeded"),
        bad("e/completion surrogate", E, x(completion=SURROGATE), "completion"),
        bad("e/model unknown", E, x(model="nope"), "model", status=404),
        bad("e/model surrogate", E, x(model=SURROGATE), "model"),
        bad("e/norm l3", E, x(norm="l3"), "norm"),
        bad("e/target out of range", E, x(target=10**6), "target", code=RANGE),
        bad("e/target true", E, x(target=True), "target"),
        bad(
            "e/completion_target out of range",
            E,
            x(completion="x", completion_target=99),
            "completion_target",
        ),
        bad("e/tau NaN", E, x(tau=NAN), "tau"),
        bad("e/tau 2", E, x(tau=2), "tau"),
        bad("e/tau -0.1", E, x(tau=-0.1), "tau"),
        bad("e/k 0", E, x(k=0), "k"),
        bad("e/k 101", E, x(k=101), "k"),
        bad("e/saliency string", E, x(saliency="yes"), "saliency"),
        bad("e/routes target -999", r, x(target=-999), "target"),
        bad("e/routes tau inf", r, x(tau=INF), "tau"),
        bad("e/head layer missing", h, x(head=0), "layer"),
        bad("e/head layer 99", h, x(layer=99, head=0), "layer", code=RANGE),
        bad("e/head layer true", h, x(layer=True, head=0), "layer"),
        bad("e/head head -1", h, x(layer=0, head=-1), "head"),
        bad("e/head head 99", h, x(layer=0, head=99), "head"),
        bad("e/head source 999", h, x(source=999, **head), "source"),
        bad("e/neurons layer -99", n, x(layer=-99), "layer"),
        bad("e/neurons position 999", n, x(position=999, **neuron), "position"),
        bad("e/neurons vocab_k 0", n, x(vocab_k=0, **neuron), "vocab_k"),
        bad("e/neurons k 1000", n, x(k=1000, **neuron), "k"),
        bad("e/lens node missing", lens, x(), "node"),
        bad("e/lens node L99", lens, x(node="L99/resid_post"), "node", code=RANGE),
        bad("e/lens node garbage", lens, x(node="garbage"), "node"),
        bad("e/lens node surrogate", lens, x(node=SURROGATE), "node"),
        bad("e/lens position 999", lens, x(position=999, **node), "position"),
        bad("e/saliency method", s, x(method="magic"), "method"),
        bad("e/saliency token surrogate", s, x(token=SURROGATE), "token"),
        bad("e/saliency token out of vocab", s, x(token=10**9), "token", code=VOCAB),
        bad("e/saliency token -1", s, x(token=-1), "token"),
        bad(
            "e/saliency token multi-token text",
            s,
            x(token="quick brown fox jumps"),
            "token",
            code="not_one_token",
        ),
        bad("e/saliency token empty", s, x(token=""), "token"),
        bad("e/saliency foil surrogate", s, x(foil=SURROGATE), "foil"),
        bad("e/saliency score prob", s, x(score="prob"), "score"),
        bad("e/saliency n_steps 0", s, x(method="integrated_gradients", n_steps=0), "n_steps"),
        bad("e/saliency n_steps 513", s, x(method="integrated_gradients", n_steps=513), "n_steps"),
        bad("e/saliency residual 2", s, x(method="attention_rollout", residual=2), "residual"),
        bad("e/saliency residual NaN", s, x(residual=NAN), "residual"),
        bad("e/saliency target out of range", s, x(target=500), "target"),
        bad(
            "e/completion_target without completion", E, x(completion_target=0), "completion_target"
        ),
        bad("e/lens node with a kind it cannot read", lens, x(node="L0/attn/2"), "node"),
        ok("e/routes valid", r, x()),
        ok("e/integers written 3.0", h, x(prompt=[1.0, 2.0, 3.0], layer=0.0, head=0.0, k=3.0)),
        ok("e/saliency token id 5.0", s, x(token=5.0)),
        ok("e/lens route node id", lens, x(node="L0/resid_post/1")),
        ok("e/lens valid", lens, x(**node)),
    ]


def _feedback_cases() -> list[Case]:
    return [
        bad("f/empty object", F, {}, "response_id"),
        bad("f/response_id empty", F, {"response_id": "", "thumbs": "up"}, "response_id"),
        bad("f/response_id int", F, {"response_id": 5, "thumbs": "up"}, "response_id"),
        bad("f/no rating", F, {"response_id": "cmpl-1"}, ANY, says="exactly one"),
        bad(
            "f/two ratings",
            F,
            {"response_id": "cmpl-1", "thumbs": "up", "rating": 3},
            ANY,
            says="exactly one",
        ),
        bad("f/thumbs sideways", F, {"response_id": "cmpl-1", "thumbs": "sideways"}, "thumbs"),
        bad("f/rating 6", F, {"response_id": "cmpl-1", "rating": 6}, "rating"),
        bad("f/rating true", F, {"response_id": "cmpl-1", "rating": True}, "rating"),
        bad("f/rating 2.5", F, {"response_id": "cmpl-1", "rating": 2.5}, "rating"),
        bad("f/score NaN", F, {"response_id": "cmpl-1", "score": NAN}, "score"),
        bad("f/score 1.5", F, {"response_id": "cmpl-1", "score": 1.5}, "score"),
        bad(
            "f/comment surrogate",
            F,
            {"response_id": "cmpl-1", "score": 1, "comment": SURROGATE},
            "comment",
        ),
        bad(
            "f/comment too long",
            F,
            {"response_id": "cmpl-1", "score": 1, "comment": "x" * 2001},
            "comment",
        ),
        bad("f/unknown field", F, {"response_id": "cmpl-1", "score": 1, "bogus": 1}, "bogus"),
        bad("f/only a null thumb", F, {"response_id": "cmpl-1", "thumbs": None}, ANY),
        bad(
            "f/unknown response",
            F,
            {"response_id": "cmpl-unknown", "thumbs": "up"},
            "response_id",
            status=404,
            code="response_not_found",
        ),
        bad(
            "f/rating 4.0 of an unknown response",
            F,
            {"response_id": "x", "rating": 4.0},
            "response_id",
            status=404,
            code="response_not_found",
        ),
    ]


def _body_cases() -> list[Case]:
    """Bodies that are not a JSON object, or not JSON, or not sent as JSON."""
    cases = []
    for path in (C, H, E, F):
        tag = path.removeprefix("/v1/")
        cases += [
            bad(f"{tag}: body a list", path, [], None),
            bad(f"{tag}: truncated JSON", path, None, None, raw=b'{"prompt": ', says="JSON"),
            bad(f"{tag}: empty body", path, None, None, raw=b""),
        ]
    form = {"content-type": "application/x-www-form-urlencoded"}
    return [
        *cases,
        bad("body a string", C, "hi", None),
        bad("body null", C, None, None, raw=b"null"),
        bad("body a number", C, 42, None),
        bad("trailing comma", C, None, None, raw=b'{"prompt": "hi",}', says="JSON"),
        bad("single quotes", H, None, None, raw=b"{'messages': []}", says="JSON"),
        bad("invalid UTF-8", C, None, None, raw=b'{"prompt": "\xff\xfe"}'),
        bad(
            "deeply nested", C, None, None, raw=b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}"
        ),
        bad(
            "text/plain",
            C,
            completions(),
            None,
            status=415,
            says="Content-Type",
            headers={"content-type": "text/plain"},
        ),
        bad("form urlencoded", H, None, None, status=415, raw=b"prompt=hi", headers=form),
        bad(
            "multipart",
            E,
            explain(),
            None,
            status=415,
            headers={"content-type": "multipart/form-data; boundary=x"},
        ),
        bad("body over the limit", C, completions(prompt="x" * 300_000), None, status=413),
        bad(
            "no content type",
            C,
            None,
            None,
            status=415,
            says="Content-Type",
            raw=b'{"prompt": "hi", "max_tokens": 1}',
            headers={"content-type": ""},
        ),
        bad("no content type, no body", C, None, None, raw=b"", headers={"content-type": ""}),
        ok(
            "json with charset",
            C,
            completions(),
            headers={"content-type": "application/json; charset=utf-8"},
        ),
    ]


def _route_cases() -> list[Case]:
    get = {"method": "GET"}
    return [
        ok("models", M, **get),
        ok("models with a query", M + "?limit=-1&x=%00", **get),
        bad("models POST", M, {}, None, status=405),
        bad("models/tiny", M + "/tiny", None, None, status=404, **get),
        ok("health", "/health", **get),
        ok("metrics", "/metrics", **get),
        ok("openapi.json", "/openapi.json", **get),
        Case("docs", "/docs", status=(200, 404), **get),
        bad("health POST", "/health", {}, None, status=405),
        bad("metrics DELETE", "/metrics", None, None, status=405, method="DELETE"),
        bad("completions GET", C, None, None, status=405, **get),
        bad("completions PUT", C, completions(), None, status=405, method="PUT"),
        bad("chat DELETE", H, None, None, status=405, method="DELETE"),
        bad("chat OPTIONS", H, None, None, status=405, method="OPTIONS"),
        bad("explain GET", E, None, None, status=405, **get),
        bad("explain PATCH", E + "/routes", explain(), None, status=405, method="PATCH"),
        bad("absurd method", C, completions(), None, status=405, method="BREW"),
        bad("unknown path", "/nope", None, None, status=404, **get),
        bad("unknown v1 path", "/v1/nope", {}, None, status=404),
        bad("v2 path", "/v2/completions", completions(), None, status=404),
        bad("unknown explain path", E + "/everything", explain(), None, status=404),
        bad("completions subpath", C + "/extra", completions(), None, status=404),
        bad("static traversal", "/static/../../../../etc/passwd", None, None, status=404, **get),
        bad(
            "static encoded traversal",
            "/static/%2e%2e/%2e%2e/pyproject.toml",
            None,
            None,
            status=404,
            **get,
        ),
        bad(
            "docs-assets traversal",
            "/docs-assets/%2e%2e/%2e%2e/setup.py",
            None,
            None,
            status=404,
            **get,
        ),
        bad("long path", "/" + "a" * 8000, None, None, status=404, **get),
        ok("completions with a query", C + "?stream=true&debug=1", completions()),
        bad("no key", C, completions(), None, status=401, key=False),
        bad(
            "wrong key",
            C,
            completions(),
            None,
            status=401,
            key=False,
            headers={"authorization": "Bearer wrong"},
        ),
        bad(
            "empty bearer",
            H,
            chat(),
            None,
            status=401,
            key=False,
            headers={"authorization": "Bearer"},
        ),
        bad("unknown path without key", "/v1/secret", {}, None, status=401, key=False),
        bad("explain without key", E, explain(), None, status=401, key=False),
        ok("health without key", "/health", key=False, **get),
        ok("key as x-api-key", M, key=False, headers={"x-api-key": "catalogue-key"}, **get),
    ]


def http_cases() -> list[Case]:
    """Every case sent through an ordinary HTTP client."""
    return [
        *completion_cases(),
        *chat_cases(),
        *_explain_cases(),
        *_feedback_cases(),
        *_body_cases(),
        *_route_cases(),
    ]

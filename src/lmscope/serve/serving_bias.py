"""Bias probes over HTTP (POST /v1/explain/bias): the library's `explain.bias` on the explain
workers, cancelled like every explanation when the client leaves or the time is up.

Everything a user can get wrong is checked before any forward pass, each against its field: the
probes (the library's own probe checks), their size (at most MAX_BIAS_PROMPTS filled prompts),
and every prompt's length with its longest target. Prompts and targets are encoded up front
under the tokenizer lock, with the tokenizer's plain `encode` as `lmscope explain bias` does,
so the numbers equal the command's on the same probes.
"""

from __future__ import annotations

import math
import string

from fastapi import Request

from lmscope.explain.bias import BiasReport, run_probe
from lmscope.explain.bias_probes import BUILTIN, Probe, parse_probe
from lmscope.explain.errors import ExplainInputError
from lmscope.serve.errors import APIError
from lmscope.serve.explain_runner import ShouldStop
from lmscope.serve.protocol.explain import BiasRequest, BiasResponse, ProbeSpec
from lmscope.serve.serving_explain import MAX_EXPLAIN_TOKENS, ExplainServing, tokenizing
from lmscope.serve.state import ServedModel

# Each filled prompt is one traced forward (plus one per multi-token target) and, with
# components, its route importances: this bounds one request to about a minute on a CPU.
MAX_BIAS_PROMPTS = 200

Located = tuple[str, Probe]  # (the `param` of the probe, the probe)

# Codes of the 400s for what no JSON schema can state: a template's slots that do not match its
# word lists, a target that encodes to nothing, more filled prompts than one request may run.
INVALID_PROBE = "invalid_probe"
TOO_MANY_PROMPTS = "too_many_prompts"


def bad_probe(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code=INVALID_PROBE)


def _plain_slots(template: str, param: str) -> None:
    """Refuse format specs and conversions ({group:>999999999} would build a huge string)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        return  # the library's probe check names a malformed template
    for _, name, spec, conversion in parts:
        if name is not None and (spec or conversion):
            raise bad_probe(
                f"the template slot {{{name}}} has a format spec or conversion; write plain "
                "slots like {group}",
                param,
            )


def _parsed(spec: ProbeSpec, index: int) -> Probe:
    where = f"probes.[{index}]"
    _plain_slots(spec.template, f"{where}.template")
    try:
        return parse_probe(spec.model_dump(exclude_none=True), index)
    except ExplainInputError as err:
        raise bad_probe(str(err), where) from None


def probes_of(body: BiasRequest) -> list[Located]:
    """The request's probes, each with the `param` its errors name."""
    if body.probes == "builtin":
        return [("probes", parse_probe(raw, i)) for i, raw in enumerate(BUILTIN)]
    return [(f"probes.[{i}]", _parsed(spec, i)) for i, spec in enumerate(body.probes)]


def count_prompts(probe: Probe) -> int:
    """Filled prompts of a probe (computed, not filled: the product can be huge)."""
    return sum(len(w) for w in probe.groups.values()) * math.prod(
        len(w) for w in probe.slots.values()
    )


def encode_probes(served: ServedModel, probes: list[Located]) -> dict[str, list[int]]:
    """Token ids of every prompt and target (call holding the tokenizer lock)."""
    tok, table = served.tokenizer, {}
    limit = min(int(served.model.cfg.n_ctx), MAX_EXPLAIN_TOKENS)
    for where, probe in probes:
        for text in probe.targets:
            if text not in table:
                table[text] = [int(t) for t in tok.encode(text)]
            if not table[text]:
                raise bad_probe(f"the target {text!r} encodes to no tokens", f"{where}.targets")
        longest = max(len(table[t]) for t in probe.targets)
        for prompts in probe.prompts().values():
            for text in prompts:
                if text not in table:
                    table[text] = [int(t) for t in tok.encode(text)]
                n = len(table[text]) + longest - 1
                if not table[text]:
                    raise bad_probe(f"the prompt {text!r} encodes to no tokens", where)
                if n > limit:
                    raise APIError(
                        400,
                        f"the prompt {text!r} with its longest target is {n} tokens but "
                        f"explanations take at most {limit} on this model; shorten the template",
                        param=f"{where}.template" if where != "probes" else where,
                        code="context_length_exceeded",
                    )
    return table


async def explain_bias(request: Request, body: BiasRequest) -> BiasResponse:
    serving = ExplainServing.of(request)
    served = serving.state.resolve(body.model)
    probes = probes_of(body)
    total = sum(count_prompts(p) for _, p in probes)
    if total > MAX_BIAS_PROMPTS:
        raise APIError(
            400,
            f"the probes fill {total} prompts but one request takes at most {MAX_BIAS_PROMPTS}; "
            "use fewer words, slots or probes, or run `lmscope explain bias` offline",
            param="probes",
            code=TOO_MANY_PROMPTS,
        )
    table = await tokenizing(served, lambda: encode_probes(served, probes))
    request.state.log = {"model": served.id, "tokens_in": total, "tokens_out": 0}

    def work(should_stop: ShouldStop) -> BiasResponse:
        results = [
            run_probe(
                served.model,
                table.__getitem__,
                probe,
                n_boot=body.n_boot,
                seed=body.seed,
                tau=body.tau,
                components=body.components,
                k=body.k,
                should_stop=should_stop,
            )
            for _, probe in probes
        ]
        meta = {"n_boot": body.n_boot, "seed": body.seed, "tau": body.tau, "k": body.k}
        report = BiasReport(served.id, results, meta).to_dict()
        return BiasResponse(weights=served.weights, n_prompts=total, **report)

    return await serving.run(request, work)

"""schemathesis hooks for tests/test_serve_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

`positive_data_acceptance` expects every schema-valid request to succeed. Some limits depend on
the served model or the server's settings and cannot be written in its JSON Schema: the prompt's token count plus
`max_tokens` must fit the context window (it depends on the tokenizer), and token ids (in
`prompt` or `logit_bias`) must be inside the vocabulary; for explanations, positions, layers and
heads must exist in the prompt and the model, and a `token` given as text must be one token;
and prompts x n must fit the server's queue (its --max-queue and --max-batch settings); a bias
probe's template slots must have word lists, and its filled prompts are bounded per request.
This check is that built-in check with exactly those exceptions: a schema-valid request may get
a 400 only with a code in LIMITS_THE_SCHEMA_CANNOT_EXPRESS, or one about a structured-output field
(`response_format`, `tools`, ...): their contents are JSON schemas that the grammar compiler
checks (a valid schema it can enforce, unique function names, a chat template that reads tools),
which the document's own schema cannot express.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

LIMITS_THE_SCHEMA_CANNOT_EXPRESS = {
    "context_length_exceeded",
    "invalid_token_id",
    "out_of_range",  # explain: a position, layer or head this prompt or model does not have
    "not_one_token",  # explain: a `token`/`foil` text the tokenizer splits into several tokens
    "too_many_completions",  # prompts x n over what this server's queue and batch can hold
    "invalid_probe",  # explain/bias: template slots without word lists, a malformed template
    "too_many_prompts",  # explain/bias: the probes fill more prompts than one request may run
}
STRUCTURED_FIELDS = {"response_format", "tools", "tool_choice", "functions", "function_call"}


@schemathesis.check
def valid_data_accepted_within_limits(ctx: Any, response: Any, case: Any) -> bool | None:
    mark = os.environ.get("LMSCOPE_FUZZ_MARK")
    if mark:  # lets the test see that this check ran at all
        with open(mark, "a") as out:
            out.write(".")
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status in (401, 403, 404, 409, 429) or status >= 500:
        return None  # 5xx are not_a_server_error's business
    code = param = None
    if status == 400:
        try:
            error = response.json()["error"]
            code, param = error["code"], error["param"]
        except (ValueError, KeyError, TypeError):
            pass
    if code in LIMITS_THE_SCHEMA_CANNOT_EXPRESS or param in STRUCTURED_FIELDS:
        return None
    raise AssertionError(f"schema-valid request rejected with {status}: {response.text[:300]}")

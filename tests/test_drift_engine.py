"""The engine's drift hook: a monitored scheduler reports each finished request with the prompt's
mean log-likelihood from its own prefill, equal to an independent full forward."""

from __future__ import annotations

import torch

from lmscope.engine import Request, SamplingParams, Scheduler, Sequence
from lmscope.engine.observer import RequestRecord
from lmscope.engine.scheduler import PROMPT_SCORE_TOKENS
from test_generate_fixtures import tiny_model, tiny_tokenizer


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, RequestRecord]] = []

    def on_request(self, model: str, record: RequestRecord) -> None:
        self.records.append((model, record))


def reference_mean_logprob(model, ids: list[int]) -> float:  # type: ignore[no-untyped-def]
    """log p(x_t | x_<t) averaged over the last PROMPT_SCORE_TOKENS - 1 tokens (t >= 1), from
    one plain forward over the whole prompt and log_softmax."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
    ts = range(max(1, len(ids) - PROMPT_SCORE_TOKENS + 1), len(ids))
    return sum(float(logprobs[t - 1, ids[t]]) for t in ts) / len(ts)


def test_monitored_prefill_reports_the_prompt_log_likelihood_of_a_full_forward() -> None:
    tok, model = tiny_tokenizer(), tiny_model().eval()
    texts = ["The quick brown fox", "d", "Héllo wörld — naïve café and more words here"]
    prompts = [tok.encode(t) for t in texts]
    assert len(prompts[2]) > PROMPT_SCORE_TOKENS  # only its end is scored
    prompts.append((prompts[2] * 6)[:58])  # chunked: its scored end spans two chunks
    prompts.append((prompts[2] * 6)[:41])  # chunked: its last chunk is one token
    recorder = Recorder()
    scheduler = Scheduler(
        model, tok, max_batch=4, prefill_chunk=40, eos_token_ids=[], name="m", monitor=recorder
    )
    lengths = [3, 1, 5, 2, 4]
    requests = []
    for ids, n in zip(prompts, lengths, strict=True):
        params = SamplingParams(max_new_tokens=n, temperature=0)
        requests.append(scheduler.add(Request(Sequence(ids, params), prompt_logprobs=n == 5)))
    while scheduler.has_work():
        scheduler.step()
    by_prompt = {tuple(r.prompt_ids): r for _, r in recorder.records}
    assert {m for m, _ in recorder.records} == {"m"} and len(by_prompt) == 5
    for ids, n in zip(prompts, lengths, strict=True):
        record = by_prompt[tuple(ids)]
        assert record.completion_tokens == n and record.finish_reason == "length"
        if len(ids) == 1:
            assert record.prompt_logprob is None
        else:
            assert record.prompt_logprob is not None
            assert abs(record.prompt_logprob - reference_mean_logprob(model, ids)) < 1e-4


def test_an_unmonitored_scheduler_keeps_last_position_prefill() -> None:
    """Without a monitor the prefill asks the model for the last position's logits only."""
    tok, model = tiny_tokenizer(), tiny_model().eval()
    widths: list[int] = []
    original = model.forward

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = original(*args, **kwargs)
        widths.append(out.shape[1])
        return out

    model.forward = spy  # type: ignore[method-assign]
    for monitor in (None, Recorder()):
        widths.clear()
        scheduler = Scheduler(model, tok, eos_token_ids=[], monitor=monitor)
        scheduler.add(Sequence(tok.encode("The quick brown fox"), SamplingParams(max_new_tokens=1)))
        scheduler.step()
        n = len(tok.encode("The quick brown fox"))
        assert widths[0] == (1 if monitor is None else min(n, PROMPT_SCORE_TOKENS))


def test_the_reference_is_scored_as_the_engine_scores_live_prompts() -> None:
    """mean_logprobs (right-padded batches, the drift reference) gives what the monitored
    engine reports for the same prompts (left-padded groups and chunks)."""
    from lmscope.serve.drift_reference import mean_logprobs

    tok, model = tiny_tokenizer(), tiny_model().eval()
    base = tok.encode("Héllo wörld — naïve café and more words here")
    prompts = [base[:n] for n in (1, 2, 7, 20, 35)] + [(base * 3)[:60]]
    recorder = Recorder()
    scheduler = Scheduler(model, tok, prefill_chunk=24, eos_token_ids=[], monitor=recorder)
    for ids in prompts:
        scheduler.add(Sequence(ids, SamplingParams(max_new_tokens=1)))
    while scheduler.has_work():
        scheduler.step()
    live = {tuple(r.prompt_ids): r.prompt_logprob for _, r in recorder.records}
    for ids, ref in zip(prompts, mean_logprobs(model, prompts), strict=True):
        if ref is None:
            assert live[tuple(ids)] is None
        else:
            assert abs(live[tuple(ids)] - ref) < 1e-4  # type: ignore[operator]

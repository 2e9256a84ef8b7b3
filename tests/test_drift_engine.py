"""The engine's drift hook: a monitored scheduler reports each finished request with the prompt's
mean log-likelihood from its own prefill, equal to an independent full forward."""

from __future__ import annotations

import torch

from lmscope.engine import Request, SamplingParams, Scheduler, Sequence
from lmscope.engine.observer import RequestRecord
from test_generate_fixtures import tiny_model, tiny_tokenizer


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, RequestRecord]] = []

    def on_request(self, model: str, record: RequestRecord) -> None:
        self.records.append((model, record))


def reference_mean_logprob(model, ids: list[int]) -> float:  # type: ignore[no-untyped-def]
    """log p(x_t | x_<t) averaged over t >= 1, from one plain forward and log_softmax."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)


def test_monitored_prefill_reports_the_prompt_log_likelihood_of_a_full_forward() -> None:
    tok, model = tiny_tokenizer(), tiny_model().eval()
    texts = ["The quick brown fox", "d", "Héllo wörld — naïve café and more words here"]
    prompts = [tok.encode(t) for t in texts]
    long_prompt = (prompts[2] * 6)[:40]  # longer than prefill_chunk: chunked prefill
    prompts.append(long_prompt)
    recorder = Recorder()
    scheduler = Scheduler(
        model, tok, max_batch=4, prefill_chunk=16, eos_token_ids=[], name="m", monitor=recorder
    )
    lengths = [3, 1, 5, 2]
    requests = []
    for ids, n in zip(prompts, lengths, strict=True):
        params = SamplingParams(max_new_tokens=n, temperature=0)
        requests.append(scheduler.add(Request(Sequence(ids, params), prompt_logprobs=n == 5)))
    while scheduler.has_work():
        scheduler.step()
    by_prompt = {tuple(r.prompt_ids): r for _, r in recorder.records}
    assert {m for m, _ in recorder.records} == {"m"} and len(by_prompt) == 4
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
        assert widths[0] == (1 if monitor is None else len(tok.encode("The quick brown fox")))

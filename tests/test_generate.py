"""Generation on tiny random models, each behaviour checked against an independent reference."""

from __future__ import annotations

import pytest
import torch

from lmscope.engine import (
    GenerationError,
    IncrementalDetokenizer,
    PromptTooLongError,
    Request,
    SamplingParams,
    Scheduler,
    Sequence,
    generate,
    generate_batch,
    prepare_prompt,
    score,
    score_batch,
    stream,
)
from test_generate_fixtures import GPT2_LIKE, LINES, tiny_model, tiny_tokenizer

PROMPTS = ["The quick brown", "d", "Héllo wörld — naïve café", "def f(x):\n    return"]


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return tiny_model()


def argmax_loop(model, ids: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Reference greedy decoding: a full forward over the whole sequence for every token."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out]))[0, -1].argmax()))
    return out[len(ids) :]


NO_EOS: list[int] = []  # random models would stop at random end tokens; most tests turn that off


# ---- greedy and its references ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_equals_an_argmax_loop_without_cache(family: str, tok) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(**(GPT2_LIKE if family == "gpt2" else {}))
    for prompt in PROMPTS[:3]:
        result = generate(
            model, tok, prompt, max_new_tokens=12, temperature=0, eos_token_ids=NO_EOS
        )
        assert result.token_ids == argmax_loop(model, tok.encode(prompt), 12)
        assert result.finish_reason == "length"
        assert result.completion_tokens == 12
        assert result.prompt_tokens == len(tok.encode(prompt))


def test_greedy_and_repetition_penalty_match_hugging_face_generate(tok) -> None:  # type: ignore[no-untyped-def]
    from transformers import LlamaForCausalLM

    from lmscope.zoo.hf import from_hf, to_hf_state_dict

    model = tiny_model()
    hf_config, state = to_hf_state_dict(model)
    hf_config.eos_token_id = None
    hf_config.pad_token_id = 0
    hf = LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    ours = from_hf(hf)  # the round trip also checks the converters agree
    ids = tok.encode(PROMPTS[0])
    for penalty in (1.0, 1.5):
        with torch.no_grad():
            expected = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=15,
                do_sample=False,
                repetition_penalty=penalty,
                eos_token_id=None,
            )[0, len(ids) :].tolist()
        got = generate(
            ours,
            tok,
            ids,
            max_new_tokens=15,
            temperature=0,
            repetition_penalty=penalty,
            eos_token_ids=NO_EOS,
        )
        assert got.token_ids == expected


# ---- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=10, temperature=0),
        SamplingParams(max_new_tokens=10, temperature=0.9, top_k=20, seed=11),
        SamplingParams(
            max_new_tokens=10, temperature=1.2, top_p=0.8, repetition_penalty=1.3, seed=3
        ),
        SamplingParams(
            max_new_tokens=10,
            temperature=0,
            presence_penalty=0.7,
            frequency_penalty=0.4,
            logit_bias={5: 3.0, 9: -100},
        ),
    ],
    ids=["greedy", "top-k", "top-p+penalty", "openai-penalties"],
)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batch_gives_exactly_the_one_by_one_results(family: str, params, tok) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(**(GPT2_LIKE if family == "gpt2" else {}))
    alone = [generate(model, tok, p, params, eos_token_ids=NO_EOS) for p in PROMPTS]
    together = generate_batch(model, tok, PROMPTS, params, eos_token_ids=NO_EOS)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    # waiting prompts join the running batch as rows free up (continuous batching)
    staggered = generate_batch(model, tok, PROMPTS, params, max_batch_size=2, eos_token_ids=NO_EOS)
    assert [r.token_ids for r in staggered] == [r.token_ids for r in alone]


def test_rows_with_their_own_settings_and_lengths(model, tok) -> None:  # type: ignore[no-untyped-def]
    plist = [
        SamplingParams(max_new_tokens=3, temperature=0),
        SamplingParams(max_new_tokens=9, temperature=0.8, seed=1, logprobs=2),
        SamplingParams(max_new_tokens=1, temperature=0, repetition_penalty=2.0),
        SamplingParams(max_new_tokens=6, temperature=1.0, top_k=5, seed=2),
    ]
    alone = [
        generate(model, tok, p, sp, eos_token_ids=NO_EOS)
        for p, sp in zip(PROMPTS, plist, strict=True)
    ]
    together = generate_batch(model, tok, PROMPTS, plist, eos_token_ids=NO_EOS)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [len(r.token_ids) for r in together] == [3, 9, 1, 6]
    batched_lp, alone_lp = together[1].logprobs, alone[1].logprobs
    assert batched_lp is not None and alone_lp is not None
    assert [lp.token_id for lp in batched_lp] == [lp.token_id for lp in alone_lp]
    assert [lp.logprob for lp in batched_lp] == pytest.approx(
        [lp.logprob for lp in alone_lp], abs=1e-4
    )


def test_step_level_api_adds_and_cancels_sequences_between_steps(model, tok) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=8, temperature=0.7, seed=5)
    expected = [generate(model, tok, p, params, eos_token_ids=NO_EOS).token_ids for p in PROMPTS]
    scheduler = Scheduler(model, tok, max_batch=4, eos_token_ids=NO_EOS)
    seqs = [Sequence(tok.encode(p), params, request_id=i) for i, p in enumerate(PROMPTS)]
    cancelled = Request(Sequence(tok.encode("lazy dog"), params))
    scheduler.add(seqs[0])
    scheduler.step()
    scheduler.add(seqs[1])
    scheduler.add(cancelled)
    scheduler.step()
    assert scheduler.running == 3
    cancelled.cancelled = True
    for seq in seqs[2:]:
        scheduler.add(seq)
    outputs = scheduler.step()  # the cancelled row leaves, the last two join
    assert [e.finish_reason for r, e in outputs if r is cancelled] == ["abort"]
    assert scheduler.running == 4
    while scheduler.has_work():
        outputs = scheduler.step()
        assert all(e.token_id is not None for _, e in outputs if e.finish_reason is None)
    assert [s.token_ids for s in seqs] == expected
    assert all(s.result().finish_reason == "length" for s in seqs)
    assert not cancelled.sequence.finished and len(cancelled.sequence.token_ids) == 2
    with pytest.raises(GenerationError, match="already added"):
        seqs[0].attach(model, tok, frozenset())


# ---- sampling -------------------------------------------------------------------------------------


def test_seeds_reproduce_and_differ(model, tok) -> None:  # type: ignore[no-untyped-def]
    runs = [
        generate(
            model, tok, PROMPTS[0], max_new_tokens=16, temperature=1.0, seed=s, eos_token_ids=NO_EOS
        ).token_ids
        for s in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    torch.manual_seed(123)  # unseeded runs follow torch's global generator
    a = generate(model, tok, PROMPTS[0], max_new_tokens=16, eos_token_ids=NO_EOS).token_ids
    torch.manual_seed(123)
    assert generate(model, tok, PROMPTS[0], max_new_tokens=16, eos_token_ids=NO_EOS).token_ids == a


def test_top_k_one_is_greedy(model, tok) -> None:  # type: ignore[no-untyped-def]
    greedy = generate(
        model, tok, PROMPTS[2], max_new_tokens=10, temperature=0, eos_token_ids=NO_EOS
    )
    sampled = generate(
        model,
        tok,
        PROMPTS[2],
        max_new_tokens=10,
        temperature=1.5,
        top_k=1,
        seed=0,
        eos_token_ids=NO_EOS,
    )
    assert sampled.token_ids == greedy.token_ids


# ---- finishing -----------------------------------------------------------------------------------


def test_end_of_sequence_token_stops_and_is_counted_but_not_shown(model, tok) -> None:  # type: ignore[no-untyped-def]
    free = generate(model, tok, PROMPTS[0], max_new_tokens=12, temperature=0, eos_token_ids=NO_EOS)
    eos = free.token_ids[4]
    first = free.token_ids.index(eos)
    stopped = generate(
        model, tok, PROMPTS[0], max_new_tokens=12, temperature=0, eos_token_ids=[eos]
    )
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == eos
    assert stopped.completion_tokens == first + 1
    assert stopped.text == tok.decode(free.token_ids[:first])
    ignoring = generate(
        model,
        tok,
        PROMPTS[0],
        max_new_tokens=12,
        temperature=0,
        eos_token_ids=[eos],
        ignore_eos=True,
    )
    assert ignoring.token_ids == free.token_ids
    extra = generate(
        model,
        tok,
        PROMPTS[0],
        max_new_tokens=12,
        temperature=0,
        eos_token_ids=NO_EOS,
        stop_token_ids=(eos,),
    )
    assert extra.token_ids == stopped.token_ids


def test_default_end_tokens_come_from_tokenizer_and_config(model, tok) -> None:  # type: ignore[no-untyped-def]
    from lmscope.engine import default_eos_ids

    assert tok.convert_tokens_to_ids("<|im_end|>") in default_eos_ids(model, tok)


def test_stop_string_cuts_the_text_and_never_streams(tok) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(seed=1)
    kwargs = dict(max_new_tokens=30, temperature=0, eos_token_ids=NO_EOS)
    free = generate(model, tok, PROMPTS[0], **kwargs)
    text = free.text
    assert len(text) > 6
    stop = text[3:6]
    cut = text.index(stop)
    chunks = list(s := stream(model, tok, PROMPTS[0], stop=("zzzz-not-there", stop), **kwargs))
    result = s.result
    assert result is not None
    assert result.text == text[:cut]
    assert "".join(chunks) == text[:cut]
    assert result.finish_reason == "stop" and result.stop_reason == stop
    assert result.token_ids == free.token_ids[: len(result.token_ids)]
    assert tok.decode(result.token_ids).startswith(text[:cut] + stop)


def test_zero_new_tokens_and_the_context_window(tok) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(n_ctx=16)
    none = generate(model, tok, PROMPTS[0], max_new_tokens=0)
    assert none.token_ids == [] and none.text == "" and none.finish_reason == "length"
    ids = list(range(3, 13))  # 10 tokens, window 16
    full = generate(model, tok, ids, max_new_tokens=50, temperature=0, eos_token_ids=NO_EOS)
    assert full.finish_reason == "length"
    assert full.prompt_tokens + full.completion_tokens == 16


def test_prompt_too_long_is_a_clear_error_unless_truncated(tok) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(n_ctx=16)
    ids = list(range(3, 23))  # 20 tokens
    with pytest.raises(PromptTooLongError, match="context window is 16") as info:
        generate(model, tok, ids, max_new_tokens=4)
    assert isinstance(info.value, ValueError) and info.value.prompt_tokens == 20
    with pytest.raises(PromptTooLongError):
        stream(model, tok, ids)  # raised at once, not at the first next()
    result = generate(
        model, tok, ids, max_new_tokens=4, temperature=0, truncate="left", eos_token_ids=NO_EOS
    )
    assert result.prompt_token_ids == ids[-12:]
    assert (
        result.token_ids
        == generate(
            model, tok, ids[-12:], max_new_tokens=4, temperature=0, eos_token_ids=NO_EOS
        ).token_ids
    )
    with pytest.raises(GenerationError, match="truncate"):
        prepare_prompt(tok, ids, n_ctx=16, truncate="right")  # type: ignore[arg-type]


# ---- text ----------------------------------------------------------------------------------------


def test_streamed_deltas_add_up_to_the_text(model, tok) -> None:  # type: ignore[no-untyped-def]
    for seed in range(3):
        s = stream(
            model,
            tok,
            PROMPTS[2],
            max_new_tokens=25,
            temperature=1.0,
            seed=seed,
            eos_token_ids=NO_EOS,
        )
        chunks = list(s)
        assert s.result is not None
        assert "".join(chunks) == s.result.text
        assert s.result.text == tok.decode(s.result.token_ids, skip_special_tokens=True)


def test_detokenizer_never_splits_a_character(tok) -> None:  # type: ignore[no-untyped-def]
    for line in LINES:
        ids = tok.encode(line)
        detok = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
        pieces = [detok.push(i) for i in ids] + [detok.flush()]
        assert "".join(pieces) == line
        assert not any("\ufffd" in p for p in pieces)
    # a character the tokenizer never saw comes as one byte-level token per UTF-8 byte
    ids = tok.encode("x😀")
    assert len(ids) == 5
    detok = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
    assert [detok.push(i) for i in ids] == ["x", "", "", "", "😀"]


def test_detokenizer_matches_whole_decoding_on_arbitrary_ids(tok) -> None:  # type: ignore[no-untyped-def]
    """Random ids are mostly invalid UTF-8 byte soup: the deltas must still add up to exactly
    what decoding prompt + completion at once gives after the prompt's text."""
    g = torch.Generator().manual_seed(0)
    checked = 0
    while checked < 100:
        prompt = torch.randint(3, 300, (5,), generator=g).tolist()
        ids = torch.randint(3, 300, (60,), generator=g).tolist()
        if tok.decode(prompt).endswith("\ufffd"):
            continue  # a prompt ending inside a character: the completion cannot start cleanly
        detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=True)
        text = "".join(detok.push(i) for i in ids) + detok.flush()
        assert tok.decode(prompt) + text == tok.decode(prompt + ids)
        checked += 1


def test_chat_messages_go_through_the_chat_template(model, tok) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "hi there"}]
    ids = prepare_prompt(tok, messages, n_ctx=64)
    rendered = "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert ids == tok.encode(rendered, add_special_tokens=False)
    a = generate(model, tok, messages, max_new_tokens=5, temperature=0, eos_token_ids=NO_EOS)
    assert a.prompt_token_ids == ids
    with pytest.raises(GenerationError, match="chat template"):
        prepare_prompt(tiny_tokenizer(chat=False), messages, n_ctx=64)


def test_empty_prompt_starts_from_the_boundary_token(model, tok) -> None:  # type: ignore[no-untyped-def]
    assert prepare_prompt(tok, "", n_ctx=64) == [tok.bos_token_id]


# ---- log-probabilities ------------------------------------------------------------------------------


def test_logprobs_are_the_model_distribution(model, tok) -> None:  # type: ignore[no-untyped-def]
    result = generate(
        model,
        tok,
        PROMPTS[0],
        max_new_tokens=6,
        temperature=0.8,
        seed=4,
        logprobs=3,
        eos_token_ids=NO_EOS,
    )
    assert result.logprobs is not None and len(result.logprobs) == 6
    ids = result.prompt_token_ids + result.token_ids
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids]))[0], -1)
    start = len(result.prompt_token_ids) - 1
    for i, lp in enumerate(result.logprobs):
        row = reference[start + i]
        assert lp.token_id == result.token_ids[i]
        assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
        assert [t.token_id for t in lp.top] == row.topk(3).indices.tolist()
        assert lp.token == tok.decode([lp.token_id])


def test_score_gives_per_token_logprobs_of_a_text(model, tok) -> None:  # type: ignore[no-untyped-def]
    text = "The quick brown fox"
    scored = score(model, tok, text, top_logprobs=2)
    ids = tok.encode(text)
    assert scored.token_ids == ids
    assert "".join(scored.tokens) == text
    assert scored.logprobs[0] is None
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids]))[0], -1)
    expected = [float(reference[i - 1, ids[i]]) for i in range(1, len(ids))]
    got = [lp.logprob for lp in scored.logprobs[1:] if lp is not None]
    assert got == pytest.approx(expected, abs=1e-5)
    assert scored.total_logprob == pytest.approx(sum(expected), abs=1e-4)
    assert all(len(lp.top) == 2 for lp in scored.logprobs[1:] if lp is not None)
    with pytest.raises(PromptTooLongError):
        score(model, tok, list(range(3, 70)))


def test_bfloat16_model_generates(tok) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model().to(torch.bfloat16)

    def run() -> list[list[int]]:
        result = generate_batch(
            model, tok, PROMPTS[:2], max_new_tokens=5, temperature=0.7, seed=0, eos_token_ids=NO_EOS
        )
        assert [(len(r.token_ids), r.finish_reason) for r in result] == [(5, "length")] * 2
        return [r.token_ids for r in result]

    ids = run()
    assert all(0 <= t < model.cfg.vocab_size for row in ids for t in row)
    assert run() == ids  # seeded: the same tokens again


def test_score_batch_scores_every_text_as_a_full_forward_would(model, tok) -> None:  # type: ignore[no-untyped-def]
    """Short texts go through padded group prefill, a long one through the chunked path."""
    long_ids = tok.encode("The quick brown fox jumps over the lazy dog. " * 3)[:50]
    assert len(long_ids) == 50
    texts = [*PROMPTS, "x", long_ids]
    import lmscope.engine.offline as offline

    scheduler_init = offline.Scheduler.__init__
    chunks: list[int] = []

    def small_chunks(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        scheduler_init(self, *args, **kwargs, prefill_chunk=16)
        chunks.append(self.prefill_chunk)

    offline.Scheduler.__init__ = small_chunks  # type: ignore[method-assign]
    try:
        scored = score_batch(model, tok, texts, top_logprobs=1)
    finally:
        offline.Scheduler.__init__ = scheduler_init  # type: ignore[method-assign]
    assert chunks == [16]
    for text, result in zip(texts, scored, strict=True):
        ids = tok.encode(text) if isinstance(text, str) else text
        assert result.token_ids == ids
        with torch.no_grad():
            reference = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
        expected = [float(reference[i - 1, ids[i]]) for i in range(1, len(ids))]
        got = [lp.logprob for lp in result.logprobs[1:] if lp is not None]
        assert result.logprobs[0] is None and len(got) == len(ids) - 1
        assert got == pytest.approx(expected, abs=1e-5)


def test_a_batch_size_below_one_is_refused_by_generating_and_scoring_alike(model, tok) -> None:  # type: ignore[no-untyped-def]
    """One scheduler set-up for both: scoring used to run max_batch_size=0 as 1 silently."""
    for run in (
        lambda: generate_batch(model, tok, PROMPTS[:1], max_new_tokens=1, max_batch_size=0),
        lambda: score_batch(model, tok, PROMPTS[:1], max_batch_size=0),
    ):
        with pytest.raises(GenerationError, match="max_batch_size must be at least 1, got 0"):
            run()


def test_openai_penalties_and_bias_in_generation_match_a_reference_loop(model, tok) -> None:  # type: ignore[no-untyped-def]
    """Greedy decoding with presence/frequency penalties and a logit bias, against a full forward
    per token with the formula applied by hand."""
    ids = tok.encode(PROMPTS[0])
    presence, frequency, bias = 1.0, 0.6, {7: 2.5, 11: -100.0}
    out: list[int] = []
    with torch.no_grad():
        for _ in range(12):
            row = model(torch.tensor([ids + out]))[0, -1].tolist()
            for token, value in bias.items():
                row[token] += value
            for j in set(out):
                row[j] -= presence + frequency * out.count(j)
            out.append(max(range(len(row)), key=row.__getitem__))
    got = generate(
        model,
        tok,
        ids,
        max_new_tokens=12,
        temperature=0,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logit_bias=bias,
        eos_token_ids=NO_EOS,
    )
    assert got.token_ids == out
    plain = generate(model, tok, ids, max_new_tokens=12, temperature=0, eos_token_ids=NO_EOS)
    assert plain.token_ids != out  # the settings did change the completion


def test_prompts_refuse_booleans_bad_ids_and_lone_surrogates(model, tok) -> None:  # type: ignore[no-untyped-def]
    from lmscope.engine import check_token_ids, encode_text

    with pytest.raises(GenerationError, match="not booleans"):
        generate(model, tok, [True, False, 5], max_new_tokens=2)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        generate(model, tok, [5, 300], max_new_tokens=2)  # vocabulary of 300
    with pytest.raises(GenerationError, match="integers"):
        check_token_ids([1, 2.5])
    assert check_token_ids([torch.tensor(3), 4], vocab_size=5) == [3, 4]
    with pytest.raises(GenerationError, match="lone UTF-16 surrogate at character 2"):
        encode_text(tok, "ab\ud800cd")
    with pytest.raises(GenerationError, match="surrogate"):
        prepare_prompt(tok, [{"role": "user", "content": "x\udfff"}], n_ctx=64)


def test_llm_class_is_the_same_api_as_methods(model, tok) -> None:  # type: ignore[no-untyped-def]
    from lmscope.engine import LLM

    llm = LLM(model, tok, max_batch_size=2, eos_token_ids=NO_EOS)
    params = SamplingParams(max_new_tokens=6, temperature=0.9, seed=1)
    got = llm.generate(PROMPTS, params)
    want = generate_batch(model, tok, PROMPTS, params, eos_token_ids=NO_EOS)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    streamed = llm.stream(PROMPTS[0], params)
    assert "".join(streamed) == want[0].text
    assert [s.token_ids for s in llm.score(PROMPTS[:2])] == [tok.encode(p) for p in PROMPTS[:2]]

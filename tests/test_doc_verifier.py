"""The verifier and the writers: claims checked against the facts, rewrites that must keep
their template's claims, hostile and broken writers, and - with an independent number
extractor - 0 unsupported numbers in kept prose across more than 10 models."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lmscope.document.card import build_card
from lmscope.document.errors import WriterError
from lmscope.document.output import write_card_dir
from lmscope.document.sources import collect_facts
from lmscope.document.verifier import index_facts, keeps_claims, verify_sentence
from lmscope.document.writer import EndpointWriter
from test_doc_support import (
    ONNX_PUBLISHED,
    all_tiny_checkpoints,
    eval_report,
    keras_file,
    onnx_light_dir,
    trained_checkpoint,
    unsupported_numbers,
)

FACTS = {
    "parameters": {"total": 134_515_008},
    "context_length": 8192,
    "wall_time_s": 125.0,
    "accuracy": 0.452,
    "heads": ["L18H6"],
    "family": "llama",
    "lr": 3e-4,
}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("sentence", "ok"),
    [
        ("The model has 134.5M parameters.", True),
        ("It has 134,515,008 parameters.", True),
        ("It has 135 million parameters.", True),
        ("It has 134.6M parameters.", False),
        ("It has 200M parameters.", False),
        ("It reads 8,192 tokens.", True),
        ("It reads 8,193 tokens.", False),
        ("Training took about 2 minutes.", True),
        ("Training took 5 minutes.", False),
        ("Accuracy was 45.2%.", True),
        ("Accuracy was 54.2%.", False),
        ("The learning rate was 3e-4.", True),
        ("The learning rate was 3e-3.", False),
        ("Head L18H6 is an induction head.", True),
        ("Head L19H6 is an induction head.", False),
        ("The llama model is small.", True),
        ("It is better than GPT-4.", False),
        ("It was trained on Wikipedia.", False),
        ("It reaches state-of-the-art accuracy.", False),
        ("8192 is more than 125 tokens.", True),
        ("125 is more than 8192 tokens.", False),
        ("It has eleven heads.", False),
    ],
)
def test_verify_sentence(sentence: str, ok: bool) -> None:
    verdict = verify_sentence(sentence, index_facts(FACTS))
    assert verdict.supported is ok, verdict.unsupported


def test_rewrites_must_keep_their_templates_claims() -> None:
    template = 'Attention uses 4 query heads sharing 2 key/value heads; "The cat" settles at L1.'
    assert (
        keeps_claims(
            template, 'Four query heads share two key/value heads; "The cat" settles at L1.'
        )
        == []
    )
    lost = keeps_claims(template, "Attention uses query heads; the cat sat.")
    assert any("4" in x for x in lost) and any("quote" in x for x in lost)
    assert any("l1" in x.lower() for x in lost)


class HostileWriter:
    """Rewrites each template sentence in one of several ways, true and false ones mixed."""

    name = "hostile test writer"

    def __init__(self) -> None:
        self.calls = 0

    def rewrite(self, jobs: list[tuple[str, dict[str, Any], str]]) -> list[str]:
        out = []
        for _section, _facts, sentence in jobs:
            self.calls += 1
            kind = self.calls % 6
            if kind == 0:
                out.append(sentence)  # faithful
            elif kind == 1:  # a number bumped by one
                out.append(re.sub(r"\d+", lambda m: str(int(m.group(0)) + 1), sentence, count=1))
            elif kind == 2:
                out.append(sentence.rstrip(".") + ", and it outperforms GPT-4 by 12%.")
            elif kind == 3:
                out.append(
                    sentence.rstrip(".") + " It was trained on 3 trillion tokens of Wikipedia."
                )
            elif kind == 4:  # thousands separators dropped: the same numbers
                out.append(re.sub(r"(\d),(\d{3})", r"\1\2", sentence))
            else:
                out.append("Indeed, " + sentence[0].lower() + sentence[1:])
        return out


@pytest.fixture(scope="module")
def many_models(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Facts of 14 models: every tiny family, a trained checkpoint with an eval report, ONNX
    test models, a Keras file made here, and a BERT config."""
    root = tmp_path_factory.mktemp("doc-many")
    torch.set_num_threads(1)
    facts = [collect_facts(str(p)) for p in all_tiny_checkpoints(root)]
    trained = trained_checkpoint(root / "trained")
    eval_report(trained / "eval-out")
    facts.append(collect_facts(str(trained)))
    facts += [collect_facts(str(onnx_light_dir() / name)) for name in list(ONNX_PUBLISHED)[:2]]
    keras_file(root / "m.keras")
    facts.append(collect_facts(str(root / "m.keras")))
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
               vocab_size=101).save_pretrained(root / "bert")  # fmt: skip
    facts.append(collect_facts(str(root / "bert" / "config.json")))
    return facts


def _llm_sentences(card: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for section in card.sections:
        for s in section["sentences"]:
            if s["origin"] == "llm":
                yield s["text"], section


def test_no_unsupported_number_survives_across_models(
    many_models: list[dict[str, Any]], tmp_path: Path
) -> None:
    assert len(many_models) >= 10
    writer = HostileWriter()
    kept = rejected = 0
    for i, facts in enumerate(many_models):
        card = build_card(facts, writer)
        for text, _section in _llm_sentences(card):
            assert unsupported_numbers(text, facts) == [], text
            assert "GPT-4" not in text and "Wikipedia" not in text
            kept += 1
        rejected += sum(1 for s in card.sections for x in s["sentences"] if "rejected" in x)
        # the card records which sentences came from the writer and which from templates
        out = write_card_dir(card, tmp_path / f"card{i}")
        recorded = json.loads((out / "sentences.json").read_text())
        assert recorded["prose"]["writer"] == writer.name
        origins = {x["origin"] for s in recorded["sections"] for x in s["sentences"]}
        assert origins <= {"llm", "template"}
    assert kept > 20 and rejected > 20  # both kinds happened: the test can fail either way


class EchoWriter:
    name = "echo"

    def rewrite(self, jobs: list[tuple[str, dict[str, Any], str]]) -> list[str]:
        return [sentence for _, _, sentence in jobs]


def test_every_template_sentence_is_supported_by_its_sections_facts(
    many_models: list[dict[str, Any]],
) -> None:
    """Templates state only facts: echoed back, the verifier keeps all of them, and the
    independent extractor finds every number of every card sentence in the facts."""
    for facts in many_models:
        card = build_card(facts, EchoWriter())
        for section in card.sections:
            for s in section["sentences"]:
                assert s["origin"] == "llm", (facts["model"]["name"], s.get("rejected"))
                assert unsupported_numbers(s["text"], facts) == [], s["text"]


def test_the_independent_extractor_catches_what_it_should() -> None:
    facts = {"n": 22688, "ctx": 64}
    assert unsupported_numbers("It has 22,688 parameters (22.7K) and 64 positions.", facts) == []
    assert unsupported_numbers("It has 22,689 parameters.", facts) == ["22,689"]


class GarbageWriter:
    name = "garbage"

    def rewrite(self, jobs: list[tuple[str, dict[str, Any], str]]) -> list[str]:
        return (["", "\x00\x01 ###", "word " * 500, "ok."] * len(jobs))[: len(jobs) - 1]


def test_garbage_writer_leaves_templates(tmp_path: Path, many_models: list[dict[str, Any]]) -> None:
    card = build_card(many_models[0], GarbageWriter())
    assert all(s["origin"] == "template" for sec in card.sections for s in sec["sentences"])
    assert card.prose is not None and sum(v["kept"] for v in card.prose["sections"].values()) == 0


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "echo"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        sentence = body["messages"][0]["content"].rsplit("Sentence: ", 1)[-1]
        if self.mode == "garbage":
            payload = b"<html>not json"
        else:
            payload = json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": sentence}}]}
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("mode", ["echo", "garbage"])
def test_openai_compatible_endpoint_writer(mode: str, many_models: list[dict[str, Any]]) -> None:
    handler = type("H", (_Handler,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        writer = EndpointWriter(f"http://127.0.0.1:{server.server_port}/v1", "test-model")
        card = build_card(many_models[0], writer)
    finally:
        server.shutdown()
    kept = sum(v["kept"] for v in card.prose["sections"].values())  # type: ignore[index]
    if mode == "echo":  # the template itself comes back: every sentence is supported
        assert kept == sum(v["generated"] for v in card.prose["sections"].values()) > 0  # type: ignore[index]
    else:
        assert kept == 0


def test_unreachable_writer_is_a_clear_error(many_models: list[dict[str, Any]]) -> None:
    writer = EndpointWriter("http://127.0.0.1:9/v1", "m", timeout=2)
    with pytest.raises(WriterError, match="--no-llm"):
        build_card(many_models[0], writer)


@pytest.mark.slow
def test_embedded_writer_keeps_no_unsupported_number(many_models: list[dict[str, Any]]) -> None:
    """The real default writer (smollm2-135m in process) across every model of the set."""
    from lmscope.document.writer import EmbeddedWriter

    writer = EmbeddedWriter()
    for facts in many_models:
        card = build_card(facts, writer)
        for text, _section in _llm_sentences(card):
            assert unsupported_numbers(text, facts) == [], text

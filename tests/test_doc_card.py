"""The card: HF front matter that huggingface_hub parses and round-trips, a self-contained
HTML page, JSON-LD, sections that say what is missing, all-or-nothing output, the CLI, the
server helper, the trainer hook, diff and history."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from lmscope.commands import doc
from lmscope.document.card import build_card
from lmscope.document.diff import checkpoints_in, diff_models, history_text
from lmscope.document.output import card_response, write_card, write_card_dir
from lmscope.document.sources import collect_facts
from lmscope.zoo.registry import load
from test_doc_support import eval_report, keras_file, tiny_checkpoint, trained_checkpoint


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = trained_checkpoint(tmp_path_factory.mktemp("doc-card"))
    eval_report(model_dir / "eval-out")
    return model_dir


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """lmscope (test)"""

    doc.register(app)
    return app


def _front_matter(markdown: str) -> dict[str, Any]:
    match = re.match(r"^---\n(.*?)\n---\n", markdown, re.S)
    assert match
    return yaml.safe_load(match.group(1))  # type: ignore[no-any-return]


def test_model_card_round_trips_through_huggingface_hub(trained: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    card = build_card(collect_facts(str(trained), probe=False))
    out = write_card_dir(card, tmp_path / "card")
    loaded = ModelCard.load(out / "README.md")
    ours = _front_matter(card.markdown)
    assert loaded.data.to_dict() == ours
    assert ours["pipeline_tag"] == "text-generation" and ours["datasets"] == ["corpus.txt"]
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in loaded.data.eval_results}
    assert results == {("wikitext-mini", "bits_per_byte"): 1.84, ("sentiment", "accuracy"): 0.82}
    again = ModelCard(str(loaded))
    assert again.data.to_dict() == ours and again.text == loaded.text
    for title in ("Model Details", "Uses", "Bias, Risks, and Limitations", "Training Details",
                  "Evaluation", "Model Examination", "Environmental Impact",
                  "Technical Specifications"):  # fmt: skip
        assert f"\n## {title}\n" in card.markdown
    assert "More information needed" not in card.markdown


def test_error_analysis_only_when_the_facts_support_it(trained: Path, tmp_path: Path) -> None:
    card = build_card(collect_facts(str(trained), probe=False))
    evaluation = next(s for s in card.sections if s["id"] == "evaluation")
    text = " ".join(s["text"] for s in evaluation["sentences"])
    assert "imbalanced: pos has 90 items and neg has 10" in text and "class weights" in text
    assert "validation loss" in text
    balanced = tmp_path / "balanced"
    balanced.mkdir()
    report = eval_report(balanced, imbalanced=False)
    card = build_card(collect_facts(str(trained), probe=False, eval_path=report))
    evaluation = next(s for s in card.sections if s["id"] == "evaluation")
    assert "imbalanced" not in " ".join(s["text"] for s in evaluation["sentences"])


def test_html_is_self_contained(trained: Path) -> None:
    card = build_card(collect_facts(str(trained), probe=False))
    page = card.html
    assert "<svg" in page and page.count("<svg") >= 3  # architecture, curves, lr, metrics
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "Learning curves" in page and "<table>" in page


def test_jsonld_is_a_creative_work_with_a_model_type(trained: Path) -> None:
    card = build_card(collect_facts(str(trained), probe=False))
    ld = card.jsonld
    assert ld["@context"] == "https://schema.org" and ld["@type"] == "CreativeWork"
    assert ld["additionalType"].endswith("#MLModel")
    props = {p["name"]: p["value"] for p in ld["additionalProperty"]}
    assert props["parameters"] == card.facts["overview"]["parameters"]["total"]
    assert props["sentiment/accuracy"] == 0.82
    assert ld["identifier"] == "sha256:" + card.facts["overview"]["checksum"]["value"]


def test_sections_without_facts_name_the_command(tmp_path: Path) -> None:
    card = build_card(collect_facts(str(tiny_checkpoint(tmp_path, "tiny-gpt2")), probe=False))
    missing = {s["id"]: " ".join(s["missing"]) for s in card.sections}
    assert "lmscope train" in missing["training_details"]
    assert "lmscope eval" in missing["evaluation"]
    assert "lmscope train" in missing["environmental_impact"]
    assert "> Missing: no training record found" in card.markdown


def test_foreign_models_get_cards(tmp_path: Path) -> None:
    keras_file(tmp_path / "cnn.keras")
    card = build_card(collect_facts(str(tmp_path / "cnn.keras")))
    assert "Conv2D" in card.html and card.facts["model"]["kind"] == "keras"
    assert _front_matter(card.markdown)["library_name"] == "keras"


def test_output_directory_is_never_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = build_card(collect_facts(str(tiny_checkpoint(tmp_path, "tiny-opt")), probe=False))
    out = write_card_dir(card, tmp_path / "card")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"README.md", "card.html", "facts.json", "card.jsonld", "sentences.json"}

    def fail(*args: Any, **kwargs: Any) -> str:
        raise OSError("disk full")

    monkeypatch.setattr("lmscope.document.output.dumps", fail)
    with pytest.raises(OSError):
        write_card_dir(card, tmp_path / "card")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".card")] == []


def test_cli_card_facts_and_errors(trained: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    app = _cli()
    result = runner.invoke(
        app, ["doc", str(trained), "--no-llm", "--no-probe", "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "README.md").is_file()
    result = runner.invoke(
        app, ["doc", "facts", str(trained), "--no-probe", "--out", str(tmp_path / "f.json")]
    )
    assert (
        result.exit_code == 0
        and json.loads((tmp_path / "f.json").read_text())["schema"] == "lmscope.facts"
    )
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01")
    result = runner.invoke(
        app, ["doc", str(tmp_path / "junk.bin"), "--no-llm", "--out", str(tmp_path / "j")]
    )
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "j").exists()
    result = runner.invoke(app, ["doc", str(trained), "--no-probe", "--writer", "http://127.0.0.1:9/v1",
                                 "--writer-model", "m", "--out", str(tmp_path / "w")])  # fmt: skip
    assert result.exit_code == 2 and "--no-llm" in result.output
    assert not (tmp_path / "w").exists()


def test_server_helper_answers_by_accept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lmscope.document.facts as facts_module

    calls = []
    original = facts_module.loaded_facts

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(facts_module, "loaded_facts", counted)
    loaded = load(tiny_checkpoint(tmp_path, "tiny-llama"))
    text, media = card_response(loaded, None)
    assert media.startswith("text/markdown") and text.startswith("---\n")
    page, media = card_response(loaded, "text/html,application/xhtml+xml")
    assert media.startswith("text/html") and page.startswith("<!doctype html>")
    facts, media = card_response(loaded, "application/json")
    assert media == "application/json" and json.loads(facts)["schema"] == "lmscope.facts"
    ld, media = card_response(loaded, "application/ld+json")
    assert media == "application/ld+json" and json.loads(ld)["@type"] == "CreativeWork"
    assert len(calls) == 1  # facts computed once per served model


def test_trainer_hook_writes_a_card_beside_the_model(trained: Path) -> None:
    out = write_card(trained)
    assert out == trained / "card" and (out / "README.md").is_file()
    facts = json.loads((out / "facts.json").read_text())
    assert facts["training"]["outcome"]["steps"] == 20


def test_diff_and_history(trained: Path, tmp_path: Path) -> None:
    run = trained.parent
    steps = checkpoints_in(run / "checkpoints")
    assert [p.name for p in steps] == ["step-00000010", "step-00000020"]
    other = tiny_checkpoint(tmp_path, "tiny-llama")
    result = diff_models(str(trained), str(other), probe=False)
    changes = {c["key"]: c for c in result["changes"]["architecture"]}
    assert (
        changes["normalisation.kind"]["old"] == "layernorm"
        and changes["normalisation.kind"]["new"] == "rmsnorm"
    )
    assert "architecture:" in result["text"]
    total = {c["key"]: c for c in result["changes"]["parameters"]}["total"]
    assert total["delta"] == total["new"] - total["old"]
    text = history_text(run / "checkpoints")
    assert "2 checkpoint(s)" in text and text.index("step-00000010") < text.index("step-00000020")

"""`lmscope export --format gguf`: a float32 GGUF file that transformers' GGUF loader (an
independent reader) and lmscope's own reader load back with our logits and our token ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny_tokenizer
from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo.export_gguf import ExportError, export_gguf
from lmscope.zoo.gguf import from_gguf

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nTo be, or not to be?<|im_end|>",
    "  odd   spacing\n\nand unseen wörds: 12345 ~!",
]


def random_model(preset: str, vocab_size: int, **overrides: object) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(preset, vocab_size=vocab_size, **overrides)  # type: ignore[arg-type]
    model = Transformer(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a misplaced norm weight shows
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return getattr(out, "logits", out)


def transformers_reads(path: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return hf.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def cli():  # type: ignore[no-untyped-def]
    import typer

    from lmscope.commands.export import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands, so `export` stays a subcommand
    return app


def test_cli_export_reads_back_in_transformers_and_lmscope(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from lmscope.zoo.registry import load

    out = tmp_path / "tiny.gguf"
    args = ["export", str(tiny_checkpoint), "--format", "gguf", "--out", str(out)]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "GGUF" in result.output and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]  # no temporary left behind
    loaded = load(str(tiny_checkpoint))
    tok = loaded.tokenizer
    hf, hf_tok = transformers_reads(out)
    ours, our_tok = from_gguf(out)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert hf_tok(text)["input_ids"] == ids, text  # type: ignore[operator]
        assert our_tok(text)["input_ids"] == ids, text
        tokens = torch.tensor([ids])
        want = logits(loaded.model, tokens)
        assert (logits(hf, tokens) - want).abs().max().item() < 1e-5
        assert torch.equal(logits(ours, tokens), want)
    assert hf_tok.chat_template == tok.chat_template  # type: ignore[attr-defined]
    for attr in ("bos_token", "eos_token", "pad_token"):
        assert getattr(hf_tok, attr) == getattr(tok, attr)
    again = CliRunner().invoke(cli(), args)
    assert again.exit_code == 2 and "--overwrite" in again.output


@pytest.mark.parametrize(
    ("preset", "extra_rows"),
    [("tiny-llama", 0), ("tiny-mistral", 5)],  # GQA tied; GQA untied with padded vocabulary
)
def test_weights_land_where_transformers_expects(
    preset: str, extra_rows: int, tmp_path: Path
) -> None:
    tok = build_tiny_tokenizer()
    model = random_model(preset, len(tok) + extra_rows, eos_token_id=tok.eos_token_id)
    path = export_gguf(model, tok, tmp_path / "m.gguf")
    hf, hf_tok = transformers_reads(path)
    ours, _ = from_gguf(path)
    assert ours.cfg.tie_embeddings == model.cfg.tie_embeddings
    tokens = torch.randint(
        0, model.cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1)
    )
    want = logits(model, tokens)
    assert (logits(hf, tokens) - want).abs().max().item() < 1e-5
    assert torch.equal(logits(ours, tokens), want)
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == tok(text)["input_ids"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("preset", "named"),
    [("tiny-gpt2", "positional='learned'"), ("tiny-qwen2-mqa", "qkv_bias"), ("tiny-neox", "")],
)
def test_other_families_are_refused_with_one_clear_error(
    preset: str, named: str, tmp_path: Path
) -> None:
    tok = build_tiny_tokenizer()
    model = random_model(preset, len(tok))
    with pytest.raises(ExportError, match="--format hf") as err:
        export_gguf(model, tok, tmp_path / "m.gguf")
    assert named in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_refusal_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmscope.zoo.checkpoint import save_checkpoint

    tok = build_tiny_tokenizer()
    save_checkpoint(random_model("tiny-gpt2", len(tok)), tmp_path / "gpt2", tokenizer=tok)
    out = tmp_path / "gpt2.gguf"
    result = CliRunner().invoke(
        cli(), ["export", str(tmp_path / "gpt2"), "-f", "gguf", "-o", str(out)]
    )
    assert result.exit_code == 2 and "--format hf" in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lmscope.zoo.export_gguf as module

    def half_write(path: Path, *args: object) -> None:
        path.write_bytes(b"GGUF partial")
        raise OSError("disk full")

    monkeypatch.setattr(module, "_write", half_write)
    tok = build_tiny_tokenizer()
    out = tmp_path / "m.gguf"
    with pytest.raises(OSError, match="disk full"):
        export_gguf(random_model("tiny-llama", len(tok)), tok, out)
    assert list(tmp_path.iterdir()) == []


def test_model_without_tokenizer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="tokenizer"):
        export_gguf(random_model("tiny-llama", 300), None, tmp_path / "m.gguf")


@pytest.mark.slow
def test_smollm2_gguf_reads_back_in_transformers(tmp_path: Path) -> None:
    from lmscope.zoo.registry import load

    loaded = load("smollm2-135m")
    path = export_gguf(loaded.model, loaded.tokenizer, tmp_path / "smollm2.gguf")
    hf, hf_tok = transformers_reads(path)
    text = "The capital of France is Paris, and the capital of Italy is"
    ids = loaded.tokenizer(text)["input_ids"]
    assert hf_tok(text)["input_ids"] == ids  # type: ignore[operator]
    tokens = torch.tensor([ids])
    assert (logits(hf, tokens) - logits(loaded.model, tokens)).abs().max().item() < 1e-5

"""Export to a Hugging Face directory: transformers loads it (with nothing of lmscope's) and its
logits equal ours within 1e-5, for every family; what a family cannot express is refused by
name, and nothing is left half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo.export_hf import ExportError, export_hf, hf_config_for

FAMILY_PRESETS = {
    "tiny-gpt2": "gpt2",
    "tiny-opt": "opt",
    "tiny-llama": "llama",
    "tiny-mistral": "mistral",
    "tiny-qwen2-mqa": "qwen2",
    "tiny-neox": "gpt_neox",
}


def random_model(preset: str, seed: int = 0, **overrides: object) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_name(preset, **overrides)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(tokens).logits


@pytest.mark.parametrize("preset", sorted(FAMILY_PRESETS))
def test_transformers_loads_the_export_with_our_logits(preset: str, tmp_path: Path) -> None:
    model = random_model(preset)
    out = export_hf(model, None, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == FAMILY_PRESETS[preset]
    assert (out / "generation_config.json").is_file() and (out / "model.safetensors").is_file()
    tokens = torch.randint(
        0, model.cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours = model(tokens)
    theirs = hf_logits(out, tokens)
    assert (ours - theirs).abs().max().item() < 1e-5
    from lmscope.zoo.hf import from_hf

    with torch.no_grad():  # and lmscope reads its own export back
        assert (from_hf(out)(tokens) - ours).abs().max().item() < 1e-5


def test_a_model_without_a_family_is_matched_by_shape(tmp_path: Path) -> None:
    """A model built in lmscope (architecture 'lmscope') exports as the family that computes it."""
    model = random_model("tiny-llama", architecture="lmscope")
    assert hf_config_for(model.cfg).model_type == "llama"
    tokens = torch.arange(12)[None] % model.cfg.vocab_size
    out = export_hf(model, None, tmp_path / "hf")
    with torch.no_grad():
        assert (model(tokens) - hf_logits(out, tokens)).abs().max().item() < 1e-5


def test_features_no_family_expresses_are_named_and_nothing_is_written(tmp_path: Path) -> None:
    model = random_model("tiny-sinusoidal")
    with pytest.raises(ExportError, match="positional='sinusoidal'"):
        export_hf(model, None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir()]  # no temporary directory left behind
    existing = tmp_path / "taken"
    existing.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_hf(random_model("tiny-llama"), None, existing)


def cli():  # type: ignore[no-untyped-def]
    import typer

    from lmscope.commands.export import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep `export` a subcommand
    return app


def test_cli_exports_a_checkpoint_with_its_tokenizer_and_card(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from lmscope.zoo.registry import load

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    out = tmp_path / "hf"
    result = CliRunner().invoke(
        cli(), ["export", str(checkpoint), "--format", "hf", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "llama" in result.output and (out / "README.md").read_text().startswith("---")
    loaded = load(str(checkpoint))
    text = "To be, or not to be"
    assert AutoTokenizer.from_pretrained(out).encode(text) == loaded.tokenizer.encode(text)
    tokens = torch.tensor([loaded.tokenizer.encode(text)])
    with torch.no_grad():
        assert (loaded.model(tokens) - hf_logits(out, tokens)).abs().max().item() < 1e-5
    again = CliRunner().invoke(cli(), ["export", str(checkpoint), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    gguf = CliRunner().invoke(
        cli(), ["export", str(checkpoint), "-f", "onnx", "--out", str(tmp_path / "g")]
    )
    assert gguf.exit_code == 2 and "supported: hf" in gguf.output


@pytest.mark.slow
def test_smollm2_exports_with_equal_logits(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from lmscope.zoo.registry import load

    loaded = load("smollm2-135m")
    out = export_hf(loaded.model, loaded.tokenizer, tmp_path / "hf")
    text = "The capital of France is Paris, and the capital of Italy is"
    ids = AutoTokenizer.from_pretrained(out).encode(text)
    assert ids == loaded.tokenizer.encode(text)
    tokens = torch.tensor([ids])
    with torch.no_grad():
        ours = loaded.model(tokens)
    assert (ours - hf_logits(out, tokens)).abs().max().item() < 1e-5

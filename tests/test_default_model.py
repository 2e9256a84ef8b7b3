"""The embedded default model: conversion, caching, and logits against transformers' GGUF load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope.zoo.default import DEFAULT_MODEL, EMBEDDED_MODELS
from lmscope.zoo.registry import UnknownModelError, load, model_names


def test_matches_transformers_gguf_load(default_model) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    source = EMBEDDED_MODELS[DEFAULT_MODEL].source_path()
    reference = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    ).eval()
    tokenizer = default_model.tokenizer
    text = "The capital of France is Paris. The capital of Germany is"
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = default_model.model(ids)
        theirs = reference(ids).logits
        traced = default_model.model.run_with_trace(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert (traced - ours).abs().max().item() < 1e-5
    assert tokenizer.decode(ours[0, -1].argmax()).strip() == "Berlin"


def test_chat_template_and_special_tokens(default_model) -> None:  # type: ignore[no-untyped-def]
    tok = default_model.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"
    cfg = default_model.model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.d_model) == (30, 9, 3, 576)
    assert cfg.tie_embeddings and cfg.positional == "rope" and cfg.rope_theta == 100000.0


def test_cached_load_is_stamped(default_model) -> None:  # type: ignore[no-untyped-def]
    """The second load reads the converted cache without converting again (bench/explain_speed.py
    prints how long it takes)."""
    entry = EMBEDDED_MODELS[DEFAULT_MODEL]
    assert entry.is_cached()
    written = {p.name: p.stat().st_mtime_ns for p in entry.cache_dir().iterdir()}
    again = load(DEFAULT_MODEL)
    assert again.model.cfg == default_model.model.cfg
    assert {p.name: p.stat().st_mtime_ns for p in entry.cache_dir().iterdir()} == written
    stamp = json.loads((entry.cache_dir() / "lmscope-source.json").read_text())
    assert stamp["source"].endswith(".gguf")


def test_damaged_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    entry = EMBEDDED_MODELS[DEFAULT_MODEL]
    good = entry.cache_dir()
    load(DEFAULT_MODEL)  # make sure a good cache exists to copy
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    copy = entry.cache_dir()
    shutil.copytree(good, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    reloaded = load(DEFAULT_MODEL)
    assert reloaded.model.cfg.n_layers == 30
    assert weights.stat().st_size > 100_000_000
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")], "temp dirs left"


def test_unknown_model_lists_available_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        load("gpt3")
    assert "unknown model 'gpt3'" in str(info.value)
    for name in model_names():
        assert name in str(info.value)
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UnknownModelError, match="not a model"):
        load(str(tmp_path / "notes.txt"))
    with pytest.raises(UnknownModelError, match="neither an lmscope checkpoint"):
        load(str(tmp_path))


def test_models_command_lists_embedded_models_and_presets() -> None:
    import typer
    from typer.testing import CliRunner

    from lmscope.commands import models
    from lmscope.model.presets import PRESETS

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command is called by name as under `lmscope`
    models.register(app)
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.output
    for name in PRESETS:
        assert name in result.output

"""Facts of runnable models: exact parameter counts (tied once) against Hugging Face, the layer
table against independent sums, the schema, the training/data/eval records, the probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope.document.errors import DocError
from lmscope.document.facts import attention_core_macs, loaded_facts
from lmscope.document.probe import induction_scores
from lmscope.document.schema import FACTS_SCHEMA_VERSION, check_facts, schema_errors
from lmscope.document.sources import collect_facts
from lmscope.zoo.registry import load
from test_doc_support import eval_report, tiny_checkpoint, trained_checkpoint


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("doc-train"))


def _hf_models() -> list[tuple[str, object]]:
    import transformers as tf

    small = dict(vocab_size=101)
    return [
        ("gpt2", tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **small))),
        ("opt", tf.OPTForCausalLM(tf.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               ffn_dim=48, max_position_embeddings=64, word_embed_proj_dim=32, **small))),
        ("llama-tied", tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2, intermediate_size=48,
                                                          tie_word_embeddings=True, **small))),
        ("llama-untied", tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                            intermediate_size=48, tie_word_embeddings=False, **small))),
        ("neox", tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                        intermediate_size=48, rotary_pct=0.25, **small))),
    ]  # fmt: skip


def test_parameter_counts_equal_hf_num_parameters(tmp_path: Path) -> None:
    for name, hf in _hf_models():
        directory = tmp_path / name
        hf.save_pretrained(directory)  # type: ignore[attr-defined]
        expected = hf.num_parameters()  # type: ignore[attr-defined]
        from_weights = collect_facts(str(directory), probe=False)
        assert from_weights["overview"]["parameters"]["total"] == expected, name
        params = from_weights["overview"]["parameters"]
        table = sum(r["parameters"] for r in from_weights["layers"]["rows"])
        assert table == params.get("canonical_total", expected), name  # the converted model's
        if name == "opt":  # HF keeps 2 reserved position rows the canonical model drops
            assert params["canonical_total"] == expected - 2 * 32 and "OPT" in params["note"]
        (tmp_path / f"{name}-config").mkdir()
        (tmp_path / f"{name}-config" / "config.json").write_text(
            (directory / "config.json").read_text()
        )
        from_config = collect_facts(str(tmp_path / f"{name}-config"), probe=False)
        assert from_config["model"]["kind"] == "hf-config"
        assert from_config["overview"]["parameters"]["total"] == expected, name


def test_layer_table_adds_up(tmp_path: Path) -> None:
    loaded = load(tiny_checkpoint(tmp_path, "tiny-llama"))
    facts = loaded_facts(loaded, positions=16, probe=False)
    rows = {r["path"]: r for r in facts["layers"]["rows"]}
    cfg = loaded.model.cfg
    # every parameter tensor is in exactly one row; the tied unembedding points at the embedding
    assert sum(r["parameters"] for r in rows.values()) == sum(
        p.numel() for p in loaded.model.parameters()
    )
    assert rows["unembed"]["parameters"] == 0 and rows["unembed"]["tied_to"] == "embed.weight"
    # a Linear costs in*out multiply-adds per token; attention scores + mixing H*dh*(T+1) (causal)
    for path, module in loaded.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert rows[path]["macs_per_position"] == module.in_features * module.out_features
            assert rows[path]["output_shape"] == [1, 16, module.out_features]
    assert rows["blocks.0.attn"]["macs_per_position"] == cfg.n_heads * cfg.head_dim * 17
    assert (
        attention_core_macs(cfg, 16)
        == sum((i + 1) * cfg.head_dim * 2 * cfg.n_heads for i in range(16)) // 16
    )
    assert rows["blocks.1.mlp.fc_in"]["input_shape"] == [1, 16, cfg.d_model]


def test_frozen_and_trainable_rows(tmp_path: Path) -> None:
    loaded = load(tiny_checkpoint(tmp_path, "tiny-gpt2"))
    for p in loaded.model.blocks[0].parameters():
        p.requires_grad_(False)
    facts = loaded_facts(loaded, positions=8, probe=False)
    rows = {r["path"]: r for r in facts["layers"]["rows"]}
    assert rows["blocks.0.attn.qkv"]["trainable"] is False
    assert rows["blocks.1.attn.qkv"]["trainable"] is True
    frozen = sum(p.numel() for p in loaded.model.blocks[0].parameters())
    params = facts["overview"]["parameters"]
    assert params["total"] - params["trainable"] == frozen


def test_lora_adapters_show_as_such(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from lmscope.document.layers import layer_table

    model = load(tiny_checkpoint(tmp_path, "tiny-gpt2")).model
    wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["attn.qkv"]))
    tokens = torch.zeros(1, 8, dtype=torch.long)
    rows = layer_table(wrapped, lambda: model.run_with_trace(tokens, names=()), 8)
    adapters = [r for r in rows if r.get("adapter") == "lora"]
    assert len(adapters) == 2 * model.cfg.n_layers  # lora_A and lora_B of every qkv
    assert all(r["trainable"] is True for r in adapters)
    d = model.cfg.d_model
    assert sum(r["parameters"] for r in adapters) == model.cfg.n_layers * (4 * d + 3 * d * 4)
    base = [r for r in rows if r["path"].endswith("attn.qkv.base_layer")]
    assert base and all(r["trainable"] is False for r in base)
    assert not any(r["type"] in ("HookPoint", "ParameterDict", "ModuleDict") for r in rows)


def test_schema_accepts_facts_and_rejects_broken_ones(tmp_path: Path) -> None:
    facts = collect_facts(str(tiny_checkpoint(tmp_path, "tiny-neox")), probe=False)
    assert facts["schema_version"] == FACTS_SCHEMA_VERSION
    assert check_facts(json.loads(json.dumps(facts))) is not None
    broken = json.loads(json.dumps(facts))
    del broken["overview"]["parameters"]
    broken["layers"]["rows"][0]["parameters"] = "many"
    errors = schema_errors(broken)
    assert any("parameters" in e for e in errors) and len(errors) >= 2
    with pytest.raises(DocError, match="not an lmscope facts document"):
        check_facts(broken)


def test_architecture_choices_follow_the_config(tmp_path: Path) -> None:
    neox = collect_facts(str(tiny_checkpoint(tmp_path, "tiny-neox")), probe=False)["architecture"]
    assert neox["parallel_blocks"] is True and neox["tied_embeddings"] is False
    assert neox["positional"]["kind"] == "rope" and neox["positional"]["rotary_fraction"] == 0.25
    qwen = collect_facts(str(tiny_checkpoint(tmp_path, "tiny-qwen2-mqa")), probe=False)[
        "architecture"
    ]
    assert qwen["attention"]["kind"] == "MQA" and qwen["attention"]["group_size"] == 4
    assert qwen["biases"] == {"qkv": True, "attention_out": False, "mlp": False, "unembed": False}
    scaled = collect_facts(str(tiny_checkpoint(tmp_path, "tiny-rope-llama3")), probe=False)
    assert scaled["architecture"]["positional"]["scaling"]["type"] == "llama3"


def test_trained_checkpoint_records(trained: Path) -> None:
    eval_report(trained / "eval-out")
    facts = collect_facts(str(trained), probe=False)
    record = json.loads((trained / "metadata.json").read_text())["training"]
    hp = facts["training"]["hyperparameters"]
    assert hp["learning_rate"] == 3e-3 and hp["weight_decay"] == 0.05 and hp["warmup_steps"] == 2
    assert hp["effective_batch_rows"] == 4 and hp["context"] == 32
    outcome = facts["training"]["outcome"]
    assert outcome["steps"] == 20 and outcome["tokens_seen"] == record["tokens_seen"]
    assert [p["step"] for p in facts["training"]["curves"]["eval"]] == [10, 20]
    manifest = record["data_manifest"]
    assert facts["data"]["sources"][0]["sha256"] == manifest["sources"][0]["sha256"]
    assert facts["data"]["splits"]["train"]["tokens"] == manifest["splits"]["train"]["tokens"]
    assert facts["evaluation"]["tasks"][1]["per_class"]["neg"]["support"] == 10
    assert "training" not in facts["missing"] and "evaluation" not in facts["missing"]
    hashed = {Path(f["path"]).name for f in facts["provenance"]["files"]}
    assert {"model.safetensors", "config.json", "metadata.json", "report.json"} <= hashed


def test_checkpoint_without_record_says_what_is_missing(tmp_path: Path) -> None:
    facts = collect_facts(str(tiny_checkpoint(tmp_path, "tiny-opt")), probe=False)
    assert facts["training"] is None and "lmscope train" in facts["missing"]["training"]
    assert "lmscope eval" in facts["missing"]["evaluation"]


def test_induction_score_of_uniform_attention_is_the_harmonic_mean(tmp_path: Path) -> None:
    """With zero query/key weights every causal row is uniform: from query q the score is
    1 / (q + 1); averaged over the second copy's queries."""
    loaded = load(tiny_checkpoint(tmp_path, "tiny-gpt2"))
    with torch.no_grad():
        for block in loaded.model.blocks:
            d = block.attn.n_heads * block.attn.d_head
            block.attn.qkv.weight[: 2 * d].zero_()
            block.attn.qkv.bias[: 2 * d].zero_()
    n = 12
    scores = induction_scores(loaded.model, n)
    expected = sum(1 / (q + 1) for q in range(n, 2 * n)) / n
    torch.testing.assert_close(scores, torch.full_like(scores, expected))


def test_probe_highlights(tmp_path: Path) -> None:
    loaded = load(tiny_checkpoint(tmp_path, "tiny-mistral"))
    it = loaded_facts(loaded, positions=8)["interpretability"]
    cfg = loaded.model.cfg
    assert (
        len(it["head_importance"]) == cfg.n_layers and len(it["head_importance"][0]) == cfg.n_heads
    )
    flat = sorted((v for row in it["head_importance"] for v in row), reverse=True)
    assert [h["share"] for h in it["top_heads"]] == flat[: len(it["top_heads"])]
    assert len(it["logit_lens_settles"]) == 3


@pytest.mark.slow
def test_smollm2_facts(default_model: object) -> None:
    facts = loaded_facts(default_model, probe=False)
    assert facts["overview"]["parameters"]["total"] == 134_515_008  # HF num_parameters()
    assert facts["architecture"]["attention"]["kind"] == "GQA"

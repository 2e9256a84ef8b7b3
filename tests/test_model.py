"""The canonical transformer: reference and trace paths, every architectural option, checked independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmscope.model.config import ConfigError, ModelConfig
from lmscope.model.positional import apply_rope, rope_tables, sinusoidal_table
from lmscope.model.presets import PRESETS, TINY_FAMILIES, family_fields, preset_fields
from lmscope.model.transformer import Transformer

# Every family and variant, from the one table of tiny presets (sizes are set by make_model).
FAMILIES = {name: family_fields(name) for name in TINY_FAMILIES}


def make_model(seed: int = 0, **overrides: object) -> Transformer:
    torch.manual_seed(seed)
    base: dict[str, object] = dict(vocab_size=101, d_model=48, n_layers=3, n_heads=4, n_ctx=64)
    base.update(overrides)
    model = Transformer(ModelConfig(**base)).eval()  # type: ignore[arg-type]
    with torch.no_grad():  # make norms and biases non-trivial so wiring mistakes show
        for name, param in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.3)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trace_path_reproduces_the_reference_path_bit_for_bit(family: str) -> None:
    model = make_model(**FAMILIES[family])
    tokens = torch.randint(0, 101, (2, 23))
    mask = torch.ones(2, 23, dtype=torch.long)
    mask[1, :5] = 0  # left padding takes the explicit-mask branch on both paths
    with torch.no_grad():
        for attention_mask in (None, mask):
            reference = model(tokens, attention_mask=attention_mask)
            trace = model.run_with_trace(tokens, attention_mask=attention_mask)
            assert torch.equal(trace.logits, reference)  # the docs promise bit-identical
            # the recorded final norm output really is what the unembedding read
            assert torch.equal(model.unembed(trace["ln_final.hook_normalized"]), reference)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_recorded_pieces_rebuild_the_residual_stream(family: str) -> None:
    model = make_model(**FAMILIES[family])
    cfg = model.cfg
    tokens = torch.randint(0, 101, (1, 17))
    with torch.no_grad():
        tr = model.run_with_trace(tokens)
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        pre, mid, post = (
            tr[b + "hook_resid_pre"],
            tr[b + "hook_resid_mid"],
            tr[b + "hook_resid_post"],
        )
        heads = tr[b + "attn.hook_result"].sum(2)
        bias = model.blocks[i].attn.b_O
        attn_out = heads + (bias if bias is not None else 0)
        assert torch.allclose(attn_out, tr[b + "hook_attn_out"], atol=1e-5)
        assert torch.allclose(pre + tr[b + "hook_attn_out"], mid, atol=1e-5)
        assert torch.allclose(mid + tr[b + "hook_mlp_out"], post, atol=1e-5)
        mlp = model.blocks[i].mlp
        neurons = tr[b + "mlp.hook_post"] @ mlp.W_out + (mlp.b_out if mlp.b_out is not None else 0)
        assert torch.allclose(neurons, tr[b + "hook_mlp_out"], atol=1e-5)
        # pattern @ v reproduces z (GQA: head h reads kv head h // group)
        pattern, v = tr[b + "attn.hook_pattern"], tr[b + "attn.hook_v"]
        group = cfg.n_heads // cfg.kv_heads
        v_heads = v.repeat_interleave(group, dim=2).transpose(1, 2)  # [b, H, S, d]
        z = (pattern @ v_heads).transpose(1, 2)
        assert torch.allclose(z, tr[b + "attn.hook_z"], atol=1e-5)
        assert torch.allclose(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), atol=1e-5)
        assert torch.all(pattern.triu(1) == 0), "attention must be causal"
        if i + 1 < cfg.n_layers:
            assert torch.equal(post, tr[f"blocks.{i + 1}.hook_resid_pre"])
    assert tr["blocks.0.attn.hook_pattern"].shape == (1, cfg.n_heads, 17, 17)
    assert tr["blocks.0.attn.hook_result"].shape == (1, 17, cfg.n_heads, cfg.d_model)


def test_trace_name_filter_keeps_only_requested() -> None:
    model = make_model()
    tokens = torch.randint(0, 101, (1, 9))
    wanted = {"blocks.1.attn.hook_pattern", "blocks.2.hook_resid_post"}
    tr = model.run_with_trace(tokens, names=wanted)
    assert set(tr.names()) == wanted
    with pytest.raises(KeyError, match="not recorded"):
        tr["blocks.0.hook_resid_pre"]


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama", "tiny-neox"])
def test_kv_cache_decoding_matches_full_forward(family: str) -> None:
    model = make_model(**FAMILIES[family])
    tokens = torch.randint(0, 101, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2, 32)
        parts = [model(tokens[:, :11], cache=cache)]
        parts += [model(tokens[:, t : t + 1], cache=cache) for t in range(11, 15)]
        parts.append(model(tokens[:, 15:], cache=cache))
    assert cache.length == 20
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-5


def test_left_padding_matches_unpadded_rows() -> None:
    model = make_model(**FAMILIES["tiny-llama"])
    short, long = torch.randint(0, 101, (5,)), torch.randint(0, 101, (9,))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, 4:], batch[1] = short, long
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(batch, attention_mask=mask, positions=positions)
        alone_short, alone_long = model(short[None]), model(long[None])
        traced = model.run_with_trace(batch, attention_mask=mask)
    assert (padded[0, 4:] - alone_short[0]).abs().max() < 1e-5
    assert (padded[1] - alone_long[0]).abs().max() < 1e-5
    assert not torch.isnan(padded).any()
    assert traced.logits.shape == padded.shape


def test_sinusoidal_table_is_the_interleaved_formula() -> None:
    table = sinusoidal_table(7, 10)
    for pos in range(7):
        for i in range(5):
            angle = pos / 10000 ** (2 * i / 10)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rope_scores_depend_only_on_relative_position() -> None:
    cos, sin = rope_tables(64, 16, 10000.0, None)
    q, k = torch.randn(16), torch.randn(16)

    def rotated(x: torch.Tensor, pos: int) -> torch.Tensor:
        return apply_rope(
            x.view(1, 1, 1, 16), cos[pos].view(1, 1, 1, 16), sin[pos].view(1, 1, 1, 16)
        )

    s1 = (rotated(q, 10) * rotated(k, 3)).sum()
    s2 = (rotated(q, 40) * rotated(k, 33)).sum()
    assert s1.item() == pytest.approx(s2.item(), abs=1e-4)
    assert rotated(q, 17).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_partial_rotary_leaves_the_tail_untouched() -> None:
    cos, sin = rope_tables(8, 4, 10000.0, None)
    x = torch.randn(1, 2, 8, 16)
    out = apply_rope(x, cos[None, None], sin[None, None])
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert not torch.allclose(out[..., 1:, :4], x[..., 1:, :4])


def _repeat_kv_rows(t: torch.Tensor, kv: int, d: int, group: int) -> torch.Tensor:
    return t.view(kv, d, *t.shape[1:]).repeat_interleave(group, 0).reshape(-1, *t.shape[1:])


def test_gqa_equals_mha_with_repeated_kv_weights() -> None:
    gqa = make_model(n_kv_heads=2, positional="rope")
    cfg = ModelConfig(**{**gqa.cfg.to_dict(), "n_kv_heads": 4})
    mha = Transformer(cfg).eval()
    state = dict(gqa.state_dict())
    d, h, kv = cfg.head_dim, cfg.n_heads, 2
    for i in range(cfg.n_layers):
        for kind in ("weight", "bias"):
            key = f"blocks.{i}.attn.qkv.{kind}"
            packed = state[key]
            q, k, v = packed.split([h * d, kv * d, kv * d])
            state[key] = torch.cat(
                [q, _repeat_kv_rows(k, kv, d, h // kv), _repeat_kv_rows(v, kv, d, h // kv)]
            )
    mha.load_state_dict(state)
    tokens = torch.randint(0, 101, (2, 13))
    with torch.no_grad():
        assert (gqa(tokens) - mha(tokens)).abs().max() < 1e-5


def test_reference_forward_written_independently() -> None:
    """A loop-over-heads LLaMA-style forward written from the formulas, not from our modules."""
    model = make_model(**FAMILIES["tiny-llama"])
    cfg = model.cfg
    tokens = torch.randint(0, 101, (1, 11))
    T, H, K, d = 11, cfg.n_heads, cfg.kv_heads, cfg.head_dim

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps)

    def rope(x: torch.Tensor) -> torch.Tensor:  # x [T, d], rotate-half pairs (i, i + d/2)
        out = x.clone()
        for pos in range(T):
            for i in range(d // 2):
                theta = pos * cfg.rope_theta ** (-2 * i / d)
                a, b = x[pos, i], x[pos, i + d // 2]
                out[pos, i] = a * math.cos(theta) - b * math.sin(theta)
                out[pos, i + d // 2] = b * math.cos(theta) + a * math.sin(theta)
        return out

    with torch.no_grad():
        x = model.embed.weight[tokens[0]]
        for blk in model.blocks:
            h = rms(x, blk.ln1.weight)
            W = blk.attn.qkv.weight
            heads = []
            for head in range(H):
                kvh = head // (H // K)
                q = rope(h @ W[head * d : (head + 1) * d].T)
                k = rope(h @ W[(H + kvh) * d : (H + kvh + 1) * d].T)
                v = h @ W[(H + K + kvh) * d : (H + K + kvh + 1) * d].T
                scores = q @ k.T / math.sqrt(d)
                scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
                heads.append(torch.softmax(scores, -1) @ v)
            x = x + torch.cat(heads, -1) @ blk.attn.out.weight.T
            h = rms(x, blk.ln2.weight)
            gate_up = h @ blk.mlp.fc_in.weight.T
            gate, up = gate_up[:, : cfg.mlp_dim], gate_up[:, cfg.mlp_dim :]
            x = x + (F.silu(gate) * up) @ blk.mlp.fc_out.weight.T
        logits = rms(x, model.ln_final.weight) @ model.unembed.weight.T
        assert (logits - model(tokens)[0]).abs().max() < 1e-4


def test_parallel_block_reads_the_same_residual_for_both_branches() -> None:
    model = make_model(**FAMILIES["tiny-neox"])
    tokens = torch.randint(0, 101, (1, 8))
    with torch.no_grad():
        tr = model.run_with_trace(tokens)
        blk = model.blocks[0]
        pre = tr["blocks.0.hook_resid_pre"]
        assert torch.allclose(tr["blocks.0.ln2.hook_normalized"], blk.ln2(pre), atol=1e-6)
        assert torch.allclose(
            tr["blocks.0.hook_resid_post"],
            pre + tr["blocks.0.hook_attn_out"] + tr["blocks.0.hook_mlp_out"],
            atol=1e-5,
        )


def test_dropout_is_active_only_in_training() -> None:
    model = make_model(dropout=0.5)
    tokens = torch.randint(0, 101, (1, 10))
    with torch.no_grad():
        assert torch.equal(model(tokens), model(tokens))
        model.train()
        assert not torch.equal(model(tokens), model(tokens))


def test_prompt_longer_than_context_is_a_clear_error() -> None:
    model = make_model(n_ctx=16)
    with pytest.raises(ValueError, match="context window of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(d_model=50, n_heads=4), "must divide d_model"),
        (dict(n_kv_heads=3), "must divide n_heads"),
        (dict(n_layers=0), "n_layers must be a positive integer"),
        (dict(positional="alibi"), "positional must be one of"),
        (dict(dropout=1.5), "dropout"),
        (dict(rope_scaling={"type": "yarn"}), "rope_scaling type"),
    ],
)
def test_impossible_configs_are_rejected(overrides: dict[str, object], message: str) -> None:
    base: dict[str, object] = dict(vocab_size=10, d_model=48, n_layers=2, n_heads=4)
    base.update(overrides)
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**base)  # type: ignore[arg-type]


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown model config keys: n_layer"):
        ModelConfig.from_dict({"n_layer": 3})


def test_parameter_counts_add_up() -> None:
    model = make_model(**FAMILIES["tiny-mistral"])
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["unembed"] == 101 * 48


def test_slot_cache_decodes_ragged_rows_like_each_row_alone() -> None:
    model = make_model(**FAMILIES["tiny-llama"])
    prompts = [torch.randint(0, 101, (n,)) for n in (3, 9, 6)]
    slots = model.new_slot_cache(slots=4, max_len=32)
    with torch.no_grad():
        for prompt in prompts:
            single = model.new_cache(1, 32)
            model(prompt[None], cache=single)
            slots.insert(single)
        steps = torch.randint(0, 101, (3, 4))  # 4 decode steps of forced tokens per row
        batched = [model(steps[:, t : t + 1], cache=slots) for t in range(2)]
        # the row in slot 0 finishes: the last row moves into its slot
        assert slots.remove(0) == 2
        order = [2, 1]
        batched += [model(steps[order, t : t + 1], cache=slots) for t in range(2, 4)]
        for row, prompt in enumerate(prompts):
            full = model(torch.cat([prompt, steps[row]])[None])[0, len(prompt) - 1 :]
            for t in range(4):
                if t < 2:
                    got = batched[t][row, 0]
                elif row in order:
                    got = batched[t][order.index(row), 0]
                else:
                    continue
                assert (got - full[t + 1]).abs().max() < 1e-5, (row, t)
    assert slots.n_active == 2 and slots.free == 2


def test_every_preset_builds_and_overrides_apply() -> None:
    for name in PRESETS:
        cfg = ModelConfig.from_name(name)
        assert cfg == ModelConfig.from_dict(cfg.to_dict())
    tiny = ModelConfig.from_name("tiny-llama", vocab_size=101, n_layers=1)
    assert (tiny.vocab_size, tiny.n_layers, tiny.kv_heads, tiny.norm) == (101, 1, 2, "rmsnorm")
    gpt2 = ModelConfig.from_name("gpt2")
    counts = Transformer(ModelConfig.from_name("gpt2", n_layers=1)).parameter_counts()
    assert (gpt2.d_model, gpt2.n_layers, gpt2.activation) == (768, 12, "gelu_tanh")
    assert counts["embed"] == 50257 * 768 and counts["pos_embed"] == 1024 * 768


def test_tiny_families_are_all_different_and_carry_no_sizes() -> None:
    families = [family_fields(name) for name in TINY_FAMILIES]
    assert all("d_model" not in f and "vocab_size" not in f for f in families)
    configs = [ModelConfig(**f).to_dict() for f in families]
    for config in configs:
        config.pop("architecture")
    assert len({repr(sorted(c.items())) for c in configs}) == len(TINY_FAMILIES)


def test_unknown_preset_names_the_close_one_and_the_list() -> None:
    with pytest.raises(ConfigError, match=r"'tiny-lama' \(did you mean 'tiny-llama'\?\).*gpt2"):
        ModelConfig.from_name("tiny-lama")
    fields = preset_fields("tiny-rope-llama3")
    fields["rope_scaling"]["factor"] = 1.0  # a fresh copy: the table itself is unchanged
    assert preset_fields("tiny-rope-llama3")["rope_scaling"]["factor"] == 8.0


def test_inference_on_cuda_leaves_out_cudnn_attention() -> None:
    """cuDNN attention plans every new shape (a decode step's keys grow by one): inference on
    CUDA runs without it; training and CPU keep every backend."""
    from lmscope.model.block import attention_backends

    with attention_backends(torch.device("cuda"), training=False):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored
    for device, training in ((torch.device("cuda"), True), (torch.device("cpu"), False)):
        with attention_backends(device, training):
            assert torch.backends.cuda.cudnn_sdp_enabled()


def test_eval_mode_restores_every_submodule_mode() -> None:
    from lmscope.model.modes import eval_mode

    model = make_model(**FAMILIES["tiny-llama"]).train()
    model.blocks[0].eval()  # a frozen part stays in eval mode after
    before = [m.training for m in model.modules()]
    assert any(before) and not all(before)
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    model.eval()
    with eval_mode(model):
        pass
    assert not any(m.training for m in model.modules())

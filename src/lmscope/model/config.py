"""The one configuration that describes every supported decoder-only transformer."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PositionalKind = Literal["learned", "sinusoidal", "rope", "none"]
NormKind = Literal["layernorm", "rmsnorm"]
ActivationKind = Literal["gelu", "gelu_tanh", "relu", "silu"]

POSITIONAL_KINDS = ("learned", "sinusoidal", "rope", "none")
NORM_KINDS = ("layernorm", "rmsnorm")
ACTIVATION_KINDS = ("gelu", "gelu_tanh", "relu", "silu")
ROPE_SCALING_KINDS = ("linear", "dynamic", "llama3")


class ConfigError(ValueError):
    """A model configuration that cannot describe a working transformer."""


@dataclass
class ModelConfig:
    """Architecture of a canonical lmscope transformer.

    The same fields express GPT-2, OPT, LLaMA/Mistral/Qwen2/SmolLM2 and GPT-NeoX/Pythia.
    """

    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None: same as n_heads (MHA); 1: MQA; otherwise GQA
    d_head: int | None = None  # None: d_model // n_heads
    d_mlp: int | None = None  # None: 4 * d_model
    n_ctx: int = 1024  # maximum sequence length

    positional: PositionalKind = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = (
        None  # {"type": "linear"|"dynamic"|"llama3", "factor": ...}
    )
    rotary_pct: float = 1.0  # fraction of each head's dimensions that rotate (GPT-NeoX)

    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True  # LayerNorm only

    activation: ActivationKind = "gelu"
    gated_mlp: bool = False  # SwiGLU-style: act(gate(x)) * up(x)

    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    unembed_bias: bool = False
    tie_embeddings: bool = True

    parallel_attn_mlp: bool = False  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))

    dropout: float = 0.0  # embeddings, attention probabilities and residual branches
    init_std: float = 0.02

    # Identity, kept for documentation and tokenizer lookup; never affects the maths.
    architecture: str = "lmscope"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_head is None and isinstance(self.n_heads, int) and self.n_heads > 0:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"n_heads ({self.n_heads}) must divide d_model ({self.d_model}), or set d_head"
                )
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        assert self.n_kv_heads is not None
        return self.n_kv_heads

    @property
    def head_dim(self) -> int:
        assert self.d_head is not None
        return self.d_head

    @property
    def mlp_dim(self) -> int:
        assert self.d_mlp is not None
        return self.d_mlp

    @property
    def rotary_dim(self) -> int:
        dim = int(self.head_dim * self.rotary_pct)
        return dim - dim % 2

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible value."""
        positive = {
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_ctx": self.n_ctx,
            "d_mlp": self.d_mlp,
            "d_head": self.d_head,
            "n_kv_heads": self.n_kv_heads,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})"
            )
        if self.positional not in POSITIONAL_KINDS:
            raise ConfigError(
                f"positional must be one of {POSITIONAL_KINDS}, got {self.positional!r}"
            )
        if self.norm not in NORM_KINDS:
            raise ConfigError(f"norm must be one of {NORM_KINDS}, got {self.norm!r}")
        if self.activation not in ACTIVATION_KINDS:
            raise ConfigError(
                f"activation must be one of {ACTIVATION_KINDS}, got {self.activation!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ConfigError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ConfigError("sinusoidal positions need an even d_model")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind not in ROPE_SCALING_KINDS:
                raise ConfigError(
                    f"rope_scaling type must be one of {ROPE_SCALING_KINDS}, got {kind!r}"
                )

    # ---- named presets -------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (`lmscope.model.presets`: published shapes such as "gpt2" and the
        tiny "tiny-*" family models), with any field overridden by keyword."""
        from lmscope.model.presets import preset_fields

        return cls(**preset_fields(name, **overrides))

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config keys: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def save(self, path: str | Path) -> None:
        from lmscope.files import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read model config {path}: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"model config {path} must hold a JSON object")
        return cls.from_dict(data)

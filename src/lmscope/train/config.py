"""The training config: YAML sections, dotted command-line overrides, strict validation.

    out_dir: runs/shakespeare
    model: {d_model: 384, n_layers: 6, n_heads: 6}   # ModelConfig fields (training from scratch)
    init_from: smollm2-135m                           # or fine-tune a pretrained model instead
    data: {dir: data/shakespeare, context: 256}
    train: {max_steps: 2000, batch_size: 16}
    optim: {lr: 6.0e-4, weight_decay: 0.1}
    schedule: {kind: cosine, warmup_steps: 100}
    ...

Each section is a pydantic model with `extra="forbid"`: unknown keys anywhere are errors (with the
closest known key suggested), and so are values of the wrong type or out of range. Checks that
involve several sections (LoRA with frozen layers, a context longer than the model's) are in
`validate`. `lmscope.train.config_keys` lists every dotted key and checks single overrides.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictBool,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from lmscope.model.config import ConfigError, ModelConfig
from lmscope.train.config_errors import describe
from lmscope.train.errors import TrainConfigError


def _not_bool(kind: str) -> BeforeValidator:
    """Booleans are not numbers here: `batch_size: true` is a mistake, not 1."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(kind, "true/false is not a number")
        return value

    return BeforeValidator(check)


def _one_or_many(value: Any) -> Any:
    """A single string where a list of strings is expected means a list of one."""
    return [value] if isinstance(value, str) else value


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads unquoted on/off as booleans."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


Int = Annotated[int, _not_bool("int_type")]
Float = Annotated[FiniteFloat, _not_bool("float_type")]
Bool = StrictBool
Strings = Annotated[list[str], BeforeValidator(_one_or_many)]

Schedules = Literal["constant", "linear", "cosine", "step"]
Dtypes = Literal["auto", "fp32", "bf16"]
Curricula = Literal["length", "score"]


class Section(BaseModel):
    """A config section: strict keys, checked types, checked again when a value is assigned."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(Section):
    dir: str = ""  # a directory written by `lmscope data prepare`
    context: Int = Field(default=256, ge=1)  # tokens per training row
    pack: Bool = True  # pack documents into full rows; False: one document per row (padded)
    curriculum: Curricula | None = None  # order the first epochs easy-to-hard
    curriculum_epochs: Int = Field(default=1, ge=1)


class TrainSection(Section):
    max_steps: Int = Field(default=1000, ge=1)  # optimizer steps
    batch_size: Int = Field(default=16, ge=1)  # rows per micro-batch, per process
    grad_accum: Int = Field(default=1, ge=1)  # micro-batches per optimizer step
    seed: Int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Dtypes = "auto"  # auto (bf16 autocast where supported) | fp32 | bf16
    # stop (and save) after this much training time
    max_minutes: Float | None = Field(default=None, gt=0)


class OptimSection(Section):
    lr: Float = Field(default=3e-4, gt=0)
    # on matrices only; biases, norms (and embeddings) not
    weight_decay: Float = Field(default=0.1, ge=0)
    betas: list[Float] = Field(default_factory=lambda: [0.9, 0.95])
    eps: Float = Field(default=1e-8, gt=0)
    grad_clip: Float = Field(default=1.0, ge=0)  # max global gradient norm; 0 turns clipping off
    decay_embeddings: Bool = False

    @field_validator("betas")
    @classmethod
    def _two_betas(cls, betas: list[float]) -> list[float]:
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError("must be two numbers in [0, 1)")
        return betas


class ScheduleSection(Section):
    kind: Schedules = "cosine"  # all with linear warmup
    warmup_steps: Int = Field(default=0, ge=0)
    min_lr_ratio: Float = Field(default=0.1, ge=0, le=1)  # linear/cosine end at lr * min_lr_ratio
    decay_steps: Int | None = Field(default=None, ge=1)  # linear/cosine reach the minimum here
    # step decay: multiply by gamma every this many steps
    step_every: Int = Field(default=1000, ge=1)
    gamma: Float = Field(default=0.5, gt=0, le=1)


class EvalSection(Section):
    every: Int = Field(default=200, ge=0)  # steps between evaluations (0: only at the end)
    batches: Int | None = Field(default=20, ge=1)  # validation batches per evaluation (None: all)
    # early stopping: evaluations without improvement
    patience: Int | None = Field(default=None, ge=1)
    min_delta: Float = Field(default=0.0, ge=0)  # improvement smaller than this does not count
    test_at_end: Bool = True  # report the test split's loss at the end
    at_start: Bool = False  # also evaluate before the first step (e.g. before fine-tuning)


class CheckpointSection(Section):
    every: Int = Field(default=200, ge=0)  # steps between checkpoints (0: only at the end)
    # step checkpoints kept (the best one is kept in addition)
    keep_last: Int = Field(default=2, ge=1)
    keep_best: Bool = True
    final: Literal["best", "last"] = "best"  # which weights become out_dir/model


class LogSection(Section):
    every: Int = Field(default=10, ge=1)  # steps between log lines / TensorBoard points
    tensorboard: Bool = True
    mlflow: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = "auto"
    progress: Bool = True


class SampleSection(Section):
    prompts: Strings = Field(default_factory=list)
    # auto: on instruction data, each prompt is a user message in the data's chat template;
    # false: prompts are raw text (special tokens such as <|im_start|> written in them count)
    chat: Literal["auto", True, False] = "auto"
    every_evals: Int = Field(default=1, ge=1)  # sample after every N-th evaluation
    max_new_tokens: Int = Field(default=48, ge=1)
    temperature: Float = Field(default=0.8, ge=0)  # 0: greedy
    top_k: Int | None = Field(default=50, ge=1)


class LoraSection(Section):
    r: Int = Field(default=8, ge=1)
    alpha: Float = Field(default=16.0, gt=0)
    dropout: Float = Field(default=0.05, ge=0, lt=1)
    targets: Strings = Field(default_factory=lambda: ["attn.qkv", "attn.out"], min_length=1)


class FinetuneSection(Section):
    freeze_layers: Int = Field(default=0, ge=0)  # freeze the first N transformer blocks
    freeze_embeddings: Bool = False
    # gradual unfreezing: one block every N steps
    unfreeze_every: Int | None = Field(default=None, ge=1)
    lora: LoraSection | None = None
    merge_lora: Bool = True  # also write the merged full model at the end


class TrainConfig(Section):
    out_dir: str = Field(default="runs/run", min_length=1)
    init_from: str | None = None  # pretrained model name or checkpoint path to fine-tune
    model: dict[str, Any] = Field(default_factory=dict)  # ModelConfig fields
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection = ScheduleSection()
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    log: LogSection = LogSection()
    sample: SampleSection = SampleSection()
    finetune: FinetuneSection = FinetuneSection()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @property
    def is_finetune(self) -> bool:
        return self.init_from is not None

    def validate(self) -> None:  # type: ignore[override]
        validate(self)


# ---- overrides and files -----------------------------------------------------------------------


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in item:
        raise TrainConfigError(f"override {item!r} must look like section.key=value")
    path, raw = item.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise TrainConfigError(f"override {item!r} has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        reason = str(err).splitlines()[0]
        raise TrainConfigError(f"override {item!r}: cannot parse the value ({reason})") from err
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                prefix = ".".join(keys[: depth + 1])
                raise TrainConfigError(f"override {item!r}: '{prefix}' is not a section")
            node = child
        node[keys[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a dict (an empty file is an empty config)."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TrainConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise TrainConfigError(f"{path} is not valid YAML: {reason}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise TrainConfigError(f"{path} must hold a mapping of config sections")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults), apply overrides and validate."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from plain data; the first problem as one TrainConfigError line."""
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as err:
        raise TrainConfigError(describe(err, TrainConfig)) from None
    config.validate()
    return config


# ---- checks across sections -------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise TrainConfigError(message)


def validate(c: TrainConfig) -> None:
    """Raise TrainConfigError for the first impossible combination of values."""
    _check(bool(c.data.dir), "data.dir must name a directory made by `lmscope data prepare`")
    f = c.finetune
    _check(
        f.unfreeze_every is None or f.freeze_layers > 0,
        "finetune.unfreeze_every needs finetune.freeze_layers > 0 (the blocks to unfreeze)",
    )
    _check(
        f.lora is None
        or (f.freeze_layers == 0 and f.unfreeze_every is None and not f.freeze_embeddings),
        "finetune.lora already freezes the base model; drop freeze_layers, "
        "freeze_embeddings and unfreeze_every",
    )
    if c.init_from is not None:
        extra = sorted(set(c.model) - {"dropout"})
        _check(
            not extra,
            f"model.{extra[0] if extra else ''}: a fine-tuned model keeps its pretrained "
            "architecture; with init_from only model.dropout may be set",
        )
    else:
        c.model = {key: model_value(key, value) for key, value in c.model.items()}
        model_config(c, vocab_size=c.model.get("vocab_size", 1))  # raises for bad shapes


def model_value(key: str, value: Any) -> Any:
    """A `model.<key>` value converted to its ModelConfig field's type ("1e-3" -> 0.001);
    unknown keys pass through, for ModelConfig to name."""
    hints = typing.get_type_hints(ModelConfig)
    if key not in {f.name for f in dataclasses.fields(ModelConfig)}:
        return value
    try:  # strict for booleans: `n_heads: true` is not 1
        return TypeAdapter(hints[key]).validate_python(value, strict=isinstance(value, bool))
    except ValidationError as err:
        raise TrainConfigError(describe(err, TrainConfig, f"model.{key}")) from None


def model_config(c: TrainConfig, vocab_size: int, **identity: Any) -> ModelConfig:
    """The ModelConfig for a from-scratch run: `model` keys, with vocabulary size from the data
    tokenizer and context from data.context unless given."""
    values = {"vocab_size": vocab_size, "n_ctx": c.data.context, **identity, **c.model}
    try:
        cfg = ModelConfig.from_dict(values)
    except (ConfigError, TypeError) as err:
        raise TrainConfigError(f"model: {err}") from err
    if cfg.n_ctx < c.data.context:
        raise TrainConfigError(
            f"data.context ({c.data.context}) is longer than model.n_ctx ({cfg.n_ctx}); "
            "lower data.context or raise model.n_ctx"
        )
    return cfg

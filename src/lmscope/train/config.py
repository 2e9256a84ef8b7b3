"""The training config: YAML sections, dotted command-line overrides, strict validation.

    out_dir: runs/shakespeare
    model: {d_model: 384, n_layers: 6, n_heads: 6}   # ModelConfig fields (training from scratch)
    init_from: smollm2-135m                           # or fine-tune a pretrained model instead
    data: {dir: data/shakespeare, context: 256}
    train: {max_steps: 2000, batch_size: 16}
    optim: {lr: 6.0e-4, weight_decay: 0.1}
    schedule: {kind: cosine, warmup_steps: 100}
    ...

Unknown keys anywhere are errors (with the closest known key suggested), and so are values that
cannot work (negative learning rate, batch size 0, heads that do not divide d_model).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmscope.model.config import ConfigError, ModelConfig
from lmscope.train.errors import TrainConfigError

SCHEDULES = ("constant", "linear", "cosine", "step")
DTYPES = ("auto", "fp32", "bf16")
CURRICULA = ("length", "score")
FINAL_CHOICES = ("best", "last")
# Names people bring from other trainers -> ours, for "did you mean" hints.
ALIASES = {
    "learning_rate": "lr",
    "batch": "batch_size",
    "micro_batch_size": "batch_size",
    "steps": "max_steps",
    "max_iters": "max_steps",
    "gradient_accumulation_steps": "grad_accum",
    "warmup": "warmup_steps",
    "max_grad_norm": "grad_clip",
    "clip": "grad_clip",
    "block_size": "context",
    "seq_len": "context",
}


@dataclass
class DataSection:
    dir: str = ""  # a directory written by `lmscope data prepare`
    context: int = 256  # tokens per training row
    pack: bool = True  # pack documents into full rows; False: one document per row (padded)
    curriculum: str | None = None  # None | length | score: order the first epochs easy-to-hard
    curriculum_epochs: int = 1


@dataclass
class TrainSection:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 16  # rows per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast where supported) | fp32 | bf16
    max_minutes: float | None = None  # stop (and save) after this much wall time


@dataclass
class OptimSection:
    lr: float = 3e-4
    weight_decay: float = 0.1  # on matrices only; biases, norms (and embeddings) are exempt
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    decay_embeddings: bool = False


@dataclass
class ScheduleSection:
    kind: str = "cosine"  # constant | linear | cosine | step (all with linear warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # linear/cosine end at lr * min_lr_ratio
    decay_steps: int | None = None  # linear/cosine reach the minimum here (default: max_steps)
    step_every: int = 1000  # step decay: multiply by gamma every this many steps
    gamma: float = 0.5


@dataclass
class EvalSection:
    every: int = 200  # steps between evaluations (0: only at the end)
    batches: int | None = 20  # validation batches per evaluation (None: the whole split)
    patience: int | None = None  # early stopping: evaluations without improvement
    min_delta: float = 0.0  # improvement smaller than this does not count
    test_at_end: bool = True  # report the test split's loss in the training record
    at_start: bool = False  # also evaluate before the first step (e.g. before fine-tuning)


@dataclass
class CheckpointSection:
    every: int = 200  # steps between checkpoints (0: only at the end)
    keep_last: int = 2  # step checkpoints kept (the best one is kept in addition)
    keep_best: bool = True
    final: str = "best"  # which weights become out_dir/model: best (by validation) | last


@dataclass
class LogSection:
    every: int = 10  # steps between log lines / TensorBoard points
    tensorboard: bool = True
    mlflow: str = "auto"  # auto (if installed) | on | off; SQLite backend in out_dir
    progress: bool = True


@dataclass
class SampleSection:
    prompts: list[str] = field(default_factory=list)
    every_evals: int = 1  # sample after every N-th evaluation
    max_new_tokens: int = 48
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 50


@dataclass
class LoraSection:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.out"])


@dataclass
class FinetuneSection:
    freeze_layers: int = 0  # freeze the first N transformer blocks
    freeze_embeddings: bool = False
    unfreeze_every: int | None = None  # gradual unfreezing: one more frozen block every N steps
    lora: LoraSection | None = None
    merge_lora: bool = True  # also write the merged full model at the end


@dataclass
class TrainConfig:
    out_dir: str = "runs/run"
    init_from: str | None = None  # pretrained model name or checkpoint path to fine-tune
    model: dict[str, Any] = field(default_factory=dict)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    sample: SampleSection = field(default_factory=SampleSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def is_finetune(self) -> bool:
        return self.init_from is not None

    def validate(self) -> None:
        validate(self)


# ---- building from plain data ------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except TrainConfigError as err:
                errors.append(str(err))
        raise TrainConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TrainConfigError(f"{where} must be a mapping of keys, got {value!r}")
        return build(hint, value, where)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str | int | float) and item is str:
            value = [value]
        if not isinstance(value, list | tuple):
            raise TrainConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise TrainConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TrainConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TrainConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TrainConfigError(f"{where}: unsupported type {_type_name(hint)}")


def build(cls: type[Any], data: dict[str, Any], where: str = "") -> Any:
    """An instance of dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in known]
    if unknown:
        key = unknown[0]
        alias = ALIASES.get(str(key))
        close = [alias] if alias in known else difflib.get_close_matches(str(key), known, n=1)
        hint = f"; did you mean '{_join(where, close[0])}'?" if close else ""
        raise TrainConfigError(
            f"unknown config key '{_join(where, key)}'{hint} (known keys here: {', '.join(known)})"
        )
    values = {key: _coerce(value, hints[key], _join(where, key)) for key, value in data.items()}
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


# ---- overrides and files -----------------------------------------------------------------------


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"override {item!r} must look like section.key=value")
        path, raw = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise TrainConfigError(f"override {item!r} has no key before '='")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise TrainConfigError(f"override {item!r}: cannot parse the value ({err})") from err
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults), apply overrides and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise TrainConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise TrainConfigError(f"{path} is not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TrainConfigError(f"{path} must hold a mapping of config sections")
        data = loaded
    apply_overrides(data, overrides or [])
    config = build(TrainConfig, data)
    config.validate()
    return config


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    config = build(TrainConfig, data)
    config.validate()
    return config


# ---- validation -------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise TrainConfigError(message)


def validate(c: TrainConfig) -> None:
    """Raise TrainConfigError for the first impossible value."""
    _check(bool(c.out_dir), "out_dir must name a directory for checkpoints and logs")
    _check(bool(c.data.dir), "data.dir must name a directory made by `lmscope data prepare`")
    _check(c.data.context >= 1, f"data.context must be >= 1, got {c.data.context}")
    _check(
        c.data.curriculum in (None, *CURRICULA),
        f"data.curriculum must be one of {CURRICULA} or null, got {c.data.curriculum!r}",
    )
    _check(c.data.curriculum_epochs >= 1, "data.curriculum_epochs must be >= 1")

    t = c.train
    _check(t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}")
    _check(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _check(t.grad_accum >= 1, f"train.grad_accum must be >= 1, got {t.grad_accum}")
    _check(t.dtype in DTYPES, f"train.dtype must be one of {DTYPES}, got {t.dtype!r}")
    _check(
        t.max_minutes is None or t.max_minutes > 0,
        f"train.max_minutes must be positive, got {t.max_minutes}",
    )

    o = c.optim
    _check(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be a positive number, got {o.lr}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        f"optim.betas must be two numbers in [0, 1), got {o.betas}",
    )
    _check(o.eps > 0, f"optim.eps must be positive, got {o.eps}")
    _check(o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0: off), got {o.grad_clip}")

    s = c.schedule
    _check(s.kind in SCHEDULES, f"schedule.kind must be one of {SCHEDULES}, got {s.kind!r}")
    _check(s.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {s.warmup_steps}")
    _check(
        0 <= s.min_lr_ratio <= 1, f"schedule.min_lr_ratio must be in [0, 1], got {s.min_lr_ratio}"
    )
    _check(
        s.decay_steps is None or s.decay_steps >= 1,
        f"schedule.decay_steps must be >= 1, got {s.decay_steps}",
    )
    _check(s.step_every >= 1, f"schedule.step_every must be >= 1, got {s.step_every}")
    _check(0 < s.gamma <= 1, f"schedule.gamma must be in (0, 1], got {s.gamma}")

    e = c.eval
    _check(e.every >= 0, f"eval.every must be >= 0 (0: only at the end), got {e.every}")
    _check(e.batches is None or e.batches >= 1, f"eval.batches must be >= 1, got {e.batches}")
    _check(e.patience is None or e.patience >= 1, f"eval.patience must be >= 1, got {e.patience}")
    _check(e.min_delta >= 0, f"eval.min_delta must be >= 0, got {e.min_delta}")

    k = c.checkpoint
    _check(k.every >= 0, f"checkpoint.every must be >= 0 (0: only at the end), got {k.every}")
    _check(k.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {k.keep_last}")
    _check(k.final in FINAL_CHOICES, f"checkpoint.final must be one of {FINAL_CHOICES}")

    lg = c.log
    _check(lg.every >= 1, f"log.every must be >= 1, got {lg.every}")
    _check(
        lg.mlflow in ("auto", "on", "off"), f"log.mlflow must be auto, on or off, got {lg.mlflow!r}"
    )

    sm = c.sample
    _check(sm.every_evals >= 1, f"sample.every_evals must be >= 1, got {sm.every_evals}")
    _check(sm.max_new_tokens >= 1, f"sample.max_new_tokens must be >= 1, got {sm.max_new_tokens}")
    _check(sm.temperature >= 0, f"sample.temperature must be >= 0, got {sm.temperature}")
    _check(sm.top_k is None or sm.top_k >= 1, f"sample.top_k must be >= 1, got {sm.top_k}")

    f = c.finetune
    _check(f.freeze_layers >= 0, f"finetune.freeze_layers must be >= 0, got {f.freeze_layers}")
    _check(
        f.unfreeze_every is None or f.unfreeze_every >= 1,
        f"finetune.unfreeze_every must be >= 1, got {f.unfreeze_every}",
    )
    _check(
        f.unfreeze_every is None or f.freeze_layers > 0,
        "finetune.unfreeze_every needs finetune.freeze_layers > 0 (the blocks to unfreeze)",
    )
    if f.lora is not None:
        lo = f.lora
        _check(lo.r >= 1, f"finetune.lora.r must be >= 1, got {lo.r}")
        _check(lo.alpha > 0, f"finetune.lora.alpha must be positive, got {lo.alpha}")
        _check(0 <= lo.dropout < 1, f"finetune.lora.dropout must be in [0, 1), got {lo.dropout}")
        _check(bool(lo.targets), "finetune.lora.targets must name at least one module")
        _check(
            f.freeze_layers == 0 and f.unfreeze_every is None and not f.freeze_embeddings,
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
        model_config(c, vocab_size=c.model.get("vocab_size", 1))  # raises for bad shapes


def model_config(c: TrainConfig, vocab_size: int, **identity: Any) -> ModelConfig:
    """The ModelConfig for a from-scratch run: `model` keys, with vocabulary size from the data
    tokenizer and context from data.context unless given."""
    values = {"vocab_size": vocab_size, "n_ctx": c.data.context, **identity, **c.model}
    try:
        cfg = ModelConfig.from_dict(values)
    except ConfigError as err:
        raise TrainConfigError(f"model: {err}") from err
    except TypeError as err:
        raise TrainConfigError(f"model: {err}") from err
    if cfg.n_ctx < c.data.context:
        raise TrainConfigError(
            f"data.context ({c.data.context}) is longer than model.n_ctx ({cfg.n_ctx}); "
            "lower data.context or raise model.n_ctx"
        )
    return cfg

"""Training configs: strict keys, overrides, impossible values, schedules, the CLI entry."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lmscope.train.config import ScheduleSection, TrainConfig, apply_overrides, load_config
from lmscope.train.config_keys import config_keys, validate_override, with_overrides
from lmscope.train.errors import TrainConfigError
from lmscope.train.schedules import Schedule

BASE = {
    "out_dir": "runs/x",
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2},
    "data": {"dir": "data/x", "context": 16},
}


def write(tmp_path: Path, data: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_with_overrides(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, BASE),
        ["optim.lr=1e-3", "train.batch_size=3", "optim.betas=[0.8, 0.9]", "finetune.lora.r=4"],
    )
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr == 1e-3 and cfg.train.batch_size == 3 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.finetune.lora is not None and cfg.finetune.lora.r == 4
    assert cfg.finetune.lora.targets == ["attn.qkv", "attn.out"]
    assert cfg.schedule.kind == "cosine"  # defaults fill the rest


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["optim.learning_rate=1"],
            r"unknown config key 'optim.learning_rate'.*did you mean 'optim.lr'",
        ),
        (["trian.max_steps=3"], r"unknown config key 'trian'.*did you mean 'train'"),
        (["optim.lr=-0.1"], "optim.lr must be a positive number"),
        (["optim.lr=fast"], "optim.lr must be a number"),
        (["train.batch_size=0"], "train.batch_size must be >= 1"),
        (["train.grad_accum=0"], "train.grad_accum must be >= 1"),
        (["model.n_heads=3"], r"n_heads \(3\) must divide d_model \(32\)"),
        (["model.n_layer=2"], "unknown model config keys: n_layer"),
        (["model.dropout=1.5"], "dropout must be in"),
        (["schedule.kind=exponential"], "schedule.kind must be one of"),
        (["optim.betas=[0.9]"], "optim.betas must be two numbers"),
        (["eval.patience=0"], "eval.patience must be >= 1"),
        (["data.context=64", "model.n_ctx=32"], "longer than model.n_ctx"),
        (["train.dtype=fp8"], "train.dtype must be one of"),
        (["finetune.unfreeze_every=10"], "needs finetune.freeze_layers"),
        (
            ["finetune.lora.r=4", "finetune.freeze_layers=1"],
            "LoRA already freezes|lora already freezes",
        ),
        (["init_from=some-model", "model.d_model=64"], "keeps its pretrained architecture"),
        (["optim.lr"], "must look like section.key=value"),
        (["optim.lr.x=1"], "optim.lr must be a number"),
        (["optim=3"], "optim must be a mapping"),
        # nested unknown keys name the full dotted key and the keys valid at that level
        (
            ["finetune.lora.rank=4"],
            r"unknown config key 'finetune.lora.rank'.*known keys here: r, alpha",
        ),
        (["eval.every_steps=4"], r"unknown config key 'eval.every_steps'.*did you mean"),
        (["data.block_size=64"], r"did you mean 'data.context'"),
        # wrong types, one line naming the key and the value
        (["train.batch_size=true"], r"train.batch_size must be an integer, got True"),
        (["optim.lr=false"], r"optim.lr must be a number, got False"),
        (["optim.lerning_rate=1"], r"did you mean 'optim.lr'"),  # close to an alias
        (["train.batch_size=2.5"], r"train.batch_size must be a whole number, got 2.5"),
        (["train.max_steps=many"], r"train.max_steps must be an integer, got 'many'"),
        (["data.pack=3"], r"data.pack must be true or false, got 3"),
        (["optim.betas=[0.9, x]"], r"optim.betas\[1\] must be a number, got 'x'"),
        (["optim.lr=.nan"], "optim.lr must be a finite number"),
        (["finetune.lora=5"], "finetune.lora must be a mapping of keys, got 5"),
        (["finetune.lora.targets=[]"], "finetune.lora.targets must have at least 1"),
        (["log.mlflow=maybe"], r"log.mlflow must be one of 'auto', 'on' or 'off'"),
        (["sample.chat=sometimes"], r"sample.chat must be one of"),
        (["model.n_heads=two"], r"model.n_heads must be an integer, got 'two'"),
        (["out_dir="], "out_dir must not be empty"),
    ],
)
def test_bad_configs_are_clear_errors(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(TrainConfigError, match=message):
        load_config(write(tmp_path, BASE), overrides)


def test_every_error_is_one_line(tmp_path: Path) -> None:
    for override in ("finetune.lora.rank=4", "train.batch_size=x", "optim.betas=[1, 2, 3]"):
        with pytest.raises(TrainConfigError) as info:
            load_config(write(tmp_path, BASE), [override])
        assert "\n" not in str(info.value), override


def test_yaml_quirks_are_read_as_meant(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 (no dot) as a string and unquoted off as false; both mean what they say
    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(BASE) + "optim: {lr: 1e-3}\nlog: {mlflow: off}\nsample: {prompts: Hi}\n"
    )
    cfg = load_config(path, ["model.init_std=1e-3"])
    assert cfg.optim.lr == 1e-3 and cfg.log.mlflow == "off" and cfg.sample.prompts == ["Hi"]
    assert cfg.model["init_std"] == 1e-3  # a float for ModelConfig, not the string "1e-3"


def test_assignment_is_validated(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    cfg.train.batch_size = 4
    with pytest.raises(ValueError, match="batch_size"):
        cfg.train.batch_size = 0


def test_config_keys_list_every_setting() -> None:
    keys = config_keys()
    for key in ("optim.lr", "train.max_steps", "finetune.lora.r", "model.d_model", "out_dir"):
        assert key in keys
    assert "optim" not in keys and "finetune.lora" not in keys  # sections are not settings
    assert len(keys) == len(set(keys))
    # every listed key (but the free-form model ones) round-trips through the config
    defaults = TrainConfig().to_dict()
    for key in keys:
        if key.startswith("model."):
            continue
        node = defaults
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part] if node[part] is not None else {}
        value = node.get(parts[-1]) if isinstance(node, dict) else None
        if value is not None:
            assert validate_override(f"{key}={json.dumps(value)}")[0] == key


def test_validate_override() -> None:
    assert validate_override("optim.lr=1e-3") == ("optim.lr", 1e-3)
    assert validate_override("finetune.lora.targets=attn.qkv") == (
        "finetune.lora.targets",
        ["attn.qkv"],
    )
    assert validate_override("model.n_heads=4") == ("model.n_heads", 4)
    with pytest.raises(TrainConfigError, match=r"did you mean 'optim.lr'"):
        validate_override("optim.lrr=1")
    with pytest.raises(TrainConfigError, match=r"did you mean 'model.d_model'"):
        validate_override("model.d_modl=1")
    with pytest.raises(TrainConfigError, match=r"optim.lr must be a positive number"):
        validate_override("optim.lr=0")
    with pytest.raises(TrainConfigError, match="not a settable config key"):
        validate_override("optim=3")
    # combinations are only checked against a whole config
    assert validate_override("model.n_heads=3")[1] == 3
    with pytest.raises(TrainConfigError, match=r"n_heads \(3\) must divide d_model"):
        validate_override("model.n_heads=3", BASE)


def test_with_overrides_gives_a_new_validated_config(tmp_path: Path) -> None:
    base = load_config(write(tmp_path, BASE))
    tuned = with_overrides(base, ["optim.lr=0.01", "model.d_model=64", "finetune.lora.r=2"])
    assert tuned.optim.lr == 0.01 and tuned.model["d_model"] == 64
    assert tuned.finetune.lora is not None and tuned.finetune.lora.r == 2
    assert base.optim.lr == 3e-4 and base.model["d_model"] == 32 and base.finetune.lora is None
    with pytest.raises(TrainConfigError, match=r"did you mean 'optim\.lr'"):
        with_overrides(base, ["optim.lrr=0.01"])
    with pytest.raises(TrainConfigError, match=r"n_heads \(2\) must divide d_model \(33\)"):
        with_overrides(base, ["model.d_model=33"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(TrainConfigError, match="mapping"):
        load_config(bad)
    data = dict(BASE, data={"context": 16})
    with pytest.raises(TrainConfigError, match=r"data\.dir"):
        load_config(write(tmp_path, data))


def test_apply_overrides_creates_sections() -> None:
    data: dict = {}  # type: ignore[type-arg]
    apply_overrides(data, ["a.b.c=3", "a.d=hello", "e=[1, 2]"])
    assert data == {"a": {"b": {"c": 3}, "d": "hello"}, "e": [1, 2]}


def test_schedules() -> None:
    def make(kind: str, **kw: float) -> Schedule:
        section = ScheduleSection(kind=kind, warmup_steps=10, min_lr_ratio=0.1, **kw)  # type: ignore[arg-type]
        return Schedule.from_config(1.0, section, max_steps=110)

    cosine, linear, constant = make("cosine"), make("linear"), make("constant")
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.55)  # halfway down the half cosine
    assert cosine(110) == pytest.approx(0.1) and cosine(500) == pytest.approx(0.1)
    assert linear(60) == pytest.approx(0.55) and linear(35) == pytest.approx(1 - 0.9 * 0.25)
    assert constant(5) == pytest.approx(0.6) and constant(1000) == 1.0
    step = make("step", step_every=20, gamma=0.5)
    assert [step(s) for s in (10, 29, 30, 50, 70)] == pytest.approx([1, 1, 0.5, 0.25, 0.125])
    values = [cosine(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert all(math.isfinite(v) and v > 0 for v in values)


def test_cli_print_config_and_errors(tmp_path: Path) -> None:
    from lmscope.cli import _register, app

    _register()
    runner = CliRunner()
    path = write(tmp_path, BASE)
    result = runner.invoke(app, ["train", str(path), "optim.lr=0.002", "--print-config"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["optim"]["lr"] == 0.002
    result = runner.invoke(app, ["train", str(path), "train.batch_size=0"])
    assert result.exit_code == 2 and "train.batch_size must be >= 1" in result.output


def test_example_configs_are_valid() -> None:
    """Every training config in examples/ (search_*.yaml are tune's search files, checked in
    tests/test_tune.py)."""
    folder = Path(__file__).resolve().parents[1] / "examples"
    examples = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("search_"))
    assert len(examples) >= 3
    for path in examples:
        cfg = load_config(path)
        assert cfg.data.dir and cfg.out_dir, path

"""`lmscope generate` on a tiny checkpoint: streams text, and user errors exit 2 in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from lmscope.commands import generate as generate_command
from lmscope.engine import generate
from lmscope.model.prepacked import optimize_for_decoding
from lmscope.zoo.checkpoint import load_checkpoint, save_checkpoint
from test_generate_fixtures import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny")
    save_checkpoint(tiny_model(), directory, tokenizer=tiny_tokenizer())
    return directory


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so the command is called by name as under `lmscope`
        pass

    generate_command.register(app)
    return app


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["generate", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("prepack", ["--prepack", "--no-prepack"])
def test_streams_the_same_text_as_the_library(
    app: typer.Typer, checkpoint: Path, prepack: str
) -> None:
    code, out, err = invoke(
        app, str(checkpoint), "The quick brown", "--max-tokens", "8", "--temperature", "0", prepack
    )
    assert code == 0, err
    model, tok = load_checkpoint(checkpoint)
    expected = generate(model, tok, "The quick brown", max_new_tokens=8, temperature=0)
    assert out == expected.text + "\n"
    assert f"{expected.completion_tokens} new tokens" in err


def test_sampling_options_and_chat(app: typer.Typer, checkpoint: Path) -> None:
    args = [str(checkpoint), "hi", "-n", "6", "--seed", "3", "--top-k", "20", "--top-p", "0.9"]
    first = invoke(app, *args, "--chat", "--system", "be brief", "--no-stats")
    again = invoke(app, *args, "--chat", "--system", "be brief", "--no-stats")
    assert first[0] == 0 and first == again  # seeded: identical
    assert first[2] == ""
    assert (
        invoke(app, *args, "--repetition-penalty", "1.3", "--stop", "e", "--dtype", "bfloat16")[0]
        == 0
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-model", "hi"], "unknown model 'no-such-model'"),
        (["{ckpt}", "word " * 80], "context window is 64 tokens"),
        (["{ckpt}", "hi", "--temperature", "-1"], "temperature must be >= 0"),
        (["{ckpt}", "hi", "--system", "x"], "--system needs --chat"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    app: typer.Typer, checkpoint: Path, args: list[str], message: str
) -> None:
    code, _, err = invoke(app, *[a.replace("{ckpt}", str(checkpoint)) for a in args])
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_truncate_option_keeps_the_end_of_a_long_prompt(app: typer.Typer, checkpoint: Path) -> None:
    code, _, err = invoke(app, str(checkpoint), "word " * 80, "-n", "4", "--truncate")
    assert code == 0, err


def test_registered_under_the_lmscope_command() -> None:
    from lmscope import cli

    if not any(c.name == "generate" for c in cli.app.registered_commands):
        cli._register()
    assert any(c.name == "generate" for c in cli.app.registered_commands)


def test_optimize_for_decoding_keeps_values_ties_and_checkpoints(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = tiny_model(n_kv_heads=4, d_mlp=96)
    before = generate(model, tok, "The quick", max_new_tokens=10, temperature=0, eos_token_ids=[])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert optimize_for_decoding(model) is model
    optimize_for_decoding(model)  # twice is fine
    assert model.prepacked_enabled
    assert model.unembed.weight is model.embed.weight
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    after = generate(model, tok, "The quick", max_new_tokens=10, temperature=0, eos_token_ids=[])
    assert after.token_ids == before.token_ids
    save_checkpoint(model, tmp_path / "ckpt", tokenizer=tok)
    reloaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(reloaded.unembed.weight, model.unembed.weight)
    bf16 = optimize_for_decoding(tiny_model().to(torch.bfloat16))
    assert not bf16.prepacked_enabled  # float32 only


def test_stop_strings_understand_shell_escapes() -> None:
    assert generate_command.unescape(r"a\nb\tc\\n") == "a\nb\tc\\n"
    assert generate_command.unescape("é") == "é"

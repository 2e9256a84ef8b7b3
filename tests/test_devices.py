"""--device: a device this machine cannot use is one clear error, before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lmscope.zoo.errors import DeviceError
from lmscope.zoo.registry import check_device


def test_check_device() -> None:
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        check_device("gpu0")
    with pytest.raises(DeviceError, match="not supported"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            check_device("cuda")
    else:  # pragma: no cover - only where a GPU is lent
        assert check_device("cuda").type == "cuda"
        with pytest.raises(DeviceError, match="does not exist"):
            check_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without GPU")
@pytest.mark.parametrize(
    "command",
    [
        ["generate", "{ckpt}", "hi", "-n", "2", "--device", "cuda"],
        ["eval", "{ckpt}", "{txt}", "--device", "cuda"],
        ["serve", "--model", "{ckpt}", "--device", "cuda", "--port", "1"],
    ],
)
def test_commands_refuse_a_missing_gpu_in_one_line(
    command: list[str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from lmscope.cli import _register, app

    text = tmp_path / "t.txt"
    text.write_text("some text\n")
    _register()
    args = [a.format(ckpt=tiny_checkpoint, txt=text) for a in command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "no CUDA GPU" in result.output and "Traceback" not in result.output

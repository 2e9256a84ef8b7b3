"""Shared file helpers: atomic replacement, and new files and directories that follow the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmscope.files import atomic_path, atomic_write, atomic_write_text, new_temp_dir, staged_dir


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_temp_dirs_get_the_modes_of_open_and_mkdir(
    tmp_path: Path, umask: int
) -> None:
    text_file = tmp_path / "sub" / "config.json"
    atomic_write_text(text_file, "{}")
    binary = tmp_path / "weights.bin"
    atomic_write(binary, lambda tmp: tmp.write_bytes(b"\0" * 8))
    fresh_dir = new_temp_dir(".model.", tmp_path)
    with open(tmp_path / "plain.txt", "w") as handle:  # what the user expects: open()'s mode
        handle.write("x")
    (tmp_path / "plain-dir").mkdir()
    assert mode(text_file) == mode(binary) == mode(tmp_path / "plain.txt") == 0o666 & ~umask
    assert mode(fresh_dir) == mode(tmp_path / "plain-dir") == 0o777 & ~umask
    assert fresh_dir.parent == tmp_path and fresh_dir.name.startswith(".model.")
    assert not any(fresh_dir.iterdir())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


def test_temporary_names_do_not_collide(tmp_path: Path) -> None:
    dirs = {new_temp_dir(".x.", tmp_path) for _ in range(50)}
    assert len(dirs) == 50 and all(d.is_dir() for d in dirs)


def test_a_staged_directory_replaces_its_target_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with staged_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.")
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]

"""File helpers shared by every package: atomic writes of files and directories.

Everything they publish carries the modes `open()` and `mkdir` would give under the user's
umask (usually 0644/0755), not the 0600/0700 of `tempfile` or of writers such as safetensors'
`save_file`: data, checkpoints and caches are often shared with other users or services.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

_ATTEMPTS = 100


def _unique_beside(parent: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create a new entry named prefix + random + suffix in `parent` with `create`, which must
    fail with FileExistsError when the name is taken (O_EXCL / mkdir)."""
    for _ in range(_ATTEMPTS):
        candidate = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not find a free temporary name in {parent}")


def _create_file(path: Path) -> None:
    # Mode 0o666 as open() uses: the kernel applies the umask (tempfile.mkstemp forces 0o600).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # not Linux: the brief set-and-restore is the only portable way
    os.umask(mask)
    return mask


def _settle_modes(root: Path) -> None:
    """Give everything under `root` (and root) the mode open()/mkdir would have given it."""
    umask = _umask()
    for path in [root, *(root.rglob("*") if root.is_dir() else ())]:
        if path.is_symlink():
            continue
        mode = 0o777 if path.is_dir() else 0o666
        if stat.S_IMODE(path.stat().st_mode) != mode & ~umask:
            path.chmod(mode & ~umask)


def new_temp_dir(prefix: str, parent: Path) -> Path:
    """A new empty directory in `parent` to fill and then rename into place; like
    tempfile.mkdtemp, but with the mode `mkdir` gives (0o777 less the umask), not 0o700."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _unique_beside(parent, prefix, "", lambda p: p.mkdir(0o777))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    On any error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_beside(path.parent, f".{path.name}.", ".tmp", _create_file)
    try:
        yield tmp
        _settle_modes(tmp)  # the writer may have replaced the file with a 0600 one
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def replace_dir(new: Path, target: Path) -> None:
    """Publish the filled directory `new` as `target` (normally made by `new_temp_dir`). An
    existing `target` is first renamed aside and deleted only after the move, so at every
    moment one complete copy exists."""
    new, target = Path(new), Path(target)
    _settle_modes(new)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A new directory beside `target` to fill; when the block ends it is published as
    `target` (`replace_dir`), and if the block raises it is deleted and `target` is untouched."""
    target = Path(target)
    tmp = new_temp_dir(f".{target.name}.", target.parent)
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Write output files atomically: to a temporary name beside the target, renamed on success."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from promptus_codec.errors import UsageError


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (links and ``..`` resolved); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_target(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), folder_ok: bool = False
) -> None:
    """Refuse, before any work, an output that cannot be written or that would replace an input.

    ``folder_ok``: the target may be a folder (a PNG frame writer); the media writers check the rest.
    """
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {path}: folder {parent} does not exist")
    if not folder_ok and os.path.isdir(target):
        raise UsageError(f"cannot write {path}: it is a folder")
    for other in inputs:
        if other is not None and str(other) != "-" and same_file(target, other):
            raise UsageError(f"cannot write {path}: it is the input {other}; pick another output name")


class TemporaryTarget:
    """A temporary name beside ``target``; :meth:`commit` renames it onto the target.

    For a file the name is reserved but left free for the writer to create; for a folder
    (``folder=True``) the empty folder is made. ``suffix`` keeps an extension on the name
    for writers that choose a format by it.
    """

    def __init__(self, target: str | os.PathLike, folder: bool = False, suffix: str = ""):
        self.target = Path(target)
        self.folder = folder
        fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=f".partial{suffix}", dir=self.target.parent)
        os.close(fd)
        os.unlink(name)
        self.path = Path(name)
        if folder:
            self.path.mkdir()

    def commit(self) -> None:
        """Rename onto the target; a target folder must be empty (the caller checked)."""
        if self.folder and self.target.is_dir():
            self.target.rmdir()
        os.replace(self.path, self.target)

    def discard(self) -> None:
        """Remove the temporary file or folder, if it is there."""
        if self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds.

    On any exception the temporary file (or folder) is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = TemporaryTarget(target, suffix=suffix)
    try:
        yield temporary.path
        temporary.commit()
    except BaseException:
        temporary.discard()
        raise

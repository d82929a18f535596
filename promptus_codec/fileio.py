"""Write output files atomically: to a temporary name beside the target, renamed on success."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds.

    On any exception the temporary file (or folder) is removed and ``target`` is untouched.
    ``suffix`` keeps an extension on the temporary name for writers that choose a format by it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(fd)
    os.unlink(name)  # the writer creates it (a file or a folder)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise

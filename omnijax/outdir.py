"""Output directories written whole or not at all.

``with atomic_dir(out, overwrite) as tmp:`` writes into a sibling temporary directory and moves it
into place only when the block succeeds, so a failure or a kill never leaves a half-written export
or checkpoint at ``out``. An existing non-empty ``out`` is refused unless ``overwrite``. The directory gets the
modes ``mkdir`` gives under the process's umask (0755 under the usual 022), as any folder the user makes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile


class OutputExistsError(FileExistsError):
    pass


def check_writable(out: str, overwrite: bool) -> None:
    if os.path.isfile(out):
        raise OutputExistsError(f"output {out} is an existing file; choose a directory path")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise OutputExistsError(f"output directory {out} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_dir(out: str, overwrite: bool = False):
    check_writable(out, overwrite)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.normpath(out))}.partial-{secrets.token_hex(6)}")
    os.mkdir(tmp)  # not tempfile.mkdtemp: its 0700 would become the output's mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.isdir(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.normpath(out))}.old-", dir=parent)
        os.rmdir(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)

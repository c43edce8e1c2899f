"""Damaged input files, and how the command-line tools print what the user can fix.

``DamagedFileError(path, what, fix)``: a file that is there but does not read -- truncated, of the wrong
format, failing its checksum -- named with what is wrong and what to do, in one line. ``data_pipelines``
(shards, media) and ``omnijax`` (safetensors) raise it alike; it is a ``ValueError``.

``report(error)``: how every CLI (``omnijax.train``, ``omnijax.recipe``, ``omnijax.tools.generate``,
``omnijax.hf.convert``, ``omnijax.evaluate``, ``omnijax.compile``, ``data_pipelines.build``) ends on a user
error: ``error: <message>`` as one line on stderr, and exit status 2. With ``OMNIJAX_DEBUG=1`` in the
environment the error is raised instead, traceback included.
"""

from __future__ import annotations

import os
import sys

DEBUG_ENV = "OMNIJAX_DEBUG"


class DamagedFileError(ValueError):
    """``path`` cannot be read: ``what`` is wrong with it (truncated, wrong format, hash mismatch), ``fix`` says
    what to do."""

    def __init__(self, path: str, what: str, fix: str):
        super().__init__(f"{path}: {one_line(what)}; {fix}")
        self.path, self.what, self.fix = path, what, fix

    def __reduce__(self):  # pickled across Grain's worker processes with its three fields
        return type(self), (self.path, self.what, self.fix)


def one_line(text) -> str:
    """``text`` with its line breaks and runs of spaces as single spaces."""
    return " ".join(str(text).split())


def debug() -> bool:
    """Whether ``OMNIJAX_DEBUG`` asks for tracebacks (set, and not ``0``)."""
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def report(error: BaseException, status: int = 2, message: str | None = None) -> int:
    """``error: <message>`` (default: the error's own) on stderr and ``status`` to exit with; raises ``error``
    instead under ``OMNIJAX_DEBUG=1``."""
    if debug():
        raise error
    print(f"error: {error if message is None else message}", file=sys.stderr)
    return status

"""API keys: never on a command line, never in a log.

A key given as an argument is visible to every local user (``ps``, ``/proc/PID/cmdline``) and
kept in shell histories, so the command-line tools take a key from the environment
(``$BP_TILED_API_KEY``) or from a file (``--api-key-file PATH``, readable by its owner only), and a
``--api-key VALUE`` argument is refused with the way to do it instead. A server that makes up its
key writes it to a key file (mode 0600) and prints the file's path, not the key.
"""
from __future__ import annotations

import argparse
import os
import stat
import time
from pathlib import Path

#: the environment variable every tool reads the Tiled API key from
ENV = "BP_TILED_API_KEY"
#: the name of the key file a server home holds
KEY_FILE = "api_key"

_REFUSAL = ("--api-key takes no key on the command line (other users see it in ps, and shells keep it): "
            f"export {ENV}=... or give --api-key-file PATH (a file readable only by you)")


class _RefuseSecret(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(2, f"{parser.prog}: error: {_REFUSAL}\n")


def add_key_args(parser: argparse.ArgumentParser, what: str = "the Tiled API key") -> None:
    """``--api-key-file PATH`` (default: ``$BP_TILED_API_KEY``), and ``--api-key`` refused in one line."""
    parser.add_argument("--api-key-file", default=None, metavar="PATH",
                        help=f"file holding {what} (default: ${ENV})")
    parser.add_argument("--api-key", nargs="?", action=_RefuseSecret, help=argparse.SUPPRESS)


def read_key_file(path) -> str:
    """The key in ``path`` (surrounding whitespace stripped); one-line errors for a missing or empty file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no API key file {p}: give the file a server wrote (its home's {KEY_FILE}) "
                                f"or set ${ENV}")
    key = p.read_text().strip()
    if not key:
        raise ValueError(f"the API key file {p} is empty")
    return key


def resolve_key(key_file=None, wait_s: float = 0.0) -> str | None:
    """The key from ``key_file`` if given, else from ``$BP_TILED_API_KEY``, else None.

    ``wait_s``: how long a missing ``key_file`` is waited for (a server started a moment ago
    writes its keys once it is up)."""
    if key_file:
        deadline = time.monotonic() + max(0.0, float(wait_s))
        # a file being written is empty for a moment: wait for its content too
        while not (Path(key_file).is_file() and Path(key_file).stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.25)
        return read_key_file(key_file)
    return os.environ.get(ENV) or None


def write_key_file(path, key: str) -> Path:
    """Write ``key`` to ``path``, readable and writable by its owner only (0600); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)    # an older file keeps its mode through O_CREAT
    os.replace(tmp, p)                            # whole or absent: a reader never sees it half written
    return p

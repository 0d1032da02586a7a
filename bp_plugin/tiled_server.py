"""The embedded Tiled server: the default store of runs and results, started by our own code.

``start_tiled_server(directory)`` runs ``tiled serve catalog`` in a child process on 127.0.0.1 with
an API key (required for reading and writing), a persistent SQLite catalog in ``directory``, a
writable data folder, and read access to the folders that hold detector files (so Tiled serves
frames from the detectors' HDF5 files as external data; raw frames never travel through Tiled's HTTP
write path, which tops out at about 20 frames/s here).

Why a child process and not a thread of the caller: the detector writes HDF5 in SWMR mode in the
acquiring process while the server reads the same files; two HDF5 handles on one file in one
process do not mix SWMR-write and read modes, and the server would compete with the RunEngine and
the reconstruction for the GIL. The child gets ``TILED_HDF5_SWMR_DEFAULT=1`` (read files being
written) and ``HDF5_PLUGIN_PATH`` (the bitshuffle-LZ4 filter of our detector files).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .keys import ENV, KEY_FILE, write_key_file


class TiledServerError(RuntimeError):
    """The Tiled server could not be started or reached; the message says why and what to do."""


@dataclass
class TiledServer:
    """A running server: its URL, API key, directory and child process (None if not ours)."""

    url: str
    api_key: str = field(repr=False)          # never in a log line or a traceback's locals repr
    directory: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    log_path: Path | None = None
    #: the file holding the key (mode 0600, in the server's home), for clients and for the user
    key_file: Path | None = None
    #: a read-only key (browsing: the viewer, a user's client) and its file; None in single-user
    #: mode, where the one key has every scope
    read_key: str | None = field(default=None, repr=False)
    read_key_file: Path | None = None

    def client(self):
        """A Tiled client authenticated with the API key."""
        return connect(self.url, self.api_key)

    def stop(self, timeout: float = 10.0):
        """Stop the child process (no-op for a server we did not start)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM when the process that started it dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _tiled_command() -> list[str]:
    exe = shutil.which("tiled", path=os.path.dirname(sys.executable)) or shutil.which("tiled")
    return [exe] if exe else [sys.executable, "-m", "tiled"]


def check_catalog_uri(uri: str) -> str:
    """A catalog database URI as Tiled takes it (SQLAlchemy, async driver), with no password in it:
    the server's command line and configuration file are readable by other local users, so the
    password comes from ``PGPASSWORD`` or ``~/.pgpass`` (asyncpg reads both)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("postgresql+asyncpg", "sqlite+aiosqlite", "sqlite"):
        raise TiledServerError(f"catalog {uri!r}: give postgresql+asyncpg://USER@HOST:PORT/DATABASE "
                               "(or a sqlite:/// file)")
    if parts.password:
        raise TiledServerError("the catalog URI holds a password: leave it out and put it in PGPASSWORD or "
                               "~/.pgpass (command lines and config files are readable by other local users)")
    return uri


def start_tiled_server(directory, *, readable=(), port: int | None = None, api_key: str | None = None,
                       catalog: str | None = None, timeout: float = 90.0) -> TiledServer:
    """Start a Tiled server on 127.0.0.1 and wait until it answers.

    Args:
        directory: server home: ``catalog.db`` (created on first use, kept across restarts),
            ``data/`` (arrays written through Tiled), ``tables.duckdb`` (event tables) and ``server.log``.
        readable: extra directories the server may read (detector files); ``directory`` is always
            readable.
        port: TCP port (default: a free one).
        api_key: a key of the user's choosing (or ``$BP_TILED_API_KEY``): Tiled's single-user mode,
            that one key with every scope, given to the child in its environment (never on its
            command line, which every local user can read). Without one (the default), scoped
            keys (:mod:`bp_plugin.tiled_auth`): the server issues a writer key
            (:attr:`TiledServer.api_key`, file ``directory/api_key``) and a read-only key
            (:attr:`TiledServer.read_key`, file ``directory/read_key``), both files mode 0600 and
            reused at the next start.
        catalog: the catalog database, a facility's PostgreSQL
            (``postgresql+asyncpg://tiled@db.example:5432/tiled``; password from ``PGPASSWORD`` or
            ``~/.pgpass``, never in the URI: :func:`check_catalog_uri`), created there on first
            use; default: ``directory/catalog.db`` (SQLite). Arrays and event tables stay in
            ``directory`` either way.
        timeout: seconds to wait for the server to answer.

    Returns:
        :class:`TiledServer` (use it as a context manager, or call ``stop()``).
    """
    import hdf5plugin

    from .tiled_auth import READ_KEY_FILE, auth_environment, issue_keys, write_config

    directory = Path(directory).resolve()
    catalog = check_catalog_uri(catalog) if catalog else None
    (directory / "data").mkdir(parents=True, exist_ok=True)
    key_file = directory / KEY_FILE
    api_key = api_key or os.environ.get(ENV)
    # a key the user chose keeps Tiled's single-user mode (one key, every scope); otherwise the
    # server issues scoped keys: a writer and a read-only one (bp_plugin.tiled_auth)
    scoped = api_key is None
    for r in readable:
        Path(r).mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = dict(os.environ, TILED_HDF5_SWMR_DEFAULT="1", HDF5_PLUGIN_PATH=hdf5plugin.PLUGIN_PATH,
               HDF5_USE_FILE_LOCKING="FALSE")
    env.pop("TILED_SINGLE_USER_API_KEY", None)
    if scoped:
        cmd = [*_tiled_command(), "serve", "config", str(write_config(directory, readable, catalog)),
               "--host", "127.0.0.1", "--port", str(port)]
        env.update(auth_environment(directory))
    else:
        write_key_file(key_file, api_key)
        db = catalog or str(directory / "catalog.db")
        # arrays go to files under data/, tables (the runs' event streams) to an embedded DuckDB
        cmd = [*_tiled_command(), "serve", "catalog", db, "--write", str(directory / "data"),
               "--write", f"duckdb:///{directory / 'tables.duckdb'}",
               "--read", str(directory), "--host", "127.0.0.1", "--port", str(port)]
        for r in readable:
            cmd += ["--read", str(Path(r).resolve())]
        if catalog or not Path(db).exists():
            cmd.append("--init")                   # creates the catalog's tables where they are not yet
        env["TILED_SINGLE_USER_API_KEY"] = api_key
    log_path = directory / "server.log"
    log = open(log_path, "ab")
    # own session: a Ctrl-C at the terminal reaches us first, so we can drain writers before stopping it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
    log.close()
    url = f"http://127.0.0.1:{port}"
    server = TiledServer(url=url, api_key=api_key or "", directory=directory, process=proc, log_path=log_path,
                         key_file=key_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise TiledServerError(f"the Tiled server exited with code {proc.returncode} while starting "
                                   f"(command: {' '.join(cmd[:4])} ...). Its log ({log_path}) ends with:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    else:
        server.stop()
        raise TiledServerError(f"the Tiled server did not answer at {url} within {timeout:.0f} s; see {log_path}")
    if scoped:
        try:
            server.api_key, server.read_key = issue_keys(url, directory)
        except Exception as exc:        # an HTTP error, a home whose files cannot be written
            server.stop()
            raise TiledServerError(f"the Tiled server at {url} started but could not issue its API keys "
                                   f"({type(exc).__name__}: {exc}); see {log_path}") from None
        server.read_key_file = directory / READ_KEY_FILE
    return server


def open_run(url: str, api_key: str | None, uid: str, wait_s: float = 0.0):
    """Run ``uid`` of the Tiled server at ``url``; one clear error when it is not there
    (``wait_s``: as :func:`connect`)."""
    client = connect(url, api_key, wait_s=wait_s)
    if uid not in client:
        raise ValueError(f"no run {uid!r} in the Tiled server at {url}; list the runs with a Tiled client")
    return client[uid]


def connect(url: str, api_key: str | None, wait_s: float = 0.0):
    """A Tiled client, with clear errors for an unreachable server or a rejected key.

    ``wait_s``: how long an unreachable server is tried again (a server started a moment ago, as a
    script does); 0, the default, fails at once."""
    import httpx
    from tiled.client import from_uri

    # fail fast: the client itself retries an unreachable server for about 25 s, and with Tiled's
    # own authentication it would ask a terminal for a password when the key is refused
    req = urllib.request.Request(f"{url.rstrip('/')}/api/v1/metadata/",
                                 headers={"Authorization": f"Apikey {api_key}"} if api_key else {})
    deadline = time.monotonic() + max(0.0, float(wait_s))
    while True:
        try:
            urllib.request.urlopen(req, timeout=5).close()
            break
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 and time.monotonic() < deadline:
                time.sleep(0.5)                    # a server error while it starts: try again
                continue
            if exc.code in (401, 403):
                raise TiledServerError(f"the Tiled server at {url} requires an API key and refused "
                                       f"{'the one given' if api_key else 'none'} (HTTP {exc.code}); pass the key "
                                       "the server issued ($BP_TILED_API_KEY or --api-key-file; the embedded "
                                       "server's are its home's api_key and read_key files)") from None
            break                                  # it answers: the client below says what is wrong
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise TiledServerError(f"cannot reach the Tiled server at {url} ({exc}); check the URL, or start one "
                                   "with `bp-plugin serve`") from None
    try:
        return from_uri(url, api_key=api_key)
    except httpx.ConnectError as exc:
        raise TiledServerError(f"cannot reach the Tiled server at {url} ({exc}); check the URL, or start one "
                               "with `bp-plugin serve`") from None
    except RuntimeError as exc:
        if "API key" in str(exc):   # tiled's own message when the key is missing or wrong
            raise TiledServerError(f"the Tiled server at {url} requires an API key and refused "
                                   f"{'the one given' if api_key else 'none'}; pass the key the server was "
                                   "started with ($BP_TILED_API_KEY or --api-key-file)") from None
        raise
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        if code in (401, 403):
            raise TiledServerError(f"the Tiled server at {url} refused the API key (HTTP {code}); pass the key "
                                   "the server was started with ($BP_TILED_API_KEY or --api-key-file; "
                                   "bp-plugin serve writes it to its home's api_key file)") from None
        raise TiledServerError(f"the Tiled server at {url} answered HTTP {code}: {exc}") from None

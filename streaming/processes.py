"""The reconstructor as a child process, and helpers to watch a published reconstruction.

The demo and the tests start the service exactly as a user does, through ``bp-plugin
reconstructor``, in its own process: the RunEngine, the simulated detector and the Tiled writer keep
one core, the reconstruction the other, and the reconstructor can read detector files that the
acquiring process still holds open for SWMR writing (two HDF5 handles on one file in one process
cannot mix those modes).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bp_plugin.tiled_server import die_with_parent

from .publish import ROOT


def free_tcp_address(host: str = "127.0.0.1") -> str:
    """``tcp://host:port`` with the port and the next one (the receipts') free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port >= 65534:
                continue
            with socket.socket() as s2:
                try:
                    s2.bind((host, port + 1))
                except OSError:
                    continue
            return f"tcp://{host}:{port}"
    raise RuntimeError(f"no two neighbouring free TCP ports found on {host}")


@dataclass
class ReconstructorProcess:
    """A running ``bp-plugin reconstructor`` child: its address, process and log file."""

    address: str
    process: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (a clean stop: checkpoint, then exit), then kill after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (tests of the restart path)."""
        self.process.kill()
        self.process.wait()

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


def start_reconstructor(workdir, *, address: str | None = None, tiled_url: str | None = None,
                        api_key: str | None = None, extra_args=(), max_runs: int | None = None,
                        ready_timeout: float = 60.0, launcher=()) -> ReconstructorProcess:
    """Start ``bp-plugin reconstructor`` and wait until it listens (it writes ``ready`` in ``workdir``).

    ``launcher``: a command in front, e.g. ``("mpiexec", "-n", "2")`` for an engine on two MPI ranks.

    The API key goes through the environment, not the command line (other users can read argv).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    address = address or free_tcp_address()
    ready = workdir / "ready"
    ready.unlink(missing_ok=True)
    cmd = [*map(str, launcher), sys.executable, "-m", "bp_plugin.cli", "reconstructor", "--listen", address, "--workdir", str(workdir),
           *extra_args]
    if tiled_url:
        cmd += ["--tiled-url", tiled_url]
    if max_runs:
        cmd += ["--max-runs", str(max_runs)]
    env = dict(os.environ, **({"BP_TILED_API_KEY": api_key} if api_key else {}))
    log_path = workdir / "reconstructor.log"
    log = open(log_path, "ab")
    # own session: a Ctrl-C at the terminal reaches the demo first, which ends the scan (its stop
    # message closes the stream) before stopping us; and we die with the process that started us
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
    log.close()
    rp = ReconstructorProcess(address, proc, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return rp
        if proc.poll() is not None:
            raise RuntimeError(f"the reconstructor exited with code {proc.returncode} while starting; "
                               f"its log ({log_path}) ends with:\n{rp.log_tail()}")
        time.sleep(0.1)
    rp.kill()
    raise RuntimeError(f"the reconstructor did not start listening within {ready_timeout:.0f} s; see {log_path}")


def wait_for_state(client, raw_uid: str, states=("final", "failed"), timeout: float = 600.0, on_status=None,
                   process: ReconstructorProcess | None = None, root: str = ROOT) -> dict:
    """Poll ``<root>/<raw_uid>`` in Tiled (``reconstructions``, or ``dfxrm`` for DF-XRM maps) until
    its status state is one of ``states``;
    ``on_status(status)`` after each poll. Returns the container's metadata. With ``process``, a
    reconstructor that exits first raises at once (with its log), instead of waiting for nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"the reconstructor exited (code {process.process.returncode}) before run "
                               f"{raw_uid[:8]} was {' or '.join(states)}; its log ends with:\n{process.log_tail()}")
        try:
            node = client[root][raw_uid]
            md = dict(node.metadata)
        except KeyError:
            md = {}
        st = md.get("status") or {}
        if on_status and st:
            on_status(st)
        if st.get("state") in states:
            return md
        time.sleep(0.5)
    raise TimeoutError(f"reconstruction of run {raw_uid[:8]} did not reach {states} within {timeout:.0f} s")

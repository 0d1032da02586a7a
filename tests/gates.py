"""Test helpers that make "seen while the scan runs" a fact of the test, not a race with the clock.

A :class:`FrameGate` holds a frame stream at its n-th frame until a watcher says it has seen what it
waits for: a live result of a partial run is then certain to exist while frames are still to come,
however slow the machine. A :class:`Watcher` polls Tiled in a thread and keeps every error it met, so
a failure says why nothing was seen instead of dying silently in its thread.
"""
from __future__ import annotations

import threading
import time


class FrameGate:
    """Holds the stream at frame ``at`` (1-based count of frames taken) until :meth:`open` or ``timeout_s``."""

    def __init__(self, at: int, timeout_s: float = 300.0):
        self.at, self.timeout_s = int(at), float(timeout_s)
        self.count = 0
        self.opened = threading.Event()
        self.held_s: float | None = None

    def passing(self) -> None:
        """Call once per frame, before it is sent."""
        self.count += 1
        if self.count == self.at:
            t0 = time.monotonic()
            self.opened.wait(self.timeout_s)
            self.held_s = time.monotonic() - t0

    def open(self) -> None:
        self.opened.set()


class Watcher(threading.Thread):
    """Calls ``look()`` every ``period_s`` until :meth:`stop`; ``look`` returns a value to keep or None.

    Exceptions of ``look`` (a node not there yet, a read racing a write) are kept in ``errors`` and
    the watching goes on, as a viewer's would.
    """

    def __init__(self, look, period_s: float = 0.2):
        super().__init__(daemon=True)
        self.look, self.period_s = look, period_s
        self.seen: list = []
        self.errors: list[str] = []
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                v = self.look()
                if v is not None:
                    self.seen.append(v)
            except Exception as exc:   # noqa: BLE001 - kept and reported by the test
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop_evt.wait(self.period_s)

    def stop(self, join_s: float = 10.0) -> None:
        self._stop_evt.set()
        self.join(join_s)

    def report(self) -> str:
        errs = sorted(set(e[:200] for e in self.errors))
        return f"seen {len(self.seen)} times; errors met: {errs[-5:] if errs else 'none'}"

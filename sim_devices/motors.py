"""Simulated motors: ophyd positioners with limits, units, readback error and optional speed.

A :class:`SimAxis` is an ``ophyd`` ``SoftPositioner`` (so a RunEngine, ``bps.mv``, the best-effort
callback and the queue server treat it like any motor) with what the stock one lacks for a
realistic beamline:

- **limits** checked before motion (``LimitError`` names the axis, the target and the limits);
- **velocity** (units/s): ``None`` moves instantly (tests, the demo); a number makes a move last
  ``distance / velocity`` seconds with readback updates along the way, as a real stage would;
- **readback error**: the readback differs from the target by a Gaussian error of standard
  deviation ``readback_jitter``, repeatable for a given target (a piezo's calibration error: coming
  back to a raster point lands on the same spot, so every rocking angle of a position shares one
  true position). The detector computes its frames from the *readback*, so the recorded positions
  are the true ones, as on a real instrument.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from ophyd.positioner import SoftPositioner
from ophyd.utils import LimitError


class SimAxis(SoftPositioner):
    """A simulated motor axis.

    Args:
        name: ophyd name (the data key of its readback in the documents).
        egu: engineering units, e.g. "mm", "um", "deg".
        limits: (low, high) soft limits in ``egu``.
        init_pos: starting position in ``egu``.
        velocity: speed in ``egu``/s, or None for instantaneous moves.
        readback_jitter: standard deviation of the readback error in ``egu`` (0: exact).
        seed: seed of the readback-error generator.
    """

    def __init__(self, *, name: str, egu: str, limits: tuple[float, float], init_pos: float = 0.0,
                 velocity: float | None = None, readback_jitter: float = 0.0, seed: int = 0, **kwargs):
        self.velocity = velocity
        self.readback_jitter = float(readback_jitter)
        self._seed = int(seed)
        self._stop_flag = threading.Event()
        super().__init__(name=name, egu=egu, limits=limits, source=f"SIM:{name}", init_pos=init_pos, **kwargs)

    def check_value(self, pos):
        """Refuse a target outside the limits (before anything moves)."""
        try:
            pos = float(pos)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: target {pos!r} is not a number") from None
        if not np.isfinite(pos):
            raise ValueError(f"{self.name}: target {pos} is not finite")
        low, high = self.limits
        if not (low <= pos <= high):
            raise LimitError(f"{self.name}: target {pos:g} {self.egu} is outside the limits "
                             f"[{low:g}, {high:g}] {self.egu}; choose a target inside them or change the limits")

    def _readback(self, target: float) -> float:
        if self.readback_jitter:
            rng = np.random.default_rng([self._seed, int(round(float(target) * 1e6)) & (2**63 - 1)])
            return float(target + rng.normal(scale=self.readback_jitter))
        return float(target)

    def _setup_move(self, position, status):
        self._run_subs(sub_type=self.SUB_START, timestamp=time.time())
        self._started_moving = True
        if self.velocity is None or self.position is None:
            self._moving = False
            self._set_position(self._readback(position))
            self._done_moving()
            return
        self._moving = True
        self._stop_flag.clear()
        threading.Thread(target=self._travel, args=(float(position),), daemon=True,
                         name=f"{self.name}-move").start()

    def _travel(self, target: float):
        start = float(self.position)
        duration = abs(target - start) / float(self.velocity)
        t0 = time.monotonic()
        while True:
            frac = 1.0 if duration == 0 else min(1.0, (time.monotonic() - t0) / duration)
            if self._stop_flag.is_set():
                self._moving = False
                self._done_moving(success=False)
                return
            if frac >= 1.0:
                break
            self._set_position(start + frac * (target - start))
            time.sleep(min(0.02, duration / 10))
        self._moving = False
        self._set_position(self._readback(target))
        self._done_moving()

    def stop(self, *, success: bool = False):
        self._stop_flag.set()
        super().stop(success=success)

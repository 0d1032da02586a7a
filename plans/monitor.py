"""Live monitoring of a Bragg ptychography scan: progress, rocking curve, intensity map.

:class:`LiveScanMonitor` is a bluesky callback. It reads only small numbers from each event (the
detector's total counts and the point's indices, never the frames), prints a progress bar (points
done / total, rate, time left) and writes a PNG (rocking curve summed over the positions measured so
far, and the integrated-intensity map over the raster) at most every ``png_every_s`` seconds and at
the end. Subscribe it through :func:`buffered` so the RunEngine never waits for it: documents go
through a queue to a worker thread (bluesky's ``BufferingWrapper``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from bluesky.callbacks.core import CallbackBase

from bp_plugin.scan_document import run_scan


def buffered(callback):
    """``callback`` behind a queue and a worker thread; call ``.shutdown()`` to drain it."""
    from bluesky.callbacks.buffer import BufferingWrapper

    return BufferingWrapper(callback)


class LiveScanMonitor(CallbackBase):
    """Progress bar and live figures for runs of ``bragg_ptycho_scan`` (other runs are ignored).

    Args:
        png_dir: where ``scan_<uid8>.png`` goes (None: no figures).
        png_every_s: minimum seconds between two figure updates.
        progress: show the terminal progress bar.
    """

    def __init__(self, png_dir=None, *, png_every_s: float = 5.0, progress: bool = True):
        super().__init__()
        self.png_dir = Path(png_dir) if png_dir else None
        self.png_every_s = png_every_s
        self.progress = progress
        self.scan = None          # ScanDocument of the current (or last) run
        self.active = False
        self.last_png: Path | None = None

    def start(self, doc):
        self.active = "bp_scan" in doc and "bp_geometry" in doc
        if not self.active:
            return
        _, self.scan = run_scan(doc)
        s = self.scan
        self.uid = doc["uid"]
        self.total_key = f"{s.detector}_total"
        self.n_a, self.n_p = s.n_angles, s.n_positions
        self.counts = np.full((self.n_a, self.n_p), np.nan)
        self.eta = np.asarray(s.eta_setpoints_deg, float)
        self.done = 0
        self.t0 = time.monotonic()
        self._last_png_t = 0.0
        self.bar = None
        if self.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=s.n_points, desc=f"scan {self.uid[:8]}", unit="frame")

    def event(self, doc):
        if not self.active:
            return
        d = doc["data"]
        if self.total_key not in d:
            return
        ia, ip = int(d["bp_index_angle"]), int(d["bp_index_pos"])
        self.counts[ia, ip] = float(d[self.total_key])
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        now = time.monotonic()
        if self.png_dir and now - self._last_png_t >= self.png_every_s:
            self._last_png_t = now
            self.write_png()

    def stop(self, doc):
        if not self.active:
            return
        if self.bar is not None:
            self.bar.close()
        if self.png_dir:
            self.write_png(final=True, exit_status=doc.get("exit_status"))
        self.active = False

    # --- derived quantities ---------------------------------------------------------------------
    def rocking_curve(self) -> np.ndarray:
        """Mean total counts per angle over the positions measured so far, ``(n_angles,)`` (NaN: none)."""
        seen = np.isfinite(self.counts)
        total = np.where(seen, self.counts, 0.0).sum(1)
        n = seen.sum(1)
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)

    def intensity_map(self) -> np.ndarray:
        """Total counts summed over the angles measured so far, ``(ny, nx)`` in scan position order."""
        ny, nx = self.scan.raster_shape
        m = np.nansum(self.counts, axis=0)
        m[~np.isfinite(self.counts).any(0)] = np.nan
        m = m.reshape(ny, nx)
        if self.scan.snake:
            m[1::2] = m[1::2, ::-1]
        return m

    def time_left_s(self) -> float:
        rate = self.done / max(time.monotonic() - self.t0, 1e-9)
        return (self.scan.n_points - self.done) / rate if rate else float("inf")

    def write_png(self, final: bool = False, exit_status: str | None = None) -> Path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.png_dir.mkdir(parents=True, exist_ok=True)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot(self.eta, self.rocking_curve(), "o-")
        a1.set_xlabel(f"{self.scan.rocking_motor} (deg)")
        a1.set_ylabel("mean total counts per frame")
        a1.set_title("rocking curve")
        im = a2.imshow(self.intensity_map(), origin="lower", cmap="viridis")
        fig.colorbar(im, ax=a2, label="integrated counts")
        a2.set_xlabel(f"{self.scan.x_motor} index")
        a2.set_ylabel(f"{self.scan.y_motor} index")
        a2.set_title("integrated intensity")
        state = f"final ({exit_status})" if final else f"live, about {self.time_left_s():.0f} s left"
        fig.suptitle(f"run {self.uid[:8]}: {self.done} / {self.scan.n_points} frames, {state}")
        fig.tight_layout()
        path = self.png_dir / f"scan_{self.uid[:8]}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        self.last_png = path
        return path

"""Live DF-XRM topo-tomography: each omega's rocking summed as it arrives, the projections in Tiled, the shape at the end.

A topo-tomography scan (:func:`plans.dfxrm_topo.topo_scan`) is a phi rocking at each omega,
frames in acquisition order, ``projection_points`` per omega: frame ``k`` adds into projection
``k // projection_points``. A projection is published once its rocking is complete (a partial
one would be dim: NaN until then), so the stack ``(n_projections, rows, cols)`` in Tiled fills
projection by projection while the scan runs. The filtered back-projection needs every angle: the
volume and the shape (:func:`bp_plugin.dfxrm.topotomo.reconstruct_shape`, the batch path's own
function on the same sums) are computed and published when the run ends.

No checkpoint: a restarted service reads every frame back from the camera files at the stop, as
for a layer scan.
"""
from __future__ import annotations

import json
import time

import numpy as np

from bp_plugin.dfxrm.topotomo import TopoGeometry, integrated_projections, reconstruct_shape, shape_overlap

from .dfxrm_live import DfxrmLive, DfxrmRun


class DfxrmTopoRun(DfxrmRun):
    """One topo-tomography scan being received (``scan.kind = "topotomo"``); see the module docstring."""

    volume_kind = "topotomo"
    MAX_BYTES = 4 << 30                 # the projections (float32)

    def __init__(self, header: dict, folder, *, xp=np):
        super().__init__(header, folder, xp=xp)
        s = self.scan
        self.points = int(s["projection_points"])
        self.omegas_deg = np.asarray(s["omegas_deg"], float)
        n = len(self.omegas_deg)
        if self.points * n != self.n_frames_expected:
            raise ValueError(f"topo-tomography scan of {n} projections x {self.points} frames, but "
                             f"{self.n_frames_expected} frames announced")
        nbytes = n * self.shape[0] * self.shape[1] * 4
        if nbytes > self.MAX_BYTES:
            raise ValueError(f"{n} projections of {self.shape} need {nbytes / 2**30:.1f} GiB; bin the "
                             f"camera or take fewer omegas (under {self.MAX_BYTES / 2**30:.0f} GiB)")
        self.topo_geometry = TopoGeometry(tth_deg=float(s["tth_deg"]), pixel_size_m=self.geometry.pixel_size_m,
                                          frame_shape=self.shape)
        # the rockings being measured (float64: exact for any length); a complete one becomes its
        # projection, written once, and its sums go
        self.sums: dict[int, np.ndarray] = {}
        self.counts = np.zeros(n, int)
        self.projections = np.full((n, *self.shape), np.nan, np.float32)
        self._complete = np.zeros(n, bool)

    def checkpoint(self) -> None:
        """None for topo-tomography scans (see the module docstring)."""

    def _add(self, k: int, frame: np.ndarray, angles: np.ndarray) -> bool:
        j = k // self.points
        with self.lock:
            if self.seen[k]:
                return False
            acc = self.sums.get(j)
            if acc is None:
                acc = self.sums[j] = np.zeros(self.shape)
            acc += frame
            self.counts[j] += 1
            self.seen[k] = True
            if self.counts[j] >= self.points:       # one frame's worth of work, once per projection
                self.projections[j] = integrated_projections(acc[None], [self.counts[j]], self.background)[0]
                self._complete[j] = True
                del self.sums[j]
            return True

    def finished(self) -> list[int]:
        """The projections whose rocking curve is complete."""
        with self.lock:
            return [int(j) for j in np.flatnonzero(self._complete)]

    def maps(self) -> dict:
        """``projections`` ``(n_projections, rows, cols)``: the complete ones, NaN for the rest.
        A complete projection is never written again, so the copy is taken outside the lock (the
        receiver goes on placing frames); a projection completed meanwhile is left NaN this time."""
        with self.lock:
            done = self._complete.copy()
        out = self.projections.copy()
        out[~done] = np.nan
        return {"projections": out}

    def metadata(self, state: str, metrics: dict | None = None) -> dict:
        md = super().metadata(state, metrics)
        md["topotomo"] = {"omegas_deg": self.omegas_deg.tolist(), "finished": self.finished(),
                          "projection_points": self.points, "tth_deg": self.topo_geometry.tth_deg,
                          "voxel_m": [self.geometry.pixel_size_m] * 3,
                          "dims": {"projections": ["omega", "row", "col"], "volume": ["w", "b", "a"],
                                   "shape": ["w", "b", "a"]}}
        return md


def topo_truth_metrics(run: DfxrmTopoRun, shape) -> dict:
    """The shape's overlap with the simulated grain's (``shape_dice``, ``shape_volume_error``)
    when the run names a truth file holding one; ``warnings`` when it cannot be read."""
    from bp_plugin.truth import truth_from_start

    truth, _, note = truth_from_start(run.start.get("sim") or {})
    if truth is None or "shape" not in truth:
        return {"warnings": [note]} if note else {}
    if truth["shape"].shape != shape.shape:
        return {"warnings": [f"the truth's shape grid {truth['shape'].shape} is not the volume's {shape.shape}"]}
    m = shape_overlap(shape, truth["shape"])
    return {"shape_dice": m["dice"], "shape_volume_error": m["volume_error"]}


class DfxrmTopoLive(DfxrmLive):
    """The worker's side of a topo-tomography scan: the projections live, the shape at the end."""

    def complete(self, pub, tick=None) -> dict:
        """After the stop message and the recovery: the projections, the volume and the shape
        written (``maps.h5``, figure, ``metrics.json``) and published. Too few complete
        projections for a shape: the projections alone, and the reason in ``metrics.warnings``."""
        from bp_plugin.dfxrm.output import plot_topo, write_maps

        run = self.run
        t0 = time.time()
        arrays = run.maps()
        metrics: dict = {"frames": run.n_measured, "projections_complete": len(run.finished())}
        try:
            r = reconstruct_shape(arrays["projections"], run.omegas_deg, run.topo_geometry)
        except ValueError as exc:
            metrics["warnings"] = [f"no shape: {exc}"]
            r = None
        if r is not None:
            arrays.update(volume=r["volume"], shape=r["shape"])
            metrics.update(grain_volume_m3=r["grain_volume_m3"], threshold=r["threshold"],
                           **topo_truth_metrics(run, r["shape"]))
            if self.figures:
                plot_topo(run.folder / "maps.png", {**r, "projections": arrays["projections"]},
                          title=f"DF-XRM topo-tomography {run.uid[:8]}: {r['grain_volume_m3'] * 1e18:.3g} um^3 "
                          f"from {r['n_projections']} projections")
        last = run.t_last_frame or time.time()
        write_maps(run.folder / "maps.h5", arrays, geometry=run.geometry.to_dict(), scan=run.scan, metrics=metrics,
                   source=f"stream:{run.uid}")
        metrics["compute_final_s"] = time.time() - t0
        metrics["latency_last_frame_to_result_s"] = time.time() - last
        status = run.status("final")
        if pub:
            pub.close(run.metadata("final", metrics), arrays)
        metrics["latency_last_frame_to_published_s"] = time.time() - last
        (run.folder / "metrics.json").write_text(json.dumps({**metrics, "counters": status}, indent=2, default=float))
        return {**status, "metrics": metrics, "result": str(run.folder / "maps.h5")}

"""Live DF-XRM maps in the reconstructor service: exact running moments as frames arrive.

A DF-XRM run needs no iterative reconstruction: every frame is folded into the per-pixel running
sums (:class:`bp_plugin.dfxrm.MomentAccumulator`) the moment it arrives, in the receiver thread,
and the maps (tilts, mosaicity, strain, Nye components) are recomputed from the sums and published
about once a second. At the stop message, frames the service never got are read back from the
camera's HDF5 files (the stop message's ``sources``), the final maps are written
(``maps.h5``, ``maps.png``, ``metrics.json`` against the ground truth of a simulated run) and
published as ``final``. Counters: ``received = placed + duplicates + rejected``.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from bp_plugin.dfxrm.geometry import DfxrmGeometry
from bp_plugin.dfxrm.maps import MAP_UNITS, MapOptions, compute_maps
from bp_plugin.dfxrm.moments import MomentAccumulator

log = logging.getLogger(__name__)

ROOT = "dfxrm"
PUBLICATION_VERSION = 1
DIMS = {name: ["y", "x"] for name in MAP_UNITS} | {"weak_beam": ["image", "y", "x"]}
UNITS = MAP_UNITS | {"weak_beam": "counts (background subtracted)"}
# centres of mass are the tilts / strain plus a constant: kept in maps.h5, not re-sent every second
NOT_PUBLISHED = ("com_phi", "com_chi", "com_tth")


class DfxrmRun:
    """One DF-XRM run being received: moments, counters, stop message.

    Args:
        header: the start message's header (``technique = "dfxrm"``).
        folder: the run's folder (results, the start header).
        xp: array module of the moments (NumPy or CuPy).
    """

    technique = "dfxrm"

    def __init__(self, header: dict, folder, *, xp=np):
        self.start = header
        self.uid = header["run_uid"]
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "dfxrm_start.json").write_text(json.dumps(header))
        scan = self.scan = dict(header.get("scan") or {})
        self.geometry = DfxrmGeometry.from_dict(header["geometry"])
        self.axes = tuple(scan["axes"])
        self.kind = scan.get("kind", "mosaicity")
        self.shape = tuple(int(v) for v in scan["frame_shape"])
        self.n_frames_expected = int(header["n_frames"])
        self.background = float(scan.get("background_counts", 0.0))
        self.acc = MomentAccumulator(self.shape, self.axes, scan.get("centre_deg"), background=self.background,
                                     floor=float(scan.get("noise_floor_counts", 0.0)), xp=xp)
        self.weak = (np.zeros((self.n_frames_expected, *self.shape), np.float32)
                     if self.kind == "weak_beam" else None)
        self.seen = np.zeros(max(self.n_frames_expected, 1), bool)
        self.counters = {"received": 0, "placed": 0, "duplicates": 0, "rejected": 0, "recovered": 0}
        self.stop: dict | None = None
        self.pending = ()                  # frames are placed on arrival: nothing waits
        self.t_created = time.time()
        self.t_last_frame: float | None = None
        self.lock = threading.Lock()
        self.map_options = MapOptions(resolution_deg=dict(scan.get("resolution_deg") or {}))

    # --- receiver thread ----------------------------------------------------------------------------
    def _angles(self, motors: dict) -> np.ndarray | None:
        try:
            a = np.array([float(motors[f"{ax}_deg"]) for ax in self.axes])
        except (KeyError, TypeError, ValueError):
            return None
        return a if np.all(np.isfinite(a)) else None

    def _add(self, k: int, frame: np.ndarray, angles: np.ndarray) -> None:
        with self.lock:
            if k >= len(self.seen):
                self.seen = np.concatenate([self.seen, np.zeros(k + 1 - len(self.seen), bool)])
            self.acc.add(frame, angles)
            if self.weak is not None and k < len(self.weak):
                self.weak[k] = frame.astype(np.float32) - self.background
            self.seen[k] = True

    def place(self, msg) -> None:
        """Fold one ``frame`` message into the sums (or count it as duplicate / rejected)."""
        self.counters["received"] += 1
        k = int(msg.header["frame_index"])
        angles = self._angles(msg.header.get("motors") or {})
        why = None
        if tuple(msg.array.shape) != self.shape:
            why = f"frame shape {tuple(msg.array.shape)}, the run's is {self.shape}"
        elif angles is None:
            why = f"frame without the scanned angles {[a + '_deg' for a in self.axes]} in its motors"
        elif k < len(self.seen) and self.seen[k]:
            self.counters["duplicates"] += 1
            return
        elif not np.all(np.isfinite(msg.array)) if msg.array.dtype.kind == "f" else False:
            why = "frame with NaN or infinite values"
        if why:
            self.counters["rejected"] += 1
            log.warning("run %s frame %d rejected: %s", self.uid[:8], k, why)
            return
        self._add(k, msg.array, angles)
        self.counters["placed"] += 1
        self.t_last_frame = time.time()

    def set_mask(self, mask) -> None:
        """Camera masks are applied by the camera (hot pixels read 0); nothing to do."""

    def set_stop(self, header: dict) -> None:
        self.stop = header

    # --- worker -------------------------------------------------------------------------------------
    def recover(self, sources: list[dict]) -> int:
        """Read back frames listed in the stop message's sources that never arrived.

        ``sources``: ``[{"format": "detector", "file", "dataset", "frames": [[frame_index,
        index_in_file, angle_1, ...], ...]}]``. Unreadable entries are logged and skipped.
        """
        import h5py

        n = 0
        for src in sources:
            todo = [e for e in src.get("frames", []) if 0 <= int(e[0]) and not (int(e[0]) < len(self.seen)
                                                                           and self.seen[int(e[0])])]
            if not todo:
                continue
            try:
                with h5py.File(src["file"], "r", libver="latest", swmr=True) as f:
                    ds = f[src.get("dataset", "/entry/data/data")]
                    for e in todo:
                        frame = ds[int(e[1])]
                        angles = np.asarray(e[2:2 + len(self.axes)], float)
                        if frame.shape != self.shape or len(angles) != len(self.axes):
                            log.warning("run %s: source entry %s does not fit the scan; skipped", self.uid[:8], e)
                            continue
                        self._add(int(e[0]), frame, angles)
                        n += 1
            except (OSError, KeyError, IndexError, ValueError) as exc:
                log.warning("run %s: could not recover frames from %s: %s", self.uid[:8], src.get("file"), exc)
        self.counters["recovered"] += n
        return n

    @property
    def n_measured(self) -> int:
        return int(self.seen.sum())

    def maps(self) -> dict:
        """Current maps (``compute_maps``), plus the weak-beam image stack for weak-beam series."""
        with self.lock:
            out = compute_maps(self.acc, self.geometry, self.map_options)
            if self.weak is not None:
                out["weak_beam"] = self.weak.copy()
        return out


    def status(self, state: str) -> dict:
        hi = int(np.flatnonzero(self.seen).max()) + 1 if self.seen.any() else 0
        return {"state": state, **self.counters, "frames_expected": self.n_frames_expected,
                "frames_measured": self.n_measured, "missing": int(hi - self.seen[:hi].sum()),
                "last_frame_time": self.t_last_frame, "updated": time.time()}

    def metadata(self, state: str, metrics: dict | None = None) -> dict:
        g = self.geometry.to_dict() | {"theta_bragg_deg": float(np.degrees(self.geometry.theta_bragg_rad)),
                                       "tth_ref_deg": self.geometry.tth_ref_deg}
        scan = {k: self.scan.get(k) for k in ("kind", "axes", "centre_deg", "shape", "offsets_deg", "motors",
                                              "resolution_deg", "background_counts") if k in self.scan}
        md = {"kind": "dfxrm-maps", "version": PUBLICATION_VERSION, "raw_uid": self.uid, "status": self.status(state),
              "scan": scan, "geometry": g, "units": UNITS}
        if metrics:
            md["metrics"] = metrics
        return md


def published(maps: dict) -> dict:
    """The maps sent to Tiled (all but the centres of mass, see ``NOT_PUBLISHED``)."""
    return {k: v for k, v in maps.items() if k not in NOT_PUBLISHED}


def truth_metrics(run: DfxrmRun, maps: dict) -> dict:
    """Errors against the ground truth when the run came from the simulated microscope."""
    sim = run.start.get("sim") or {}
    if sim.get("technique") != "dfxrm" or "preset" not in sim:
        return {}
    from bp_plugin.dfxrm.quality import map_errors
    from sim_devices.dfxrm_microscope import build_preset_sample

    sample = build_preset_sample(sim["preset"], int(sim.get("seed", 0)))
    return map_errors(maps, sample.truth_maps(), pixel_size_m=run.geometry.pixel_size_m,
                      dislocations=sample.dislocations)


def run_dfxrm(run: DfxrmRun, *, publisher, stop_event: threading.Event, interval_s: float = 1.0,
              abandoned=lambda run: False, figures: bool = True, progress=None) -> dict:
    """Publish live maps until the stop message, then recover, finish, write and publish the final maps."""
    from bp_plugin.dfxrm.output import plot_maps, write_maps

    t_pub, last_placed = 0.0, -1
    if publisher:
        publisher.submit(run.metadata("live"), published(run.maps()))
    while not stop_event.is_set() and run.stop is None:
        if abandoned(run):
            run.set_stop({"exit_status": "no stop message", "n_frames": run.n_frames_expected})
            break
        now = time.monotonic()
        if now - t_pub >= interval_s and run.counters["placed"] != last_placed:
            last_placed = run.counters["placed"]
            if publisher:
                publisher.submit(run.metadata("live"), published(run.maps()))
            if progress:
                progress(run.status("live"))
            t_pub = now
        time.sleep(0.05)
    if stop_event.is_set():
        if publisher:
            publisher.close(run.metadata("interrupted"))
        return {"state": "interrupted"}
    run.recover(run.stop.get("sources") or [])
    t0 = time.time()
    maps = run.maps()
    metrics = truth_metrics(run, maps)
    metrics["frames"] = run.n_measured
    last = run.t_last_frame or time.time()
    write_maps(run.folder / "maps.h5", maps, geometry=run.geometry.to_dict(), scan=run.scan, metrics=metrics,
               source=f"stream:{run.uid}")
    if figures:
        plot_maps(run.folder / "maps.png", {k: v for k, v in maps.items() if k != "weak_beam"},
                  run.geometry.pixel_size_m, title=f"DF-XRM {run.kind} scan {run.uid[:8]}")
    metrics["compute_final_s"] = time.time() - t0
    metrics["latency_last_frame_to_result_s"] = time.time() - last
    status = run.status("final")
    if publisher:
        publisher.close(run.metadata("final", metrics), published(maps))
    metrics["latency_last_frame_to_published_s"] = time.time() - last
    (run.folder / "metrics.json").write_text(json.dumps({**metrics, "counters": status}, indent=2, default=float))
    return {**status, "metrics": metrics, "result": str(run.folder / "maps.h5")}

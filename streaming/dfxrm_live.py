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

from .taps import DEFAULT_DATASET

log = logging.getLogger(__name__)

ROOT = "dfxrm"
PUBLICATION_VERSION = 1
DIMS = {name: ["y", "x"] for name in MAP_UNITS} | {"weak_beam": ["image", "y", "x"]}
UNITS = MAP_UNITS | {"weak_beam": "counts (background subtracted)"}
# centres of mass are the tilts / strain plus a constant: kept in maps.h5, not re-sent every second
NOT_PUBLISHED = ("com_phi", "com_chi", "com_tth")


#: the 3D scan kinds, each taken by its own run class with sums of its own, not one accumulator
#: of the whole scan (streaming/dfxrm_runs.py maps each to its class and checks it has them all)
VOLUME_KINDS = ("layers", "topotomo")


class DfxrmRun:
    """One DF-XRM run being received: moments, counters, stop message.

    Args:
        header: the start message's header (``technique = "dfxrm"``, checked by
            ``protocol.check_dfxrm_start``).
        folder: the run's folder (``dfxrm_start.json``, ``stop.json``, ``moments.npz`` checkpoint,
            results); created once the header has been understood.
        xp: array module of the moments (NumPy or CuPy).
    """

    technique = "dfxrm"
    volume_kind: str | None = None     # the 3D scan kind a subclass takes, with sums of its own
    MAX_WEAK_BYTES = 4 << 30

    def __init__(self, header: dict, folder, *, xp=np):
        self.start = header
        self.uid = header["run_uid"]
        scan = self.scan = dict(header.get("scan") or {})
        self.geometry = DfxrmGeometry.from_dict(header["geometry"])
        self.axes = tuple(scan["axes"])
        self.kind = scan.get("kind", "mosaicity")
        if self.kind != self.volume_kind and (self.volume_kind or self.kind in VOLUME_KINDS):
            # one map of every layer (or projection) would be no map of any
            raise ValueError(f"a {self.kind} scan is not for {type(self).__name__}; open it with "
                             "streaming.dfxrm_runs.open_dfxrm_run")
        self.shape = tuple(int(v) for v in scan["frame_shape"])
        self.n_frames_expected = int(header["n_frames"])
        self.background = float(scan.get("background_counts", 0.0))
        self._xp = xp
        self.acc = None if self.volume_kind else self._new_acc()    # a 3D run: sums of its own instead
        self.weak = None
        if self.kind == "weak_beam":
            nbytes = self.n_frames_expected * self.shape[0] * self.shape[1] * 4
            if nbytes > self.MAX_WEAK_BYTES:
                raise ValueError(f"weak-beam series of {self.n_frames_expected} frames of {self.shape} needs "
                                 f"{nbytes / 2**30:.1f} GiB; split it into series under "
                                 f"{self.MAX_WEAK_BYTES / 2**30:.0f} GiB")
            self.weak = np.zeros((self.n_frames_expected, *self.shape), np.float32)
        self.seen = np.zeros(self.n_frames_expected, bool)
        self.counters = {"received": 0, "placed": 0, "duplicates": 0, "rejected": 0, "recovered": 0}
        self.stop: dict | None = None
        self.pending = ()                  # frames are placed on arrival: nothing waits
        self.t_created = time.time()
        self.t_last_frame: float | None = None
        self.lock = threading.Lock()
        self.map_options = MapOptions(resolution_deg=dict(scan.get("resolution_deg") or {}))
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "dfxrm_start.json").exists():
            (self.folder / "dfxrm_start.json").write_text(json.dumps(header))

    def _new_acc(self) -> MomentAccumulator:
        """Empty running sums for this scan's frames, axes, order, background and noise floor."""
        s = self.scan
        return MomentAccumulator(self.shape, self.axes, s.get("centre_deg"), order=int(s.get("order", 2)),
                                 background=self.background, floor=float(s.get("noise_floor_counts", 0.0)),
                                 xp=self._xp)

    @classmethod
    def resume(cls, folder, *, xp=np) -> "DfxrmRun | None":
        """The run an earlier process had started in ``folder`` (None if there is none): its start
        header, its stop message if it came, and the moments of its last checkpoint with the frames
        they hold. Frames that came after the checkpoint are recovered from the camera files at the
        stop message, like any frame that never arrived."""
        folder = Path(folder)
        p = folder / "dfxrm_start.json"
        if not p.exists() or (folder / "maps.h5").exists():       # never started here, or finished
            return None
        run = cls(json.loads(p.read_text()), folder, xp=xp)
        if (folder / "stop.json").exists():
            run.stop = json.loads((folder / "stop.json").read_text())
        ck = folder / "moments.npz"
        if ck.exists() and run.weak is None:        # weak-beam images are not checkpointed: all recovered
            try:
                with np.load(ck) as z:
                    run.acc.load_state({k: z[k] for k in z.files})
                    run.seen[:] = z["seen"]
                if run.acc.n_frames != run.n_measured:
                    raise ValueError(f"it holds {run.acc.n_frames} frames but lists {run.n_measured}")
                log.info("run %s: moments of %d frames from the checkpoint", run.uid[:8], run.n_measured)
            except (OSError, KeyError, ValueError) as exc:
                log.warning("run %s: checkpoint %s unusable (%s); the frames will be recovered from the "
                            "camera files", run.uid[:8], ck, exc)
                run.acc.reset()
                run.seen[:] = False
        return run

    def checkpoint(self) -> None:
        """Write the sums and the frames they hold (``moments.npz``, replaced atomically). Weak-beam
        series are not checkpointed: a restarted service reads all their images back."""
        if self.weak is not None:
            return
        with self.lock:
            state, seen = self.acc.state(), self.seen.copy()
        arrays = {k: np.asarray(v) for k, v in state.items() if v is not None}
        tmp = self.folder / "moments.tmp.npz"
        np.savez(tmp, seen=seen, **arrays)
        tmp.replace(self.folder / "moments.npz")

    # --- receiver thread ----------------------------------------------------------------------------
    def _angles(self, motors: dict) -> np.ndarray | None:
        try:
            a = np.array([float(motors[f"{ax}_deg"]) for ax in self.axes])
        except (KeyError, TypeError, ValueError):
            return None
        return a if np.all(np.isfinite(a)) else None

    def _add(self, k: int, frame: np.ndarray, angles: np.ndarray) -> bool:
        """Fold frame ``k`` in unless it is already there (checked under the lock: the receiver and
        the recovery may race for the same frame). Returns whether it was added."""
        with self.lock:
            if self.seen[k]:
                return False
            self.acc.add(frame, angles)
            if self.weak is not None:
                self.weak[k] = frame.astype(np.float32) - self.background
            self.seen[k] = True
            return True

    def _count(self, key: str) -> None:
        with self.lock:
            self.counters[key] += 1

    def place(self, msg) -> None:
        """Fold one ``frame`` message into the sums; every message ends as exactly one of placed,
        duplicate or rejected (``received = placed + duplicates + rejected``)."""
        self._count("received")
        why = None
        try:
            k = int(msg.header["frame_index"])
            angles = self._angles(msg.header.get("motors") or {})
            if not 0 <= k < self.n_frames_expected:
                why = f"frame_index {k} outside the run's {self.n_frames_expected} frames"
            elif tuple(msg.array.shape) != self.shape:
                why = f"frame shape {tuple(msg.array.shape)}, the run's is {self.shape}"
            elif angles is None:
                why = f"frame without the scanned angles {[a + '_deg' for a in self.axes]} in its motors"
            elif msg.array.dtype.kind == "f" and not np.all(np.isfinite(msg.array)):
                why = "frame with NaN or infinite values"
            elif not self._add(k, msg.array, angles):
                self._count("duplicates")
                return
        except Exception as exc:        # whatever went wrong, the frame is accounted for
            why = f"{type(exc).__name__}: {exc}"
            k = msg.header.get("frame_index")
        if why:
            self._count("rejected")
            log.warning("run %s frame %s rejected: %s", self.uid[:8], k, why)
            return
        self._count("placed")
        self.t_last_frame = time.time()

    def set_mask(self, mask) -> None:
        """Camera masks are applied by the camera (hot pixels read 0); nothing to do."""

    def set_stop(self, header: dict) -> None:
        """The stop message: kept on disk, so a restarted process knows the run has ended."""
        (self.folder / "stop.json").write_text(json.dumps(header))
        self.stop = header

    # --- worker -------------------------------------------------------------------------------------
    def recover(self, sources: list[dict]) -> int:
        """Read back frames listed in the stop message's sources that never arrived.

        ``sources``: ``[{"format": "detector", "file", "dataset", "frames": [[frame_index,
        index_in_file, angle_1, ...], ...]}]``. Unreadable files and entries that do not fit the
        scan (index out of range, wrong shape, missing or non-finite angles) are logged and skipped.
        """
        import h5py

        n = 0
        for src in sources:
            todo = []
            for e in src.get("frames", []):
                try:
                    k, i = int(e[0]), int(e[1])
                    angles = np.asarray(e[2:2 + len(self.axes)], float)
                except (TypeError, ValueError, IndexError):
                    log.warning("run %s: source entry %r is not [frame, index, angles...]; skipped", self.uid[:8], e)
                    continue
                if not 0 <= k < self.n_frames_expected or len(angles) != len(self.axes) or \
                        not np.all(np.isfinite(angles)):
                    log.warning("run %s: source entry %r does not fit the scan; skipped", self.uid[:8], e)
                    continue
                if not self.seen[k]:
                    todo.append((k, i, angles))
            if not todo:
                continue
            try:
                f = h5py.File(src["file"], "r", libver="latest", swmr=True)
            except (OSError, KeyError, TypeError) as exc:
                log.warning("run %s: could not open %s to recover frames: %s", self.uid[:8], src.get("file"), exc)
                continue
            with f:
                for k, i, angles in todo:
                    try:
                        frame = f[src.get("dataset", DEFAULT_DATASET)][i]
                        if frame.shape != self.shape:
                            raise ValueError(f"shape {frame.shape}, the run's is {self.shape}")
                    except (OSError, KeyError, IndexError, ValueError) as exc:
                        log.warning("run %s: frame %d not recovered from %s: %s", self.uid[:8], k, src.get("file"), exc)
                        continue
                    n += self._add(k, frame, angles)
        with self.lock:
            self.counters["recovered"] += n
        return n

    @property
    def n_measured(self) -> int:
        return int(self.seen.sum())

    def maps(self) -> dict:
        """Current maps (``compute_maps``), plus the weak-beam image stack for weak-beam series.

        Only the copy of the sums holds the lock: the receiver keeps placing frames while the maps
        are computed."""
        with self.lock:
            snap = self.acc.copy()
            weak = None if self.weak is None else self.weak.copy()
        out = compute_maps(snap, self.geometry, self.map_options)
        if weak is not None:
            out["weak_beam"] = weak
        return out

    def status(self, state: str = "receiving") -> dict:
        with self.lock:
            counters, seen = dict(self.counters), self.seen.copy()
        hi = int(np.flatnonzero(seen).max()) + 1 if seen.any() else 0
        return {"state": state, **counters, "frames_expected": self.n_frames_expected,
                "frames_measured": int(seen.sum()), "missing": int(hi - seen[:hi].sum()),
                "last_frame_time": self.t_last_frame, "updated": time.time()}

    def metadata(self, state: str, metrics: dict | None = None) -> dict:
        g = self.geometry.to_dict() | {"theta_bragg_deg": float(np.degrees(self.geometry.theta_bragg_rad)),
                                       "tth_ref_deg": self.geometry.tth_ref_deg}
        scan = {k: self.scan.get(k) for k in ("kind", "axes", "centre_deg", "shape", "offsets_deg", "motors",
                                              "resolution_deg", "background_counts", "order") if k in self.scan}
        md = {"kind": "dfxrm-maps", "version": PUBLICATION_VERSION, "raw_uid": self.uid, "status": self.status(state),
              "scan": scan, "geometry": g, "units": UNITS}
        if isinstance(self.start.get("series"), dict):      # an in-situ series' repetition: its place
            md["series"] = self.start["series"]
        if metrics:
            md["metrics"] = metrics
        return md


WEAK_BEAM_PUBLISHED = ("intensity", "mask", "weak_beam")


def published(maps: dict) -> dict:
    """The maps sent to Tiled: all but the centres of mass (``NOT_PUBLISHED``); for a weak-beam
    series only its images, their sum and the mask (moments over a few chosen offsets are no maps)."""
    if "weak_beam" in maps:
        return {k: v for k, v in maps.items() if k in WEAK_BEAM_PUBLISHED}
    return {k: v for k, v in maps.items() if k not in NOT_PUBLISHED}


def truth_metrics(run: DfxrmRun, maps: dict) -> dict:
    """Errors against the ground truth when the run came from the simulated microscope."""
    sim = run.start.get("sim") or {}
    if sim.get("technique") != "dfxrm" or run.kind in ("weak_beam", "layers", "topotomo"):   # 2D maps' truth
        return {}
    from bp_plugin.dfxrm.quality import map_errors
    from bp_plugin.truth import truth_from_start

    truth, _, note = truth_from_start(sim)
    if truth is None:
        return {"warnings": [note]} if note else {}
    dislocations = [tuple(r) for r in np.asarray(truth.pop("dislocations", np.zeros((0, 3))))]
    return map_errors(maps, truth, pixel_size_m=run.geometry.pixel_size_m, dislocations=dislocations)


class DfxrmLive:
    """The worker's side of a DF-XRM run, driven by the service's one run loop
    (:mod:`streaming.techniques`): nothing to iterate (the receiver folds each frame into the
    moments as it arrives); live maps when frames came since the last ones; the final maps.

    Args:
        run: the run being received.
        figures: write ``maps.png`` with the final maps.
    """

    idle_s = 0.05                       # the loop's pause: there is no engine step to run
    stage = "live"

    def __init__(self, run: DfxrmRun, *, figures: bool = True):
        self.run, self.figures = run, figures
        self._published = -1
        self._checkpointed = run.counters["placed"]

    @property
    def pending(self):
        return self.run.pending

    def ingest(self) -> int:
        return 0

    def live_step(self) -> None:
        return None                     # nothing to iterate: the loop idles for idle_s

    def first_snapshot(self) -> tuple[dict, dict | None]:
        self._published = self.run.counters["placed"]
        return self.run.metadata("live"), published(self.run.maps())

    def live_snapshot(self) -> tuple[dict, dict | None] | None:
        """Maps and metadata when frames came since the last snapshot, else None."""
        placed = self.run.counters["placed"]
        if placed == self._published:
            return None
        self._published = placed
        return self.run.metadata("live"), published(self.run.maps())

    def checkpoint(self) -> None:
        """The moments on disk when frames came since the last checkpoint (else the one on disk
        already holds them: a run resumed from it, or nothing new since)."""
        placed = self.run.counters["placed"]
        if placed != self._checkpointed:
            self._checkpointed = placed
            self.run.checkpoint()

    def status(self, state: str) -> dict:
        return self.run.status(state)

    def metadata(self, state: str) -> dict:
        return self.run.metadata(state)

    def arrays(self) -> dict | None:
        return None

    def complete(self, pub, tick=None) -> dict:
        """After the stop message and the recovery: the final maps written (``maps.h5``, figure,
        ``metrics.json``) and published; returns the status with ``metrics`` and ``result``."""
        from bp_plugin.dfxrm.output import plot_maps, write_maps

        run = self.run
        t0 = time.time()
        maps = run.maps()
        metrics = truth_metrics(run, maps)
        metrics["frames"] = run.n_measured
        last = run.t_last_frame or time.time()
        write_maps(run.folder / "maps.h5", maps, geometry=run.geometry.to_dict(), scan=run.scan, metrics=metrics,
                   source=f"stream:{run.uid}")
        if self.figures:
            plot_maps(run.folder / "maps.png", {k: v for k, v in published(maps).items() if k != "weak_beam"},
                      run.geometry.pixel_size_m, title=f"DF-XRM {run.kind} scan {run.uid[:8]}")
        metrics["compute_final_s"] = time.time() - t0
        metrics["latency_last_frame_to_result_s"] = time.time() - last
        status = run.status("final")
        if pub:
            pub.close(run.metadata("final", metrics), published(maps))
        metrics["latency_last_frame_to_published_s"] = time.time() - last
        (run.folder / "metrics.json").write_text(json.dumps({**metrics, "counters": status}, indent=2, default=float))
        return {**status, "metrics": metrics, "result": str(run.folder / "maps.h5")}

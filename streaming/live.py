"""The reconstruction of one streamed run: the engine refined while frames arrive, then the full schedule.

Live phase: the :class:`~bp_plugin.recon.engine.Reconstructor` is built at the start message with no
frame measured; each loop places the frames received since the last one (``set_frame``: they join the
next iteration, unmeasured planes and positions stay free through the mask ``w``) and runs one
iteration over the positions measured so far. The support stays at the first slab of the schedule
and the probe is held until half of the frames are in, so early, partial data cannot drag it away.

Final phase (after the stop message, with frames the stream missed recovered from files): when the
frames came faster than the live phase iterated (a replay, a flood, a fast detector), the catch-up
starts over and runs the angle curriculum the live phase could not (:mod:`bp_plugin.recon.curriculum`);
then the full schedule of :class:`~bp_plugin.recon.config.ReconConfig` compressed to
``final_iterations``, started from that state (slab steps, shrink-wrap, ML), then the result file,
metrics and figures.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bp_plugin.backend import Backend
from bp_plugin.defaults import (CATCH_UP_PER_ANGLE, CHECKPOINT_INTERVAL_S, PROBE_AFTER_FRACTION, PUBLISH_INTERVAL_S,
                                STREAM_FINAL)
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.curriculum import angle_curriculum
from bp_plugin.recon.engine import Reconstructor
from bp_plugin.recon.results import default_lab_grid, lab_maps

from .assembly import RunAssembly
from .engine_ranks import open_engine, place_frames
from .publish import HISTORY_MAX, PUBLICATION_VERSION, UNITS, json_safe

log = logging.getLogger(__name__)


@dataclass
class LiveOptions:
    """How a streamed run is reconstructed.

    Attributes:
        final_iterations: joint iterations of the final schedule (the paper's 1000, compressed).
        ml_iterations: ML iterations after them (None: the schedule's share).
        probe_after_fraction: fraction of the frames measured before the live phase updates the probe.
        publish_interval_s: shortest time between two publications.
        checkpoint_interval_s: shortest time between two checkpoints of the engine state.
        behind_after_s: a frame waiting longer than this for the engine makes the status "behind".
        mode: engine update mode ("sequential" or "batched").
        upsampling: angular up-sampling ratio (None: the geometry's default, what a beam filling
            the detector's window needs; see ``ExperimentGeometry.upsampling_default``).
        figures: write PNG figures with the final result.
        restart_object: the final schedule starts the object, support and background afresh from
            the slab, with the probe the live phase learned (the live phase as its probe warm-up).
            Off by default: it helps after a short live phase (small preset, 10 live iterations,
            60 + 20 final: object error 0.55 instead of 0.67) but throws away the work of a long
            one, which the final schedule of 60 + 20 iterations alone does not redo.
        catch_up_per_angle: when the live phase ran fewer than this many iterations per angle
            (median over the angles of the iterations run while each was the newest), the final
            phase starts over (object, background and probe) and runs the angle curriculum at
            this many iterations per angle first (0: never). Emulated streamed ``small`` scans
            (frames angle by angle, then 60 + 20): 7 live iterations per angle end at object
            error 0.145, 4 at 0.888; after a flood the schedule alone ended at 0.55-0.7.
            The catch-up starts over as the offline path does (slab, flat background, the NA
            focus): 0.140 after the 4-per-angle run; restarted with its live probe, 0.87.
            It costs ``catch_up_per_angle`` iterations per angle on growing data (about 100 s on
            ``small``, 2 CPU cores).
    """

    final_iterations: int = STREAM_FINAL.iterations
    ml_iterations: int | None = STREAM_FINAL.ml_iterations
    probe_after_fraction: float = PROBE_AFTER_FRACTION
    publish_interval_s: float = PUBLISH_INTERVAL_S
    checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S
    behind_after_s: float = 2.0
    mode: str = "sequential"
    upsampling: int | None = None
    figures: bool = True
    restart_object: bool = False
    catch_up_per_angle: int = CATCH_UP_PER_ANGLE

    def __post_init__(self) -> None:
        if self.catch_up_per_angle < 0:
            raise ValueError(f"catch_up_per_angle must be >= 0 iterations per angle (0: never), "
                             f"got {self.catch_up_per_angle}")


def full_illumination(rec: Reconstructor) -> np.ndarray:
    """``sum_j |P_j|^2`` over every planned position (host float32): the field of view of the scan."""
    xp = rec.backend.xp
    out = xp.zeros(rec.object.shape, np.float32)
    for j in range(rec.layout.n_positions):
        out[rec.layout.view(j)] += xp.abs(rec.probe3d(j)) ** 2
    return rec.backend.asnumpy(out)


def final_schedule(rec: Reconstructor, config: ReconConfig, restart_object: bool, catch_up: bool, per_angle: int,
                   probe_after_fraction: float, callback=None, on_stage=None) -> None:
    """The engine's part of the final phase (every rank of a spread engine runs it): ``config``'s
    schedule from the live state, after the catch-up (object, probe restarted, the angle curriculum
    at ``per_angle``) when ``catch_up``; ``on_stage(name)`` when the stage changes."""
    rec.begin_schedule(config, keep_history=False)
    if restart_object or catch_up:
        rec.restart_object()
    if catch_up:
        # the offline start as well: a probe learned from too few iterations per angle led the
        # restarted object to a wrong minimum (emulated small, 4 per angle: object error 0.87)
        rec.restart_probe()
        if on_stage:
            on_stage("catch-up")
        angle_curriculum(rec, per_angle, callback, probe_after_fraction=probe_after_fraction)
        if on_stage:
            on_stage("final-schedule")
    rec.run(callback)


class LiveReconstruction:
    """Engine state of one run, driven by the service's one run loop (:mod:`streaming.techniques`)."""

    idle_s = 0.02                       # the loop's pause when no frame is measured yet
    stage = "live"                      # then catch-up, final-schedule, final

    def __init__(self, asm: RunAssembly, opts: LiveOptions, backend: Backend, ranks=None):
        self.asm, self.opts = asm, opts
        #: the other MPI ranks the engine is spread over (a :class:`streaming.engine_ranks.Leader`), or None
        self.ranks = ranks
        self.final_config = ReconConfig(mode=opts.mode, upsampling=opts.upsampling).scaled(opts.final_iterations,
                                                                                            opts.ml_iterations)
        # the live configuration: first slab only, no shrink-wrap; the probe is held until enough
        # frames are in (live_step)
        self.live_config = self.final_config.on_first_slab()
        args = dict(geometry=asm.geometry, translations_m=asm.translations_m, mask=asm.mask(), shape=asm.shape,
                    config=self.live_config)
        self._tell("open", args)
        self.rec: Reconstructor = open_engine(args, backend, ranks.comm if ranks else None)
        self._scaled = False
        self.grid = default_lab_grid(self.rec.layout, full_illumination(self.rec))
        self.stage = "live"
        self.started = time.time()
        self.behind = False
        self._mask_version = None
        if asm.resumed:                              # a restart: the spool holds the old process's frames
            self._place([(ia, ip, asm.frames[ia, ip]) for ia, ip in zip(*np.nonzero(asm.measured_disk))])
        ck = asm.folder / "checkpoint.npz"
        if ck.exists():
            self._load_checkpoint(ck)
        self.in_engine = 0
        self._live_history: list[dict] = []   # set aside while the final schedule counts from 0

    def _tell(self, command: str, arg=None) -> None:
        if self.ranks is not None:
            self.ranks.tell(command, arg)

    def _place(self, frames, mask=None, scale: bool = False) -> None:
        if self.ranks is None:
            place_frames(self.rec, frames, mask, scale)
        elif frames or mask is not None or scale:
            self.ranks.place(self.rec, frames, mask, scale)

    def release(self) -> None:
        """The run is over (finished, interrupted or failed): the other ranks drop its engine."""
        self._tell("close")

    @property
    def pending(self):
        """Frames placed in the spool and not yet in the engine."""
        return self.asm.pending

    def first_snapshot(self) -> tuple[dict, dict]:
        """The run's first publication: taken, the engine built, no iteration yet."""
        return self.metadata("waiting"), self.arrays()

    def live_snapshot(self) -> tuple[dict, dict]:
        return self.metadata("live"), self.arrays()

    def complete(self, pub, tick=None) -> dict:
        """After the stop message and the recovery of missed frames: the final phase (``tick()``
        after each iteration), the result and its publication; a run without a single frame is
        failed and says so. Returns the status with ``metrics`` and ``result``."""
        self.ingest()
        if not self.rec.measured.any():
            md = self.metadata("failed")
            why = self.asm.rejections
            md["status"]["message"] = "the run ended without a single frame" + (
                f": {sum(why.values())} rejected, first because {next(iter(why))}" if why else "")
            if pub:
                pub.close(md)
            return md["status"]
        if pub:
            pub.submit(self.metadata("live"))
        self.run_final(None if tick is None else (lambda rec: tick()))
        return self.finish(pub)

    def history(self) -> list[dict]:
        """Every iteration so far, live and final."""
        return self._live_history + self.rec.history

    # --- live phase -------------------------------------------------------------------------------
    def ingest(self) -> int:
        """Move the frames placed since the last call into the engine; returns how many."""
        asm, rec = self.asm, self.rec
        new = asm.take_pending()
        # behind: the oldest frame of this batch waited longer than allowed for the engine
        self.behind = bool(new) and (time.monotonic() - min(t for _, _, t in new)) > self.opts.behind_after_s
        frames = [(ia, ip, asm.frames[ia, ip]) for ia, ip, _ in new]
        mask, scale = None, False
        if new or (rec.measured.any() and not self._scaled):
            current = asm.mask()
            key = (asm.mask_sent is not None, int(current.sum()))
            if key != self._mask_version:            # the sent mask, or the derived one when it changes
                mask, self._mask_version = current, key
            scale, self._scaled = not self._scaled, True
        self._place(frames, mask, scale)
        self.in_engine = int(rec.measured.sum())
        return len(new)

    def live_step(self) -> float | None:
        """One iteration over the measured positions (None when nothing is measured yet)."""
        rec = self.rec
        if not rec.measured.any():
            return None
        hold = bool(rec.measured.mean() < self.opts.probe_after_fraction)
        self._tell("step", hold)
        err = rec.step(hold_probe=hold, stage="live")
        rec.history[-1]["angles_seen"] = int(rec.measured.any(axis=1).sum())
        return err

    def live_iterations_per_angle(self, history: list[dict]) -> float:
        """Median over the angles of the live iterations run while each was the newest one in (an
        angle-outer scan's own curriculum; a flood gives 0 for all but the last angle)."""
        n = int(self.rec.measured.any(axis=1).sum())
        if n == 0:
            return 0.0
        seen = np.array([h.get("angles_seen", 0) for h in history if h.get("stage") == "live"], np.int64)
        return float(np.median(np.bincount(np.clip(seen, 0, n), minlength=n + 1)[1:]))    # none run: 0

    # --- final phase ------------------------------------------------------------------------------
    def run_final(self, callback=None) -> None:
        """The full schedule from the live state (the iteration count restarts for the schedule)."""
        rec = self.rec
        self.stage = "final-schedule"
        self._live_history = list(rec.history)
        per = self.opts.catch_up_per_angle
        catch_up = per > 0 and self.live_iterations_per_angle(self._live_history) < per
        args = (self.final_config, self.opts.restart_object, catch_up, per, self.opts.probe_after_fraction)
        self._tell("final", args)
        if self.ranks is not None:
            callback = self.ranks.lockstep(callback)
        final_schedule(rec, *args, callback=callback, on_stage=lambda stage: setattr(self, "stage", stage))
        for h in rec.history:
            h.setdefault("stage", "joint")
        rec.history = self._live_history + rec.history
        self._live_history = []
        rec.iteration = len(rec.history)
        self.stage = "final"

    # --- checkpoints ------------------------------------------------------------------------------
    def finish(self, pub=None) -> dict:
        """The final result of a run whose schedule has run: metrics (quality against the truth the
        start message names, when it is there), ``result.h5``, figures, ``metrics.json``, the final
        publication through ``pub``; returns the status with ``metrics`` and ``result``."""
        import json

        from bp_plugin.recon.run import summarize, write_outputs
        from bp_plugin.truth import truth_from_start

        asm, rec = self.asm, self.rec
        gt, gt_attrs, truth_note = truth_from_start(asm.start.get("sim"))
        self._tell("finish")
        metrics, maps, grid, arrays, illum = summarize(rec, gt, gt_attrs)
        metrics["warnings"] = list(rec.warnings) + metrics.get("warnings", []) + ([truth_note] if truth_note else [])
        if truth_note:
            log.warning("run %s: %s", asm.uid[:8], truth_note)
        metrics["seconds"] = time.time() - self.started
        metrics["processes"] = rec.comm.size
        t_last = asm.t_last_frame or time.time()          # wall clock of the last frame placed
        metrics["counters"] = asm.status()
        out = asm.folder / "result.h5"
        write_outputs(rec, out, metrics, maps, grid, arrays, illum, source=f"stream:{asm.uid}",
                      figures=self.opts.figures)
        if grid != self.grid:                           # keep the published shapes: maps on the live grid
            maps = None
        metrics["latency_last_frame_to_result_s"] = time.time() - t_last
        h = self.history()
        state = "failed" if h and not np.isfinite(h[-1]["error"]) else "final"   # NaN is no result
        status = self.status(state)
        if pub:
            t0 = time.monotonic()
            if not pub.close(self.metadata(state, metrics), self.arrays(maps)):
                log.warning("run %s: the final result is not in Tiled yet (%s); the publisher keeps trying and "
                            "it waits in the run's folder for the next start", asm.uid[:8], pub.last_error)
            metrics["publish_final_s"] = time.monotonic() - t0
        metrics["latency_last_frame_to_published_s"] = time.time() - t_last
        (asm.folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        log.info("run %s: %s, %s%s", asm.uid[:8], state, {k: metrics.get(k) for k in ("object_error", "strain_rms_error")},
                 f" ({status['message']})" if status.get("message") else "")
        return {**status, "metrics": metrics, "result": str(out)}

    def checkpoint(self) -> None:
        """Engine state and the spool flushed to disk (atomic rename: a kill never leaves half a
        file), once the engine has seen a frame (before, a checkpoint is of no use)."""
        if not self.rec.measured.any():
            return
        st, h = self.rec.state(), self.history()
        tmp = self.asm.folder / "checkpoint.tmp.npz"
        np.savez(tmp, object=st["object"], probe2d=st["probe2d"], background=st["background"],
                 support=st["support"], iteration=st["iteration"],
                 history_error=np.array([e["error"] for e in h], np.float64),
                 history_stage=np.array([e.get("stage", "joint") for e in h], str),
                 history_angles=np.array([e.get("angles_seen", 0) for e in h], np.int32))
        self.asm.flush()
        tmp.replace(self.asm.folder / "checkpoint.npz")

    def _load_checkpoint(self, path: Path) -> None:
        with np.load(path) as z:
            st = {k: z[k] for k in ("object", "probe2d", "background", "support")}
            st["iteration"] = int(z["iteration"])
            n = len(z["history_error"])
            stages = z["history_stage"] if "history_stage" in z.files else ["live"] * n
            angles = z["history_angles"] if "history_angles" in z.files else [0] * n
            st["history"] = [{"iteration": i, "error": float(e), "seconds": 0.0, "stage": str(g), "angles_seen": int(k)}
                             for i, (e, g, k) in enumerate(zip(z["history_error"], stages, angles))]
        self._tell("load", st)
        self.rec.load_state(st)
        self._scaled = True
        log.info("run %s: resumed from checkpoint at iteration %d", self.asm.uid[:8], st["iteration"])

    # --- publication ------------------------------------------------------------------------------
    def status(self, state: str) -> dict:
        h = self.history()
        out = {"state": state, "stage": self.stage, "iteration": len(h), "error": h[-1]["error"] if h else None,
               "behind": bool(self.behind), "frames_in_engine": self.in_engine, "updated": time.time(),
               "seconds": time.time() - self.started, **self.asm.status()}
        # always a message: Tiled merges metadata, so a notice published earlier (a run queued
        # behind another) would otherwise outlive its truth
        notes = self.final_notes() if state in ("final", "failed") else []
        out["message"] = "; ".join(notes) if notes else None
        return out

    def final_notes(self) -> list[str]:
        """What a user must know of a result before trusting it: a run that ended without its stop
        message or with a failed one, frames that never came, an error that is not a number."""
        c, stop, h = self.asm.status(), self.asm.stop or {}, self.history()
        notes = []
        exit_status = stop.get("exit_status")
        if exit_status not in (None, "success"):
            notes.append(f"the scan ended with exit status {exit_status!r}")
        if c.get("frames_measured", 0) < c.get("frames_expected", 0):
            notes.append(f"reconstructed from {c['frames_measured']} of {c['frames_expected']} frames")
        if h and not np.isfinite(h[-1]["error"]):
            notes.append("the reconstruction diverged (its error is not a number): the maps are not usable; the raw "
                         "frames are in the spool and the detector files, reconstruct them offline")
        return notes

    def metadata(self, state: str, metrics: dict | None = None) -> dict:
        rec, (origin, voxel, shape) = self.rec, self.grid
        full = self.history()
        h = full[-HISTORY_MAX:]
        err = [e["error"] for e in h]
        md = {"kind": "bp-reconstruction", "version": PUBLICATION_VERSION, "raw_uid": self.asm.uid,
              "status": self.status(state),
              "history": {"iteration": list(range(len(full) - len(h), len(full))),
                          "error": [float(e) if np.isfinite(e) else None for e in err],
                          "stage": [e.get("stage", "joint") for e in h]},
              "grid": {"origin_m": [float(v) for v in origin], "voxel_m": float(voxel), "shape": list(shape),
                       "axes": ["z", "y", "x"]},
              "probe_grid": {"p1_m": [float(v) for v in rec.probe_op.p1_m], "r2_m": [float(v) for v in rec.probe_op.r2_m]},
              "units": UNITS, "scan": {"n_angles": int(self.asm.shape[0]), "n_positions": int(self.asm.shape[1]),
                                       "frames_expected": self.asm.n_frames_expected},
              "geometry": self.asm.start["geometry"]}
        if metrics:
            md["metrics"] = json_safe(metrics)
        return md

    def arrays(self, maps: dict | None = None) -> dict:
        """Float32 maps on the lab grid (strain and tilts NaN outside the crystal), probe, background."""
        rec, a = self.rec, self.rec.backend.asnumpy
        if maps is None:
            maps = lab_maps(a(rec.object), rec.layout, rec.geometry.q_bragg_inv_m, *self.grid)
        amp = np.abs(maps["density"]).astype(np.float32)
        ref = np.percentile(amp, 99.5)
        crystal = amp > 0.3 * ref if ref > 0 else np.zeros(amp.shape, bool)
        out = {"density": amp, "phase": np.angle(maps["density"]).astype(np.float32)}
        for k in ("eps_zz", "omega_x", "omega_y"):
            out[k] = np.where(crystal, maps[k], np.nan).astype(np.float32)
        p = a(rec.probe2d)
        out.update(probe_amplitude=np.abs(p).astype(np.float32), probe_phase=np.angle(p).astype(np.float32),
                   background=a(rec.background).astype(np.float32),
                   measured=self.asm.measured_disk.astype(np.uint8))
        return out

"""``bp-plugin reconstruct``: a dataset file in, a result file, metrics.json and figures out."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..backend import get_backend
from ..dataset import read_dataset
from ..defaults import PAPER, schedule
from .config import ReconConfig
from .comm import together
from .engine import Reconstructor
from .results import default_lab_grid, evaluate, lab_maps, load_state, save_result


# The curriculum by default: on `small` (16 angles) the schedule alone ends at object error 0.71 and
# 5 per angle first at 0.14; on `tiny` (12) 0.166 -> 0.142; on the 12-angle validation scan it costs a
# little (0.158 -> 0.164) and on 6 angles x4 it doubles the strain error (5e-5 -> 1e-4): few-angle
# scans go without it. 10 per angle rather than 5, measured on the family of benchmarks/bench_family.py
# (8 members, tilt unknown, 60 + 20): the three low-Bragg-angle Au(111) members' object errors
# 0.267 / 0.221 / 0.359 -> 0.227 / 0.199 / 0.343, member 6's probe 0.164 -> 0.145, the others and
# tiny within 0.004 (tiny 0.145 -> 0.144); member 5's probe 0.145 -> 0.152.
AUTO_CURRICULUM_PER_ANGLE = 10
AUTO_CURRICULUM_MIN_ANGLES = 8


def curriculum_per_angle(requested: int | None, n_measured_angles: int, resuming: bool) -> int:
    """Iterations per angle of the angle curriculum for a run (0: none); see ``ReconstructOptions``."""
    if requested is not None:
        if requested < 0:
            raise ValueError(f"--angle-curriculum must be >= 0 iterations per angle (0: none), got {requested}")
        if requested and resuming:
            raise ValueError("--angle-curriculum starts a reconstruction; a resumed run continues its schedule")
        return requested
    return AUTO_CURRICULUM_PER_ANGLE if not resuming and n_measured_angles >= AUTO_CURRICULUM_MIN_ANGLES else 0


@dataclass(frozen=True)
class ReconstructOptions:
    """What the command line sets; ``None`` keeps the defaults of :class:`ReconConfig`.

    ``schedule`` names one of :data:`bp_plugin.defaults.SCHEDULES` (the paper's 1000 + 500 by
    default); ``iterations`` compresses it (slab steps, shrink-wrap window, ML share) to that many
    joint updates; ``ml_iterations`` then overrides the ML count; ``probe_warmup``
    (joint iterations, not compressed) learns the probe first and restarts the object with it;
    ``sample_tilt_deg`` states the foil's tilt (else the scan's geometry's, else none);
    ``angle_curriculum`` (iterations per angle) adds the angles one by one before the schedule
    (:mod:`bp_plugin.recon.curriculum`); ``None`` chooses :data:`AUTO_CURRICULUM_PER_ANGLE` for a
    new run of a scan with at least :data:`AUTO_CURRICULUM_MIN_ANGLES` measured angles, 0 otherwise.
    ``mpi``: run on the processes of an MPI launch (:mod:`bp_plugin.recon.mpi`); ``None`` does when
    launched by ``mpirun`` / ``srun`` with more than one process.
    """

    schedule: str = PAPER.name
    iterations: int | None = None
    ml_iterations: int | None = None
    upsampling: int | None = None
    fixed_probe: bool = False
    probe_warmup: int | None = None
    angle_curriculum: int | None = None
    sample_tilt_deg: tuple[float, float] | None = None
    mode: str = "sequential"
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    figures: bool = True
    seed: int = 0
    mpi: bool | None = None


def make_config(opts: ReconstructOptions, base: dict | None = None) -> ReconConfig:
    """The configuration of a new run, or (``base``, from a result file) of a resumed one."""
    if base:
        cfg = ReconConfig.from_dict(base)
        if opts.ml_iterations is not None:
            cfg = replace(cfg, ml_iterations=opts.ml_iterations)
    else:
        sched = schedule(opts.schedule)
        joint = sched.iterations if opts.iterations is None else opts.iterations
        ml = round(sched.ml_iterations * joint / sched.iterations) if opts.ml_iterations is None else opts.ml_iterations
        cfg = ReconConfig(mode=opts.mode, seed=opts.seed, probe_update=not opts.fixed_probe,
                          upsampling=opts.upsampling, slab_tilt_deg=opts.sample_tilt_deg).scaled(joint, ml)
    if opts.probe_warmup is not None:
        if base:
            raise ValueError("--probe-warmup cannot change a run being resumed (its schedule is in the result "
                             "file); start a new reconstruction instead")
        cfg = replace(cfg, probe_warmup=opts.probe_warmup)     # iterations as given, not compressed
    return cfg


def reconstruct_file(scan_path, out_path, opts: ReconstructOptions | None = None) -> dict:
    """Reconstruct a scan file; write ``out_path`` (result), ``metrics.json`` and PNGs beside it.

    With ``opts.resume`` the state in ``out_path`` is loaded and the schedule continues (the
    configuration stored there is used; ``ml_iterations`` may extend it). On several MPI processes
    each reconstructs its share of the positions (:mod:`bp_plugin.recon.merge`); rank 0 alone shows
    progress and writes the outputs. A scan that a rank cannot open fails on every rank, each with
    its line (:func:`bp_plugin.recon.comm.together`); a rank that fails later ends them all.
    Returns the metrics (quality entries only when the scan has ground truth), on every rank (with
    ``"rank"`` on ranks other than 0).
    """
    from .mpi import world

    opts = opts or ReconstructOptions()
    comm = world(opts.mpi)
    try:
        return _reconstruct_file(scan_path, Path(out_path), opts, comm)
    except Exception as exc:
        if comm is not None and comm.size > 1 and not getattr(exc, "every_rank", False):
            # the other ranks would wait in a sum forever
            sys.stderr.write(f"bp-plugin reconstruct: rank {comm.rank}: error: {exc}\n")
            sys.stderr.flush()
            comm.abort(2)
        raise


def _reconstruct_file(scan_path, out_path: Path, opts: ReconstructOptions, comm) -> dict:
    from tqdm import tqdm

    from .mpi import use_local_gpu

    root = comm is None or comm.rank == 0
    t0 = time.perf_counter()

    def open_():
        if root:
            out_path.parent.mkdir(parents=True, exist_ok=True)   # before hours of work, not after
        if opts.resume and not out_path.exists():
            raise FileNotFoundError(f"--resume: no result file {out_path} to continue from")
        ds = read_dataset(scan_path, allow_partial=True)
        state = load_state(out_path) if opts.resume else None
        cfg = make_config(opts, state["config"] if state else None)
        if comm is not None and opts.device != "cpu":
            use_local_gpu(comm)                    # one GPU per rank, before the backend takes one
        return ds, state, Reconstructor.from_scan(ds, config=cfg, backend=get_backend(opts.device), comm=comm,
                                                  scale_probe=False)

    # every rank sees a bad file: they agree and each prints its line (no MPI_Abort, see together)
    ds, state, rec = together(comm, open_)
    rec.scale_probe_to_data()                      # the constructor's one sum, once all opened
    if state:
        rec.load_state(state)
    n_angles = int(rec.measured.any(axis=1).sum())
    per_angle = curriculum_per_angle(opts.angle_curriculum, n_angles, bool(state))
    n_curr = n_angles * per_angle
    bar = tqdm(total=rec.total_iterations + n_curr, initial=rec.iteration, desc="reconstruct", unit="it",
               disable=not (opts.progress and root))

    def tick(r):
        h = r.history[-1]
        bar.set_postfix(stage=h.get("stage", "joint"), error=f"{h['error']:.4g}", refresh=False)
        bar.update(1)

    if n_curr:
        from .curriculum import angle_curriculum
        angle_curriculum(rec, per_angle, tick)
    rec.run(tick)
    bar.close()
    seconds = time.perf_counter() - t0
    if not root:
        rec.illumination()                     # the one collective of the summary
        return {**comm.bcast(None), "rank": comm.rank}
    metrics, maps, grid, arrays, illum = summarize(rec, ds.ground_truth, ds.ground_truth_attrs)
    metrics["seconds"] = seconds
    metrics.update(slab_tilt_deg=list(rec.slab_tilt_deg), slab_tilt_source=rec.slab_tilt_source,
                   upsampling=rec.geometry.upsampling, processes=rec.comm.size,
                   **_per_iteration(rec.history),
                   warnings=list(rec.warnings) + metrics.get("warnings", []))
    write_outputs(rec, out_path, metrics, maps, grid, arrays, illum, source=str(scan_path), figures=opts.figures)
    return metrics if comm is None else comm.bcast(metrics)


def _per_iteration(history: list[dict]) -> dict:
    """Median seconds per joint iteration, and of the ranks' merge within it (several processes)."""
    joint = [h for h in history if h.get("stage") != "ml"]
    out = {"seconds_per_iteration": float(np.median([h["seconds"] for h in joint])) if joint else float("nan")}
    merges = [h["merge_seconds"] for h in joint if "merge_seconds" in h]
    return {**out, "merge_seconds_per_iteration": float(np.median(merges))} if merges else out


class Summary(NamedTuple):
    """What :func:`summarize` gives: metrics (JSON-ready), lab maps, the lab grid ``(origin (x, y, z) m,
    voxel m, shape (z, y, x))``, the aligned arrays for figures (None without ground truth) and the
    illumination on the object grid (host float32)."""

    metrics: dict
    maps: dict
    grid: tuple
    arrays: dict | None
    illumination: np.ndarray


def summarize(rec: Reconstructor, ground_truth: dict | None = None, gt_attrs: dict | None = None) -> Summary:
    """Metrics, lab maps, lab grid, aligned arrays (None without ground truth) and illumination of a
    reconstruction; quality entries (``object_error``, ...) only when ``ground_truth`` has a density.

    Returns a :class:`Summary`.
    """
    a = rec.backend.asnumpy
    illum = a(rec.illumination())
    obj, probe = a(rec.object), a(rec.probe2d)
    metrics = {"iterations": rec.iteration, "device": rec.backend.device, "layout": rec.layout.describe(),
               "final_error": rec.history[-1]["error"] if rec.history else float("nan"),
               "curriculum_iterations": sum(1 for h in rec.history if h.get("stage") == "curriculum")}
    if ground_truth and "density" in ground_truth:
        at = gt_attrs
        grid = (tuple(at["grid_origin_m"]), float(at["grid_voxel_m"]), ground_truth["density"].shape)
        q = evaluate(obj, probe, illum, rec.layout, rec.probe_op, ground_truth, at)
        arrays = q.pop("arrays")
        metrics.update(q)
        maps = arrays["rec"]
    else:
        grid = default_lab_grid(rec.layout, illum)
        maps = lab_maps(obj, rec.layout, rec.geometry.q_bragg_inv_m, *grid)
        arrays = None
    return Summary(metrics, maps, grid, arrays, illum)


def write_outputs(rec: Reconstructor, out_path, metrics: dict, maps, grid, arrays, illum, *, source: str = "",
                  figures: bool = True) -> None:
    """The result file, ``metrics.json`` and (``figures``) the PNGs, in ``out_path``'s folder."""
    out_path = Path(out_path)
    save_result(out_path, rec, maps, grid, illum, metrics=metrics, source=source)
    (out_path.parent / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if figures:
        _figures(rec, maps, grid, arrays, out_path.parent, out_path.stem, illum)


def _figures(rec, maps, grid, arrays, folder: Path, stem: str, illum) -> None:
    from ..recon_figures import default_slices, maps_figure, probe_and_convergence_figure
    from ..strain import object_to_lab
    from .probe_ops import crystal_coverage

    a = rec.backend.asnumpy
    origin, voxel, shape = grid
    # only the scanned field of view: elsewhere the object is unconstrained by the data
    lit = object_to_lab((illum > 0.1 * illum.max()).astype(np.complex64), rec.layout, origin, voxel, shape).real > 0.5
    def inside(m):
        amp = m["amplitude"]
        return lit & (amp > 0.3 * np.percentile(amp[lit], 99)) if lit.any() else amp > 0.3 * amp.max()

    mask = inside(maps)
    ref_mask = inside(arrays["ref"]) if arrays is not None else None
    slices = default_slices(ref_mask if ref_mask is not None else mask)
    maps_figure(maps, origin, voxel, folder / f"{stem}_maps.png", mask=mask, slices=slices,
                title=f"reconstruction after {rec.iteration} iterations (scanned field of view)")
    truth = None
    if arrays is not None:
        maps_figure(arrays["ref"], origin, voxel, folder / f"{stem}_truth_maps.png", mask=ref_mask, slices=slices,
                    title="ground truth at the reconstruction's resolution (scanned field of view)")
        truth = arrays.get("probe_truth")
    if truth is not None:
        scale = np.vdot(truth, a(rec.probe2d))
        truth = truth * (scale / abs(scale)) if abs(scale) > 0 else truth
    coverage = crystal_coverage(rec.probe_op, rec.object, rec.measured_positions())
    probe_and_convergence_figure(a(rec.probe2d), rec.probe_op.p1_m, rec.probe_op.r2_m, rec.history,
                                 folder / f"{stem}_probe.png", truth=truth, coverage=coverage)

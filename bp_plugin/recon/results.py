"""Results of a reconstruction: lab-frame maps, quality against ground truth, the result file.

Result file (HDF5, one per reconstruction; ``bp_plugin_format = "bp-result"``, version 1):

| path | content |
| --- | --- |
| ``/object`` | complex64 ``(N3o, N1o, N2o)``, object on the reconstruction grid (axis order 3, 1, 2) |
| ``/support``, ``/illumination`` | uint8 / float32, same shape |
| ``/probe2d`` | complex64 ``(np1, N2)``, probe section; axes ``/probe_p1_m`` and ``/probe_r2_m`` (r2 = -p2) |
| ``/probe_coverage`` | float32 ``(np1, N2)``, how much each section pixel lit the reconstructed crystal over the scan (peak 1; :func:`crystal_coverage`): the data say nothing of the probe where it is 0 |
| ``/background`` | float32 ``(n_angles, N1, N2)``, incoherent background (counts) on the measured planes |
| ``/lab/density``, ``amplitude``, ``phase``, ``eps_zz``, ``omega_x``, ``omega_y`` | lab grid (z, y, x), equal voxels; attributes ``origin_m`` (x, y, z), ``voxel_m`` |
| ``/history/iteration``, ``error``, ``seconds``, ``stage`` | one entry per iteration |

Attributes on ``/``: ``geometry_json``, ``config_json``, ``iteration``, ``source``, ``object_origin``,
``voxel_m``, ``slab_tilt_deg`` and ``slab_tilt_source`` (the slab orientation used and where it came
from: ``config``, ``geometry`` or ``assumed specular``), ``metrics_json`` (when ground truth was available).
"""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
from scipy import ndimage

from ..quality import ground_truth_at_resolution, probe_quality, relative_error, remove_ambiguities
from ..strain import crystal_mask, object_to_lab, strain_maps
from .probe_ops import crystal_coverage

RESULT_FORMAT = "bp-result"
RESULT_VERSION = 1


def default_lab_grid(layout, illumination: np.ndarray, threshold: float = 0.05):
    """A lab grid (origin (x, y, z) m, voxel m, shape (z, y, x)) covering the illuminated object."""
    pts = layout.object_lab_points()[illumination > threshold * illumination.max()]
    voxel = min(layout.voxel_m)
    lo, hi = pts.min(0), pts.max(0)
    shape = tuple(int(math.ceil((hi[k] - lo[k]) / voxel)) + 1 for k in (2, 1, 0))
    return tuple(lo), voxel, shape


def lab_maps(obj: np.ndarray, layout, q_bragg_inv_m: float, origin_m, voxel_m: float, shape) -> dict:
    """Density, amplitude, phase and strain / tilt maps of an object on a lab grid (z, y, x)."""
    rho = object_to_lab(obj, layout, origin_m, voxel_m, shape)
    maps = strain_maps(rho, voxel_m, q_bragg_inv_m)
    maps.update(density=rho, amplitude=np.abs(rho).astype(np.float32), phase=np.angle(rho).astype(np.float32))
    return maps


def evaluate(obj: np.ndarray, probe2d: np.ndarray, illumination: np.ndarray, layout, probe_op, gt: dict,
             gt_attrs: dict, *, fov_threshold: float = 0.1, erode_voxels: int = 1) -> dict:
    """Quality of a reconstruction against simulated ground truth, ambiguities removed.

    The object is compared with the ground truth averaged over the reconstruction's voxels
    (what a perfect reconstruction at this resolution holds) where the illumination exceeds
    ``fov_threshold`` of its maximum and the true amplitude exceeds 0.5. Strain and tilts are
    compared on the ground truth's lab grid, both sides derived from their densities by the
    same operator, inside the crystal eroded by ``erode_voxels`` lab voxels. The probe (on
    ``probe_op``'s section grid, a :class:`ProbeOperator`) is compared where it lights the true
    crystal (:func:`probe_quality` with the true object's :func:`crystal_coverage`).

    Returns a JSON-ready dict (``object_error``, ``probe_error``, ``strain_rms_error`` (against
    the truth at the reconstruction's resolution), ``strain_rms_error_analytic`` with
    ``strain_floor_rms`` and ``strain_truth_rms`` (:func:`strain_against_analytic`),
    ``tilt_rms_error_rad``, ``field_of_view_fraction``, ``probe_error`` and ``probe_error_section``,
    ``probe_lit_fraction`` (the share of the true probe's energy on lines that meet the crystal), probe FWHMs, the fitted ambiguities) and,
    under ``"arrays"``, the aligned maps for figures.
    """
    q = float(gt_attrs["q_bragg_inv_m"])
    origin, voxel = gt_attrs["grid_origin_m"], float(gt_attrs["grid_voxel_m"])
    shape = gt["density"].shape
    glow = ground_truth_at_resolution(gt["density"], origin, voxel, layout)
    lit = illumination > fov_threshold * illumination.max()
    region = lit & (np.abs(glow) > 0.5)
    # k_i = sin(2 tB) e1 + cos(2 tB) e3: the object slides along it at no cost (the probe is invariant)
    tb = layout.geometry.theta_bragg_rad
    along_ki = (math.cos(2 * tb) / layout.voxel_m[0], math.sin(2 * tb) / layout.voxel_m[1], 0.0)
    aligned, amb = remove_ambiguities(obj, glow, region, shift_search=True, free_direction=along_ki)
    rec_maps = lab_maps(aligned, layout, q, origin, voxel, shape)
    ref_maps = lab_maps(glow, layout, q, origin, voxel, shape)
    lit_lab = object_to_lab(lit.astype(np.complex64), layout, origin, voxel, shape).real > 0.5
    core = crystal_mask(ref_maps["amplitude"], 0.5, erode_voxels) & lit_lab
    d_eps = (rec_maps["eps_zz"] - ref_maps["eps_zz"])[core]
    d_tilt = np.concatenate([(rec_maps["omega_x"] - ref_maps["omega_x"])[core],
                             (rec_maps["omega_y"] - ref_maps["omega_y"])[core]])
    amp = np.abs(aligned[region])
    analytic = strain_against_analytic(rec_maps, ref_maps, gt, lit_lab, layout, voxel)
    out = {
        "object_error": relative_error(aligned, glow, region),
        "strain_rms_error": float(np.sqrt(np.mean(d_eps ** 2))) if d_eps.size else float("nan"),
        "tilt_rms_error_rad": float(np.sqrt(np.mean(d_tilt ** 2))) if d_tilt.size else float("nan"),
        "field_of_view_fraction": float(np.mean(amp > 0.5)) if amp.size else float("nan"),
        "n_object_voxels": int(region.sum()), "n_strain_voxels": int(core.sum()), **analytic,
        "ambiguities": {"shift_voxels": amb["shift_voxels"], "ramp_rad_per_voxel": amb["ramp_rad_per_voxel"]},
    }
    out["warnings"] = nan_reasons(out, int(lit.sum()))
    if "probe" in gt:
        cov = crystal_coverage(probe_op, glow)
        pq = probe_quality(probe2d, probe_op.p1_m, probe_op.r2_m, gt["probe"], gt["probe_p1_m"], gt["probe_p2_m"],
                           coverage=cov)
        t2 = np.abs(pq["truth"][probe_op.backend.asnumpy(probe_op.rows_used)]) ** 2     # rows the model uses
        cov = cov[probe_op.backend.asnumpy(probe_op.rows_used)]
        out.update(probe_error=pq["probe_error"], probe_error_section=pq["probe_error_section"],
                   probe_lit_fraction=float(t2[cov > 0.01].sum() / t2.sum()) if t2.sum() > 0 else float("nan"),
                   probe_fwhm_m=pq["fwhm_m"], probe_fwhm_true_m=pq["fwhm_true_m"], probe_fwhm_rel_error=pq["fwhm_rel_error"])
    out["arrays"] = {"rec": rec_maps, "ref": ref_maps, "core": core}
    if "probe" in gt:
        out["arrays"]["probe_truth"] = pq["truth"]
    return out


def strain_against_analytic(rec_maps: dict, ref_maps: dict, gt: dict, lit_lab: np.ndarray, layout,
                            gt_voxel_m: float) -> dict:
    """eps_zz of the reconstruction against the simulator's *analytic* strain, and the floor.

    Inside the true crystal (amplitude > 0.5 on the ground-truth grid), lit, and at least one
    reconstruction voxel away from every surface, void and dislocation core (those are holes in
    the true amplitude, so one erosion keeps away from all of them): the crystal is eroded by
    :meth:`ScanLayout.lab_footprint`, the +-1 voxel box of the reconstruction grid in the lab,
    which is the reach of the lab maps' interpolation and of their phase gradient. (Its longest
    edge in every direction, as before, left no voxel in foils a few voxels thick at low Bragg
    angles, where dr3 is long but lies nearly in the foil's plane.)
    ``strain_rms_error_analytic`` (reconstruction - analytic), ``strain_floor_rms`` (the ground
    truth averaged over the reconstruction's voxels - analytic: what a perfect reconstruction at
    this voxel size scores), ``strain_truth_rms`` (the analytic strain's own RMS, the signal) and
    ``n_strain_voxels_analytic``. NaN (and 0 voxels) where nothing is left or no analytic strain.
    """
    if "eps_zz" not in gt or gt["eps_zz"].shape != ref_maps["eps_zz"].shape:
        return {}
    inside = crystal_mask(gt["amplitude"] if "amplitude" in gt else np.abs(gt["density"]), 0.5, 0)
    far = ndimage.binary_erosion(inside, structure=layout.lab_footprint(gt_voxel_m)) & lit_lab
    truth = gt["eps_zz"][far]
    rms = lambda d: float(np.sqrt(np.mean(d ** 2))) if d.size else float("nan")  # noqa: E731
    return {"strain_rms_error_analytic": rms(rec_maps["eps_zz"][far] - truth),
            "strain_floor_rms": rms(ref_maps["eps_zz"][far] - truth), "strain_truth_rms": rms(truth),
            "n_strain_voxels_analytic": int(far.sum())}


def nan_reasons(metrics: dict, n_lit: int) -> list[str]:
    """One line per NaN quality metric saying why it is NaN (no metric is NaN without a reason)."""
    out = []
    if not metrics["n_object_voxels"]:
        where = ("no voxel is lit" if not n_lit else
                 f"{n_lit} voxels are lit (illumination > 10 % of its maximum) but none holds the true crystal")
        out.append(f"object_error and field_of_view_fraction are NaN: {where}; the reconstructed probe's "
                   "illumination misses the crystal (a probe that drifted to the edge of its section, or a "
                   "scan outside the sample)")
    if metrics.get("n_strain_voxels_analytic") == 0:
        out.append("strain_rms_error_analytic and strain_floor_rms are NaN: no lit crystal voxel lies one "
                   "reconstruction voxel away from the surfaces (a foil only a few voxels thick)")
    if not metrics["n_strain_voxels"]:
        out.append("strain_rms_error and tilt_rms_error_rad are NaN: no voxel of the eroded crystal is lit "
                   "(a foil thinner than a few voxels, or the illumination misses the crystal)")
    return out


def save_result(path, rec, maps: dict, lab_grid, illumination: np.ndarray, *, metrics: dict | None = None,
                source: str = "") -> None:
    """Write a :class:`Reconstructor`'s state, its illumination (host array) and its lab maps to ``path``."""
    st = rec.state()
    origin, voxel, _ = lab_grid
    with h5py.File(path, "w") as f:
        f.attrs.update(bp_plugin_format=RESULT_FORMAT, bp_plugin_format_version=RESULT_VERSION,
                       geometry_json=json.dumps(rec.geometry.to_dict()), config_json=json.dumps(rec.config.to_dict()),
                       iteration=rec.iteration, source=str(source), object_origin=list(rec.layout.object_origin),
                       voxel_m=list(rec.layout.voxel_m), slab_tilt_deg=list(rec.slab_tilt_deg),
                       slab_tilt_source=rec.slab_tilt_source)
        if metrics is not None:
            f.attrs["metrics_json"] = json.dumps(metrics)
        f["object"] = st["object"]
        f["support"] = st["support"].astype(np.uint8)
        f["illumination"] = illumination
        f["probe2d"] = st["probe2d"]
        f["probe_p1_m"] = rec.probe_op.p1_m
        f["probe_r2_m"] = rec.probe_op.r2_m
        f["probe_coverage"] = crystal_coverage(rec.probe_op, st["object"], rec.measured_positions())
        f["background"] = st["background"]
        g = f.create_group("lab")
        g.attrs.update(origin_m=list(origin), voxel_m=voxel, axes="z, y, x")
        for k in ("density", "amplitude", "phase", "eps_zz", "omega_x", "omega_y"):
            g.create_dataset(k, data=maps[k], compression="gzip", compression_opts=1)
        h = f.create_group("history")
        hist = st["history"]
        h["iteration"] = np.array([e["iteration"] for e in hist], np.int64)
        h["error"] = np.array([e["error"] for e in hist], np.float64)
        h["seconds"] = np.array([e["seconds"] for e in hist], np.float64)
        h["stage"] = np.array([e.get("stage", "joint") for e in hist], dtype=h5py.string_dtype())


def load_state(path) -> dict:
    """The state stored in a result file, in the form :meth:`Reconstructor.load_state` takes."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("bp_plugin_format") != RESULT_FORMAT:
            raise ValueError(f"{path} is not a bp-plugin result file (attribute bp_plugin_format != {RESULT_FORMAT!r})")
        h = f["history"]
        hist = [{"iteration": int(i), "error": float(e), "seconds": float(s), "stage": st.decode() if isinstance(st, bytes) else str(st)}
                for i, e, s, st in zip(h["iteration"][()], h["error"][()], h["seconds"][()], h["stage"][()])]
        return {"object": f["object"][()], "probe2d": f["probe2d"][()], "background": f["background"][()],
                "support": f["support"][()].astype(bool), "iteration": int(f.attrs["iteration"]), "history": hist,
                "config": json.loads(f.attrs["config_json"]),
                "slab_tilt_deg": list(f.attrs["slab_tilt_deg"]) if "slab_tilt_deg" in f.attrs else None,
                "slab_tilt_source": str(f.attrs.get("slab_tilt_source", "result file"))}

"""DF-XRM plans: mosaicity (phi x chi), strain (2theta), combined, and weak-beam image series.

Each is one bluesky run built on bluesky's own ``grid_scan`` / ``scan`` / ``list_scan``, with:

- start document: ``technique = "dfxrm"``, ``dfxrm_geometry`` (``DfxrmGeometry.to_dict()``) and
  ``dfxrm_scan`` (``kind``, scanned ``axes`` and their ``motors``, ``centre_deg``, ``shape``,
  setpoint ranges, the camera's ``image_key`` and ``frame_shape``, ``count_time_s``,
  ``background_counts`` per pixel and frame, the instrumental ``resolution_deg``, weak-beam
  ``offsets_deg``); ``dfxrm_sim`` (preset, seed) on the simulated microscope;
- one event per frame with the motors' readbacks (the angles the moments use) and the frame as
  external data in the camera's HDF5 file.

Ranges are offsets (deg) from the reference orientation of the geometry (``phi0_deg``,
``chi0_deg``, ``tth_ref_deg``). Every check runs before the first message: a bad plan never moves.
"""
from __future__ import annotations

import numpy as np
from bluesky import plans as bp

from bp_plugin.dfxrm.geometry import DfxrmGeometry

from .checks import PlanError, angle_unit_deg, check_targets, image_keys
from .axes import is_async, read_axis
from .detectors import close_detector, detector_count_time, open_detector
from .moves import MOVE_TIMEOUT_S, timed_step

PLAN_VERSION = 1
MAX_STEP_PER_SIGMA = 2.5


def _geometry(geometry) -> DfxrmGeometry:
    if isinstance(geometry, DfxrmGeometry):
        return geometry
    if isinstance(geometry, dict):
        try:
            return DfxrmGeometry.from_dict(geometry)
        except (TypeError, ValueError) as exc:
            raise PlanError(f"invalid DF-XRM geometry: {exc}") from None
    raise PlanError(f"geometry must be a DfxrmGeometry or a dict of its fields, not {type(geometry).__name__} "
                    f"{geometry!r:.40}; a simulated microscope's is mic.geometry (mic.geometry.to_dict() in a queue item)")


def _check_camera(detectors, count_time):
    """Plan stub: ``(detectors, camera, image key, frame shape)``. An ophyd-async camera is
    prepared to describe its frames, then unstaged: the scan stages it again and its first trigger
    prepares it anew (ophyd-async's own rule), so its exposure is the camera's own setting, and
    the check's preparation leaves one empty file of the camera's (its writer opens one per
    preparation). Without an exposure the background and noise floor default to 0 unless
    ``background_counts`` is given."""
    detectors = list(detectors)
    if not detectors:
        raise PlanError("no detector given: pass the DF-XRM camera first in the list")
    det = detectors[0]
    if is_async(det) and count_time is not None:
        raise PlanError(f"count_time: camera {det.name!r} is an ophyd-async device, whose exposure the scan "
                        "cannot set between its stage and its first trigger; set it on the camera and leave "
                        "count_time out")
    if hasattr(det, "describe"):
        desc, opened = yield from open_detector(det)
        yield from close_detector(det, opened)
    else:
        desc = {}
    images = image_keys(desc)
    if not images:
        raise PlanError(f"detector {getattr(det, 'name', det)!r} gives no 2D frames; the first detector must be "
                        "the DF-XRM camera")
    key, shape = images[0]
    return detectors, det, key, shape


def _check_axis(motor, what: str, rng, n: int, centre: float, resolution: float | None):
    """Plan stub: the axis's targets (deg) after its checks (ophyd or ophyd-async, :mod:`plans.axes`)."""
    if isinstance(motor, str) or not hasattr(motor, "name"):
        raise PlanError(f"{what}: {motor!r} is not a motor; pass the ophyd positioner (e.g. microscope.phi)")
    motor = yield from read_axis(motor)
    if angle_unit_deg(motor, what) != 1.0:        # any spelling of deg; not yet converted from mrad etc.
        raise PlanError(f"{what} motor {motor.name!r} has units {motor.egu!r}; DF-XRM angles "
                        "must be in degrees (deg, DEG, degrees)")
    lo, hi = (float(v) for v in rng)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise PlanError(f"{what} range {rng!r}: give (start, stop) offsets in deg with start < stop")
    if int(n) < 3:
        raise PlanError(f"{what}: {n} points; a centre of mass and a width need at least 3 (typically 15-31)")
    targets = centre + np.linspace(lo, hi, int(n))
    check_targets(motor, targets, what)
    step = (hi - lo) / (int(n) - 1)
    if resolution and step > MAX_STEP_PER_SIGMA * resolution:
        need = int(np.ceil((hi - lo) / (MAX_STEP_PER_SIGMA * resolution))) + 1
        raise PlanError(f"{what} step {step:.4g} deg is more than {MAX_STEP_PER_SIGMA}x the instrumental resolution "
                        f"(sigma {resolution:.4g} deg): centres of mass would be biased by the sampling; use at "
                        f"least {need} points over this range or a narrower range")
    return targets


def _metadata(kind, det, key, frame_shape, geo, axes, motors, centre, shape, *, count_time, background, resolution,
              order=2, extra=None, md=None) -> dict:
    if order not in (2, 4):
        raise PlanError(f"order {order!r}: the moments are kept to order 2 (centre of mass, widths) or 4 "
                        "(plus skewness and kurtosis)")
    ct = count_time if count_time is not None else detector_count_time(det)
    if background is None:
        bg = getattr(det, "background_counts", None)
        background = float(bg(ct)) if callable(bg) and ct is not None else 0.0
    floor = noise_floor(background)
    scan = {"version": PLAN_VERSION, "kind": kind, "axes": list(axes), "motors": {a: m.name for a, m in zip(axes, motors)},
            "centre_deg": [float(c) for c in centre], "shape": [int(n) for n in shape],
            "n_points": int(np.prod(shape)), "detector": det.name, "image_key": key, "frame_shape": list(frame_shape),
            "count_time_s": ct, "background_counts": float(background), "noise_floor_counts": floor,
            "resolution_deg": {k: float(v) for k, v in (resolution or {}).items()}, "order": int(order),
            **(extra or {})}
    g = geo.to_dict() | {"theta_bragg_deg": float(np.degrees(geo.theta_bragg_rad)), "tth_ref_deg": geo.tth_ref_deg}
    out = {"plan_name": f"dfxrm_{kind}_scan", "technique": "dfxrm", "dfxrm_geometry": g, "dfxrm_scan": scan}
    sim = getattr(det, "sim_metadata", None)
    if sim:
        out["dfxrm_sim"] = dict(sim)
    return out | (md or {})


def noise_floor(background: float, p: float = 1e-4) -> float:
    """Counts above the background that its photon noise exceeds with probability ``p`` per pixel
    and frame (Poisson quantile): what the moments treat as no signal."""
    from scipy.stats import poisson

    return float(poisson.isf(p, background) - background) if background > 0 else 0.0


def _resolution(det, resolution_deg):
    return dict(resolution_deg) if resolution_deg is not None else dict(getattr(det, "resolution_deg", {}) or {})


def _with_exposure(det, count_time, plan):
    from bluesky import plan_stubs as bps
    if count_time is not None:
        if not count_time > 0:
            raise PlanError(f"count_time {count_time} s: give a positive exposure")
        yield from bps.mv(det.count_time, count_time)
    return (yield from plan)


def mosaicity_scan(detectors, phi, chi, geometry, *, phi_range_deg=(-0.07, 0.07), n_phi: int = 29,
                   chi_range_deg=(-0.07, 0.07), n_chi: int = 15, snake: bool = False, count_time: float | None = None,
                   background_counts: float | None = None, resolution_deg: dict | None = None, order: int = 2,
                   move_timeout: float = MOVE_TIMEOUT_S, md: dict | None = None):
    """A phi x chi grid (phi outer) around the reference orientation: tilt and mosaicity maps.

    Args:
        detectors: the camera first.
        phi, chi: the tilt motors (deg).
        geometry: :class:`DfxrmGeometry` or a dict of its fields.
        phi_range_deg, chi_range_deg: (start, stop) offsets from the reference (deg).
        n_phi, n_chi: points per axis.
        snake: reverse chi on every other phi row (saves motion; moments do not care).
        count_time: exposure (s) set before the scan.
        background_counts: dark level per pixel and frame subtracted by the moments (default: the
            camera's ``background_counts(count_time)`` when it has one, else 0); the moments also
            zero what stays below the background's 1e-4 Poisson quantile (``noise_floor_counts``).
        resolution_deg: instrumental sigma per axis (default: the camera's ``resolution_deg``).
        order: moments kept live: 2 (centre of mass, widths, covariance) or 4 (plus skewness and
            kurtosis per axis); recorded as ``dfxrm_scan.order``.
        move_timeout: seconds a point's move may take before the run ends as failed, saying which
            motor (:func:`plans.moves.move`).
    """
    detectors, det, key, frame_shape = yield from _check_camera(detectors, count_time)
    geo = _geometry(geometry)
    res = _resolution(det, resolution_deg)
    p = yield from _check_axis(phi, "phi", phi_range_deg, n_phi, geo.phi0_deg, res.get("phi"))
    c = yield from _check_axis(chi, "chi", chi_range_deg, n_chi, geo.chi0_deg, res.get("chi"))
    _md = _metadata("mosaicity", det, key, frame_shape, geo, ("phi", "chi"), (phi, chi),
                    (geo.phi0_deg, geo.chi0_deg), (n_phi, n_chi), count_time=count_time,
                    background=background_counts, resolution=res, order=order, md=md)
    plan = bp.grid_scan(detectors, phi, p[0], p[-1], len(p), chi, c[0], c[-1], len(c),
                        snake_axes=[chi] if snake else False, per_step=timed_step(move_timeout), md=_md)
    return (yield from _with_exposure(det, count_time, plan))


def strain_scan(detectors, tth, geometry, *, tth_range_deg=(-0.02, 0.02), n_tth: int = 21,
                count_time: float | None = None, background_counts: float | None = None,
                resolution_deg: dict | None = None, order: int = 2, move_timeout: float = MOVE_TIMEOUT_S,
                md: dict | None = None):
    """A 2theta scan of the objective-and-detector arm around 2theta_ref: the axial strain map
    (arguments as :func:`mosaicity_scan`)."""
    detectors, det, key, frame_shape = yield from _check_camera(detectors, count_time)
    geo = _geometry(geometry)
    res = _resolution(det, resolution_deg)
    t = yield from _check_axis(tth, "tth", tth_range_deg, n_tth, geo.tth_ref_deg, res.get("tth"))
    _md = _metadata("strain", det, key, frame_shape, geo, ("tth",), (tth,), (geo.tth_ref_deg,), (n_tth,),
                    count_time=count_time, background=background_counts, resolution=res, order=order, md=md)
    plan = bp.scan(detectors, tth, t[0], t[-1], len(t), per_step=timed_step(move_timeout), md=_md)
    return (yield from _with_exposure(det, count_time, plan))


def combined_scan(detectors, phi, chi, tth, geometry, *, phi_range_deg=(-0.07, 0.07), n_phi: int = 29,
                  chi_range_deg=(-0.07, 0.07), n_chi: int = 15, tth_range_deg=(-0.02, 0.02), n_tth: int = 11,
                  count_time: float | None = None, background_counts: float | None = None,
                  resolution_deg: dict | None = None, order: int = 2, move_timeout: float = MOVE_TIMEOUT_S,
                  md: dict | None = None):
    """tth outer, phi, chi inner: tilts, mosaicity and strain of every pixel in one run (arguments as
    :func:`mosaicity_scan`)."""
    detectors, det, key, frame_shape = yield from _check_camera(detectors, count_time)
    geo = _geometry(geometry)
    res = _resolution(det, resolution_deg)
    t = yield from _check_axis(tth, "tth", tth_range_deg, n_tth, geo.tth_ref_deg, res.get("tth"))
    p = yield from _check_axis(phi, "phi", phi_range_deg, n_phi, geo.phi0_deg, res.get("phi"))
    c = yield from _check_axis(chi, "chi", chi_range_deg, n_chi, geo.chi0_deg, res.get("chi"))
    _md = _metadata("combined", det, key, frame_shape, geo, ("tth", "phi", "chi"), (tth, phi, chi),
                    (geo.tth_ref_deg, geo.phi0_deg, geo.chi0_deg), (n_tth, n_phi, n_chi), count_time=count_time,
                    background=background_counts, resolution=res, order=order, md=md)
    plan = bp.grid_scan(detectors, tth, t[0], t[-1], len(t), phi, p[0], p[-1], len(p), chi, c[0], c[-1], len(c),
                        snake_axes=False, per_step=timed_step(move_timeout), md=_md)
    return (yield from _with_exposure(det, count_time, plan))


def weak_beam_series(detectors, phi, chi, tth, geometry, offsets_deg, *, count_time: float | None = None,
                     background_counts: float | None = None, move_timeout: float = MOVE_TIMEOUT_S,
                     md: dict | None = None):
    """Images at chosen (dphi, dchi, dtth) offsets from the reference, in the tails of the peak, where
    dislocations stand out against a dim perfect lattice (the "weak-beam" condition)."""
    detectors, det, key, frame_shape = yield from _check_camera(detectors, count_time)
    geo = _geometry(geometry)
    off = np.asarray(offsets_deg, float)
    if off.ndim != 2 or off.shape[1] != 3 or not len(off) or not np.all(np.isfinite(off)):
        raise PlanError(f"offsets_deg must be a list of (dphi, dchi, dtth) triples in deg, got {offsets_deg!r}")
    ref = np.array([geo.phi0_deg, geo.chi0_deg, geo.tth_ref_deg])
    pos = ref + off
    for k, (motor, what) in enumerate(((phi, "phi"), (chi, "chi"), (tth, "tth"))):
        if isinstance(motor, str) or not hasattr(motor, "name"):
            raise PlanError(f"{what}: {motor!r} is not a motor; pass the ophyd positioner")
        check_targets((yield from read_axis(motor)), pos[:, k], f"the weak-beam series ({what})")
    _md = _metadata("weak_beam", det, key, frame_shape, geo, ("phi", "chi", "tth"), (phi, chi, tth), ref,
                    (len(off),), count_time=count_time, background=background_counts, resolution={},
                    extra={"offsets_deg": off.tolist()}, md=md)
    plan = bp.list_scan(detectors, phi, list(pos[:, 0]), chi, list(pos[:, 1]), tth, list(pos[:, 2]),
                        per_step=timed_step(move_timeout), md=_md)
    return (yield from _with_exposure(det, count_time, plan))

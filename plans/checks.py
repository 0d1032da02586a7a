"""Checks a Bragg ptychography scan must pass before anything moves.

Every check raises :class:`PlanError` with a message that names the problem and the fix. They run
when the plan generator is first advanced, before its first message, so a bad plan never moves a
motor (the queue server's plan validation runs them too when it opens the plan).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bp_plugin.geometry import ExperimentGeometry

from .units import unit_scale


class PlanError(ValueError):
    """A scan that cannot run as asked; the message says why and what to change."""


def _egu(motor) -> str:
    return str(getattr(motor, "egu", "") or "")


def length_unit_m(motor) -> float:
    """Metres per unit of a translation motor (from its ``egu``, any length unit, any case)."""
    v = unit_scale(_egu(motor), "length")
    if v is None:
        raise PlanError(f"motor {motor.name!r} has units {_egu(motor)!r}, which is no length; a raster axis needs "
                        "one (m, mm, um, nm, in any case: set the motor's EGU)")
    return v


def angle_unit_deg(motor, role: str = "rocking") -> float:
    """Degrees per unit of an angle motor (from its ``egu``: deg, mdeg, rad, mrad, urad, any case)."""
    v = unit_scale(_egu(motor), "angle")
    if v is None:
        raise PlanError(f"{role} motor {motor.name!r} has units {_egu(motor)!r}, which is no angle; pass the "
                        "goniometer's rocking axis (deg, mdeg, rad, mrad, in any case: set the motor's EGU)")
    return v


def resolve_geometry(geometry) -> ExperimentGeometry:
    """An :class:`ExperimentGeometry` from itself or a dict (``to_dict`` form). Preset names are the
    simulator's and are not taken here (a simulated beamline gives its own: ``bl.geometry``)."""
    if isinstance(geometry, ExperimentGeometry):
        return geometry
    if isinstance(geometry, dict):
        try:
            return ExperimentGeometry.from_dict(geometry)
        except (TypeError, ValueError) as exc:
            raise PlanError(f"invalid geometry: {exc}") from None
    raise PlanError(f"geometry must be an ExperimentGeometry or a dict of its fields, not {type(geometry).__name__} "
                    f"{geometry!r:.40}; a simulated beamline's is bl.geometry (or bl.geometry.to_dict() in a queue item)")


def check_sampling(geo: ExperimentGeometry):
    """Eq. 12 with the intended up-sampling; the message gives the ratio that makes the scan valid."""
    needed = geo.upsampling_needed()
    if geo.upsampling < needed:
        raise PlanError(
            f"rocking step {geo.rocking_step_deg:g} deg with up-sampling x{geo.upsampling} violates the sampling "
            f"condition (Eq. 12) for a beam of {geo.beam_width_m * 1e6:.2f} um on a {geo.thickness_m * 1e6:.2f} um "
            f"crystal: the largest valid step is {geo.rocking_step_max_deg:.4g} deg. Use upsampling={needed} "
            f"(reconstruct with --upsampling {needed}), or a step of at most "
            f"{geo.rocking_step_max_deg * geo.upsampling:.4g} deg")


def frame_shape_of(shape) -> tuple[int, int] | None:
    """``(rows, cols)`` of a data key's shape that is one 2D frame (leading axes of 1), else None."""
    shape = [int(s) for s in (shape or []) if s is not None]
    if len(shape) < 2 or any(s != 1 for s in shape[:-2]):
        return None
    return shape[-2], shape[-1]


def image_keys(keys: dict) -> list[tuple[str, tuple[int, int]]]:
    """``[(data key, (rows, cols)), ...]`` of the data keys that are one 2D frame per event."""
    return [(k, s) for k, v in keys.items() if (s := frame_shape_of(v.get("shape"))) is not None]


def check_detector(detector, keys: dict, geo: ExperimentGeometry, roi_origin: tuple[int, int] | None):
    """The detector gives 2D frames that hold the reconstruction crop; returns (image key, shape, roi origin).

    ``keys``: its data keys (``describe()``, :func:`plans.detectors.open_detector`); an image is a
    key of shape ``(rows, cols)``, or ``(1, rows, cols)`` as ophyd-async describes a frame per event."""
    images = image_keys(keys)
    if not images:
        raise PlanError(f"detector {detector.name!r} produces no 2D image (its data keys: {sorted(keys)}); "
                        "pass an area detector")
    key, shape = images[0]
    n1, n2 = geo.crop
    if shape[0] < n1 or shape[1] < n2:
        raise PlanError(f"detector {detector.name!r} frames are {shape[0]} x {shape[1]} pixels, smaller than the "
                        f"reconstruction crop {n1} x {n2}; reduce geometry.crop or use the right detector")
    pix = getattr(detector, "pixel_size_m", None)
    if pix is not None and not math.isclose(pix, geo.pixel_size_m, rel_tol=1e-3):
        raise PlanError(f"detector {detector.name!r} has {pix * 1e6:g} um pixels but the geometry says "
                        f"{geo.pixel_size_m * 1e6:g} um; set geometry.pixel_size_m (binning included) to match")
    if roi_origin is None:
        roi_origin = ((shape[0] - n1) // 2, (shape[1] - n2) // 2)
    r0, c0 = (int(v) for v in roi_origin)
    if r0 < 0 or c0 < 0 or r0 + n1 > shape[0] or c0 + n2 > shape[1]:
        raise PlanError(f"crop of {n1} x {n2} at origin ({r0}, {c0}) leaves the {shape[0]} x {shape[1]} frame; "
                        "move roi_origin so the crop fits")
    return key, shape, (r0, c0)


def check_targets(axis, targets, what: str):
    """Every target inside the axis's limits as the control system has them now, and accepted by
    the motor's own check where it has one. ``axis``: a :class:`plans.axes.Axis`
    (:func:`plans.axes.read_axis`), which read the limits and refreshed ophyd's cache of them."""
    targets = np.asarray(targets, float)
    if not np.all(np.isfinite(targets)):
        raise PlanError(f"{what}: non-finite target positions for {axis.name!r}")
    lo, hi = float(targets.min()), float(targets.max())
    limits = axis.limits
    if limits[0] < limits[1] and (lo < limits[0] or hi > limits[1]):
        raise PlanError(f"{what} needs {axis.name} from {lo:g} to {hi:g} {axis.egu}, outside its limits "
                        f"[{limits[0]:g}, {limits[1]:g}] {axis.egu}; move the scan centre or shrink the scan")
    for t in (lo, hi):
        try:
            axis.check_value(t)
        except Exception as exc:
            raise PlanError(f"{what}: {axis.name} refuses {t:g}: {exc}") from None


@dataclass(frozen=True)
class ScanPoints:
    """The ordered points of a raster x rocking scan.

    Attributes:
        angle_index, position_index: int ``(n_points,)`` indices of each point.
        x, y: raster setpoints in the x / y motors' units, ``(n_positions,)``.
        eta: rocking setpoints (deg), ``(n_angles,)``.
    """

    angle_index: np.ndarray
    position_index: np.ndarray
    x: np.ndarray
    y: np.ndarray
    eta: np.ndarray


def scan_points(geo: ExperimentGeometry, *, x_centre: float, y_centre: float, x_unit_m: float, y_unit_m: float,
                eta_centre_deg: float, order: str, snake: bool) -> ScanPoints:
    """Setpoints and point order; positions row-major (y outer), angle index ``n // 2`` at ``eta_centre``."""
    if order not in ("angle-outer", "position-outer"):
        raise PlanError(f"order {order!r} is unknown: use 'angle-outer' (the paper's) or 'position-outer'")
    ny, nx = (int(v) for v in geo.raster_shape)
    if nx < 1 or ny < 1 or geo.n_angles < 2:
        raise PlanError(f"raster {ny} x {nx} with {geo.n_angles} angles: need at least 1 x 1 positions and 2 angles")
    sx, sy = geo.raster_step_m
    ix, iy = np.meshgrid(np.arange(nx), np.arange(ny))
    if snake:
        ix[1::2] = ix[1::2, ::-1]
    x = x_centre + (ix.ravel() - (nx - 1) / 2) * sx / x_unit_m
    y = y_centre + (iy.ravel() - (ny - 1) / 2) * sy / y_unit_m
    eta = eta_centre_deg + (np.arange(geo.n_angles) - geo.n_angles // 2) * geo.rocking_step_deg
    a, p = np.meshgrid(np.arange(geo.n_angles), np.arange(nx * ny), indexing="ij")
    if order == "position-outer":
        a, p = a.T, p.T
    return ScanPoints(a.ravel(), p.ravel(), x, y, eta)

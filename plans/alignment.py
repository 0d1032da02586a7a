"""Alignment plans for the start of a beamtime: find the Bragg peak, centre the raster on the crystal.

Both are ordinary bluesky plans (recorded runs, detector frames in HDF5 like any scan) that end by
moving to what they found and return it, so ``RE(find_bragg_peak(...))`` leaves the goniometer on
the peak and ``bragg_ptycho_scan(..., eta_centre=<returned value>)`` is centred on it.
"""
from __future__ import annotations

import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.callbacks.core import CallbackBase
from bluesky.callbacks.fitting import PeakStats

from .checks import PlanError, angle_unit_deg, check_targets
from .axes import awaited, is_async, read_axis
from .detectors import prepares
from .moves import MOVE_TIMEOUT_S, move, timed_step


def _total_key(detector):
    """Plan stub: the data key of the detector's total counts per frame, read in every event."""
    key = f"{detector.name}_total"
    if prepares(detector):
        raise PlanError(f"detector {detector.name!r} is an ophyd-async StandardDetector, whose frames go to files; "
                        f"alignment fits a reading in each event: pass a device that reads {key!r} (a stats or "
                        "ROI-sum signal of the camera)")
    keys = (yield from awaited(detector.describe)) if is_async(detector) else detector.describe()
    if key not in keys:
        raise PlanError(f"detector {detector.name!r} has no {key!r} reading (total counts per frame); "
                        "alignment needs an integrated-intensity signal")
    return key


def find_bragg_peak(detector, rocking, *, centre: float | None = None, half_range: float = 0.2, num: int = 41,
                    move_timeout: float = MOVE_TIMEOUT_S, md: dict | None = None):
    """Rocking scan around ``centre`` (deg), fit the peak, move there; returns the peak position (deg).

    The peak is the centre of a Gaussian fit (bluesky's ``PeakStats``), falling back to the
    centre of mass when the fit fails. Refuses to move when no peak stands out of the background
    (maximum under 3 times the median), since then the crystal is not in the beam. Each move waits
    at most ``move_timeout`` s (:func:`plans.moves.move`).
    """
    ax = yield from read_axis(rocking)                      # ophyd or ophyd-async
    u = angle_unit_deg(ax)                                  # degrees per motor unit
    key = yield from _total_key(detector)
    c = ax.position * u if centre is None else float(centre)
    if num < 5 or not half_range > 0:
        raise PlanError(f"num={num}, half_range={half_range}: use at least 5 points over a positive range")
    lo, hi = (c - half_range) / u, (c + half_range) / u     # in the motor's units
    check_targets(ax, [lo, hi], "the rocking scan")
    ps = PeakStats(rocking.name, key)
    _md = {"plan_name": "find_bragg_peak", "purpose": "alignment", **(md or {})}
    scan = bp.scan([detector], rocking, lo, hi, num, per_step=timed_step(move_timeout, "the rocking scan"), md=_md)
    yield from bpp.subs_wrapper(scan, ps)
    y = np.asarray(ps.y_data, float)
    if y.size == 0 or y.max() < 3 * max(np.median(y), 1.0):
        raise PlanError(f"no Bragg peak between {c - half_range:g} and {c + half_range:g} deg (max "
                        f"{y.max() if y.size else 0:g} counts vs median {np.median(y) if y.size else 0:g}); "
                        "widen half_range, check the energy, or move the crystal into the beam")
    peak = ps.cen if ps.cen is not None and abs(ps.cen * u - c) <= half_range else ps.com
    peak = float(peak)
    yield from move(rocking, peak, timeout=move_timeout, what="the move to the Bragg peak")
    return peak * u


class _MapCollector(CallbackBase):
    def __init__(self, keys):
        super().__init__()
        self.keys, self.rows = keys, []

    def event(self, doc):
        self.rows.append([doc["data"][k] for k in self.keys])


def centre_raster(detector, x, y, *, x_range: tuple[float, float], y_range: tuple[float, float], num: int = 11,
                  move_timeout: float = MOVE_TIMEOUT_S, md: dict | None = None):
    """Coarse intensity map over ``x_range`` x ``y_range`` (motor units); move to the crystal's centre.

    The centre is the intensity-weighted centroid of the points brighter than half the maximum
    (the crystal, not the background). Returns ``(x, y)`` in motor units. Each move waits at most
    ``move_timeout`` s.
    """
    key = yield from _total_key(detector)
    for m, r in ((x, x_range), (y, y_range)):
        check_targets((yield from read_axis(m)), r, "the alignment map")
    col = _MapCollector([x.name, y.name, key])
    _md = {"plan_name": "centre_raster", "purpose": "alignment", **(md or {})}
    yield from bpp.subs_wrapper(
        bp.grid_scan([detector], y, y_range[0], y_range[1], num, x, x_range[0], x_range[1], num,
                     per_step=timed_step(move_timeout, "the alignment map"), md=_md), col)
    a = np.asarray(col.rows, float)
    w = a[:, 2] - np.median(a[:, 2])
    bright = w >= 0.5 * w.max() if w.max() > 0 else np.zeros(len(w), bool)
    if not bright.any():
        raise PlanError("the intensity map is flat: no crystal in the mapped area; map a wider area")
    cx = float(np.average(a[bright, 0], weights=w[bright]))
    cy = float(np.average(a[bright, 1], weights=w[bright]))
    yield from move(x, cx, y, cy, timeout=move_timeout, what="the move to the crystal's centre")
    return cx, cy

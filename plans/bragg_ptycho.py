"""``bragg_ptycho_scan``: a 2D raster times a rocking curve in one bluesky run.

What a run holds, so that the run alone is enough to reconstruct it (``bp-plugin export``):

- start document: ``bp_geometry`` (``ExperimentGeometry.to_dict()``: energy, reflection, distance,
  pixel, crop, raster, angles, intended up-sampling, ...) and ``bp_scan`` (motor names and units,
  centres, order, snake, the ROI of the crop on the detector, the image data key, the number of
  points, the detector's count time); ``bp_sim`` (preset, seed) when the devices are simulated;
- one event per point in the ``primary`` stream: the rocking and raster motors' readbacks, the
  detector's total counts, ``bp_index_angle`` and ``bp_index_pos`` (the point's place in the
  ``[n_angles, n_positions]`` dataset), and the frame as external data (StreamDatum into the
  detector's HDF5 file).
"""
from __future__ import annotations

import math

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from ophyd import Component as Cpt
from ophyd import Device, Signal

from bp_plugin.scan_document import ScanDocument

from .checks import (PlanError, angle_unit_deg, check_detector, check_sampling, check_targets, length_unit_m,
                     resolve_geometry, scan_points)
from .axes import read_axis
from .detectors import close_detector, detector_count_time, open_detector, stage_rest
from .moves import MOVE_TIMEOUT_S, check_move_timeout, move



class ScanIndex(Device):
    """Where a point belongs in the dataset: angle and position indices (read in every event)."""

    angle = Cpt(Signal, value=0, kind="normal")
    pos = Cpt(Signal, value=0, kind="normal")


def bragg_ptycho_scan(detectors, rocking, x, y, geometry, *, eta_centre: float | str | None = None,
                      x_centre: float = 0.0, y_centre: float = 0.0, order: str = "angle-outer",
                      snake: bool = False, count_time: float | None = None, roi_origin=None,
                      move_timeout: float = MOVE_TIMEOUT_S, md: dict | None = None):
    """Raster ``x`` x ``y`` at each angle of a rocking curve of ``rocking`` (or the other way round).

    Args:
        detectors: list of detectors; the first one must give 2D frames (the diffraction).
        rocking: the goniometer rocking axis (any angle unit its EGU names).
        x, y: raster axes (any length unit: um, mm, nm, m), lab x and y of the sample. The three
            are ophyd or ophyd-async motors (:mod:`plans.axes`).
        geometry: ``ExperimentGeometry`` or a dict of its fields (no default: it is the
            experiment's, never a simulated preset's); its raster
            (shape, step), rocking (n_angles, step), crop and intended up-sampling define the scan.
        eta_centre: rocking angle (deg) of the central angle index (``n_angles // 2``); default the
            computed Bragg angle; ``"current"``: where the rocking motor is now (after
            :func:`plans.alignment.find_bragg_peak` moved it to the measured peak, as a queue's
            previous item does).
        x_centre, y_centre: raster centre in the motors' units.
        order: "angle-outer" (a full raster per angle, the paper's order) or "position-outer"
            (a full rocking curve per position).
        snake: reverse every other raster row.
        count_time: exposure (s) set on the detector before the scan (an ophyd-async detector's
            ``TriggerInfo.livetime``); default: as it is.
        roi_origin: (row, col) of the crop's corner on the detector; default centred.
        move_timeout: seconds a point's move may take; a motor that has not arrived by then ends
            the run as failed, with a reason naming it, its target and where it is
            (:func:`plans.moves.move`; frames measured before stay on disk).
        md: extra start-document metadata.

    Raises:
        PlanError: before any motion, for limits (as the control system has them now), sampling,
            an unreachable Bragg angle, a wrong detector or inconsistent arguments.
    """
    detectors = list(detectors)
    if not detectors:
        raise PlanError("no detector given: pass the area detector first in the list")
    geo = resolve_geometry(geometry)
    # units, limits and positions as the control system has them now (ophyd or ophyd-async)
    ax_eta = yield from read_axis(rocking)
    ax_x = yield from read_axis(x)
    ax_y = yield from read_axis(y)
    ueta = angle_unit_deg(ax_eta)                   # degrees per rocking-motor unit
    ux, uy = length_unit_m(ax_x), length_unit_m(ax_y)
    check_sampling(geo)
    tb_deg = math.degrees(geo.theta_bragg_rad)
    if isinstance(eta_centre, str) and eta_centre != "current":
        raise PlanError(f"eta_centre {eta_centre!r}: give an angle in deg, 'current' (where {rocking.name} is) "
                        "or nothing (the computed Bragg angle)")
    eta_c = (tb_deg if eta_centre is None else ax_eta.position * ueta if eta_centre == "current"
             else float(eta_centre))
    if abs(eta_c - tb_deg) > 5.0:
        raise PlanError(f"eta_centre {eta_c:g} deg is {eta_c - tb_deg:+.2f} deg from the computed Bragg angle "
                        f"{tb_deg:.4f} deg; check the energy and reflection or re-run find_bragg_peak")
    if count_time is not None and not count_time > 0:
        raise PlanError(f"count_time {count_time} s: give a positive exposure")
    check_move_timeout(move_timeout)
    pts = scan_points(geo, x_centre=x_centre, y_centre=y_centre, x_unit_m=ux, y_unit_m=uy, eta_centre_deg=eta_c,
                      order=order, snake=snake)
    eta_motor = [float(v) / ueta for v in pts.eta]    # the rocking setpoints in the motor's units
    check_targets(ax_eta, eta_motor, "the rocking curve")
    check_targets(ax_x, pts.x, "the raster")
    check_targets(ax_y, pts.y, "the raster")
    # the detector last: an ophyd-async one is staged and prepared to describe its frames
    det = detectors[0]
    keys, opened = yield from open_detector(det, count_time)
    try:
        key, frame_shape, roi = check_detector(det, keys, geo, roi_origin)
    except PlanError:
        yield from close_detector(det, opened)
        raise

    index = ScanIndex(name="bp_index")
    n_points = len(pts.angle_index)
    ct = count_time if count_time is not None or opened else detector_count_time(det)
    scan_md = ScanDocument(
        n_points=n_points, n_angles=geo.n_angles, n_positions=len(pts.x), raster_shape=geo.raster_shape,
        order=order, snake=snake, rocking_motor=rocking.name, x_motor=x.name, y_motor=y.name,
        x_unit_m=ux, y_unit_m=uy, x_centre=x_centre, y_centre=y_centre, eta_centre_deg=eta_c,
        rocking_unit_deg=ueta, eta_setpoints_deg=pts.eta, x_setpoints=pts.x, y_setpoints=pts.y,
        detector=det.name, image_key=key,
        frame_shape=frame_shape, roi_origin=roi, count_time_s=ct).to_dict()
    _md = {
        "plan_name": "bragg_ptycho_scan", "technique": "bragg-ptychography",
        "detectors": [d.name for d in detectors], "motors": [rocking.name, x.name, y.name],
        "num_points": n_points, "num_intervals": n_points - 1,
        "plan_args": {"geometry": geo.to_dict(), "order": order, "snake": snake},
        "bp_geometry": geo.to_dict(), "bp_scan": scan_md,
        "hints": {"dimensions": [([rocking.name], "primary"), ([x.name], "primary"), ([y.name], "primary")]},
    }
    sim_md = getattr(det, "sim_metadata", None)
    if sim_md:
        _md["bp_sim"] = dict(sim_md)
    _md.update(md or {})

    @bpp.run_decorator(md=_md)
    def inner():
        if count_time is not None and not opened:      # an opened one has it from its preparation
            yield from bps.mv(det.count_time, count_time)
        last = {}
        for ia, ip in zip(pts.angle_index, pts.position_index):
            # a checkpoint per point: Ctrl-C or a suspender (beam dump) pauses here, and a resumed
            # scan repeats only the point it was at
            yield from bps.checkpoint()
            moves = []
            for motor, target in ((rocking, eta_motor[ia]), (x, pts.x[ip]), (y, pts.y[ip])):
                if last.get(motor.name) != target:
                    moves += [motor, float(target)]
                    last[motor.name] = target
            if moves:
                yield from move(*moves, timeout=move_timeout, what=f"point {ia}, {ip} of the scan")
            yield from bps.mv(index.angle, int(ia), index.pos, int(ip))
            yield from bps.trigger_and_read([*detectors, rocking, x, y, index])

    return (yield from stage_rest(inner(), detectors, [det] if opened else []))

"""``topo_scan``: DF-XRM topo-tomography, projections around Q (the sample turns about Q; a phi rocking at each omega).

Turning the sample about the scattering vector keeps it in Bragg; at each omega the plan rocks
phi across the grain's tilts so that the sum of the frames is the integrated intensity, a
projection of the grain's diffracting volume along the diffracted beam. All in one run:

- start document: what a mosaicity scan records (``dfxrm_geometry``, ``dfxrm_scan`` with
  ``kind = "topotomo"``, ``axes = ["omega", "phi"]``), plus ``omega_motor``, ``omegas_deg`` (in
  scan order), ``n_projections``, ``projection_points`` (frames per omega) and ``tth_deg``;
- one event per frame, the omegas in order, each with the camera, omega, phi and
  ``dfxrm_projection`` (the projection's index).

:func:`bp_plugin.dfxrm_batch.topo_shape` reconstructs the grain's shape from the recorded frames.
"""
from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from ophyd import Signal

from bp_plugin.dfxrm.topotomo import coverage_problem

from .axes import read_axis
from .checks import PlanError, angle_unit_deg, check_targets
from .dfxrm import _check_axis, _check_camera, _geometry, _metadata, _resolution, _with_exposure
from .moves import MOVE_TIMEOUT_S, check_move_timeout, move

#: a default series: a full turn (the tilted rays' blur averages out: bp_plugin.dfxrm.topotomo)
OMEGA_STEP_DEG = 4.0


def topo_scan(detectors, omega, phi, geometry, omegas_deg=None, *, phi_range_deg=(-0.1, 0.1), n_phi: int = 21,
              count_time: float | None = None, background_counts: float | None = None,
              resolution_deg: dict | None = None, move_timeout: float = MOVE_TIMEOUT_S, md: dict | None = None):
    """A phi rocking curve at each of ``omegas_deg`` of the rotation about Q.

    Args:
        detectors: the camera first (a near-field camera that takes the whole diffracted beam).
        omega: the rotation about Q (deg).
        phi: the rocking motor (deg).
        geometry: :class:`DfxrmGeometry` or a dict of its fields.
        omegas_deg: the rotation's positions, strictly monotonic, spanning at least 180 deg
            (default: a full turn in steps of :data:`OMEGA_STEP_DEG`).
        phi_range_deg: the rocking's (start, stop) offsets from the reference (deg): wide enough
            to hold every sub-grain's tilt at every omega, or the projections miss them.
        n_phi: rocking points (a step at most 2.5 resolution sigmas, as every DF-XRM scan).
        count_time, background_counts, resolution_deg, move_timeout, md: as
            :func:`plans.dfxrm.mosaicity_scan`'s.

    Raises:
        PlanError: before any motion, for omegas outside the axis's limits, not monotonic or
            spanning under 180 deg, and everything a mosaicity scan refuses.
    """
    detectors, det, key, frame_shape = yield from _check_camera(detectors, count_time)
    geo = _geometry(geometry)
    res = _resolution(det, resolution_deg)
    p = yield from _check_axis(phi, "phi", phi_range_deg, n_phi, geo.phi0_deg, res.get("phi"))
    if isinstance(omega, str) or not hasattr(omega, "name"):
        raise PlanError(f"omega: {omega!r} is not a motor; pass the rotation about Q (e.g. microscope.omega)")
    ax_o = yield from read_axis(omega)
    if angle_unit_deg(ax_o, "omega") != 1.0:
        raise PlanError(f"omega motor {omega.name!r} has units {ax_o.egu!r}; give the rotation in degrees")
    om = np.arange(0.0, 360.0, OMEGA_STEP_DEG) if omegas_deg is None else np.asarray(omegas_deg, float).ravel()
    if om.size > 1 and np.all(np.isfinite(om)) and not (np.all(np.diff(om) > 0) or np.all(np.diff(om) < 0)):
        raise PlanError("omegas must be strictly increasing or decreasing (each projection once, in order)")
    why = coverage_problem(om)
    if why:
        raise PlanError(f"omegas: {why} (default: a full turn in {OMEGA_STEP_DEG:g} deg steps)")
    check_targets(ax_o, om, "the projections")
    check_move_timeout(move_timeout)
    extra = {"omega_motor": omega.name, "omegas_deg": om.tolist(), "n_projections": int(om.size),
             "projection_points": len(p), "tth_deg": float(geo.tth_ref_deg)}
    _md = _metadata("topotomo", det, key, frame_shape, geo, ("omega", "phi"), (omega, phi), (0.0, geo.phi0_deg),
                    (om.size, len(p)), count_time=count_time, background=background_counts, resolution=res,
                    extra=extra, md=md)
    _md["plan_name"] = "dfxrm_topo_scan"
    index = Signal(name="dfxrm_projection", value=0)

    @bpp.stage_decorator(detectors)
    @bpp.run_decorator(md=_md)
    def inner():
        for k, o in enumerate(om):
            yield from bps.checkpoint()          # a pause during the turn rewinds here (layer_scan's reason)
            yield from move(omega, float(o), timeout=move_timeout, what=f"the turn to projection {k}")
            yield from bps.mv(index, k)
            for pv in p:
                yield from bps.checkpoint()
                yield from move(phi, float(pv), timeout=move_timeout, what=f"projection {k}, phi {pv:g}")
                yield from bps.trigger_and_read([*detectors, omega, phi, index])

    return (yield from _with_exposure(det, count_time, inner()))

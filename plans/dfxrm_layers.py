"""``layer_scan``: DF-XRM in 3D, layer by layer (a line beam lights one layer; the sample's height steps).

At each height of the sample's beam-normal axis a phi x chi mosaicity grid (with the 2theta arm:
a 2theta x phi x chi combined grid, for the strain volume too), all in one run:

- start document: what a mosaicity scan records (``dfxrm_geometry``, ``dfxrm_scan`` with
  ``kind = "layers"``), plus ``z_motor``, ``heights_m`` (the layers' heights, m, in scan order),
  ``n_layers``, ``layer_points`` (frames per layer) and ``tth_deg`` (the 2theta the layers are
  imaged at, which sets their shift on the camera: :mod:`bp_plugin.dfxrm.layers`);
- one event per frame, the layers in order, each event with the camera, the scanned angles (phi,
  chi; and 2theta), the height axis's readback and ``dfxrm_layer`` (the layer's index).

:func:`bp_plugin.dfxrm_batch.layer_volumes` turns the recorded frames into volumes.
"""
from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from ophyd import Signal

from .axes import read_axis
from .checks import PlanError, check_targets, length_unit_m
from .dfxrm import _check_axis, _check_camera, _geometry, _metadata, _resolution, _with_exposure
from .moves import MOVE_TIMEOUT_S, check_move_timeout, move


def layer_scan(detectors, z, phi, chi, geometry, heights, *, phi_range_deg=(-0.07, 0.07), n_phi: int = 29,
               chi_range_deg=(-0.07, 0.07), n_chi: int = 15, snake: bool = False, count_time: float | None = None,
               background_counts: float | None = None, resolution_deg: dict | None = None, order: int = 2,
               tth=None, tth_range_deg=(-0.02, 0.02), n_tth: int = 7, move_timeout: float = MOVE_TIMEOUT_S,
               md: dict | None = None):
    """A mosaicity scan (phi outer, chi inner) at each of ``heights`` of ``z``; with ``tth``, a
    combined scan (2theta outer, then phi, chi) at each: the strain volume too.

    Args:
        detectors: the camera first.
        z: the sample's height axis, along the beam-normal direction (any length unit its EGU names).
        phi, chi: the tilt motors (deg).
        geometry: :class:`DfxrmGeometry` or a dict of its fields.
        heights: the layers' positions of ``z``, in its units, strictly monotonic.
        phi_range_deg, chi_range_deg, n_phi, n_chi, snake, count_time, background_counts,
            resolution_deg, order, move_timeout, md: as :func:`plans.dfxrm.mosaicity_scan`'s.
        tth, tth_range_deg, n_tth: the 2theta arm and its points per layer (None: no strain), as
            :func:`plans.dfxrm.combined_scan`'s.

    Raises:
        PlanError: before any motion, for heights outside ``z``'s limits, heights that are not
            strictly monotonic, and everything a mosaicity scan refuses.
    """
    detectors, det, key, frame_shape = yield from _check_camera(detectors, count_time)
    geo = _geometry(geometry)
    res = _resolution(det, resolution_deg)
    p = yield from _check_axis(phi, "phi", phi_range_deg, n_phi, geo.phi0_deg, res.get("phi"))
    c = yield from _check_axis(chi, "chi", chi_range_deg, n_chi, geo.chi0_deg, res.get("chi"))
    t = None if tth is None else (yield from _check_axis(tth, "tth", tth_range_deg, n_tth, geo.tth_ref_deg,
                                                          res.get("tth")))
    if isinstance(z, str) or not hasattr(z, "name"):
        raise PlanError(f"layers: {z!r} is not a motor; pass the sample's height positioner (e.g. microscope.z)")
    ax_z = yield from read_axis(z)
    uz = length_unit_m(ax_z)
    h = np.asarray(heights, float).ravel()
    if h.size < 1 or not np.all(np.isfinite(h)):
        raise PlanError(f"heights {heights!r}: give one or more finite positions of {z.name} ({ax_z.egu})")
    if h.size > 1 and not (np.all(np.diff(h) > 0) or np.all(np.diff(h) < 0)):
        raise PlanError(f"heights of {z.name} must be strictly increasing or decreasing (each layer once, in order)")
    check_targets(ax_z, h, "the layers")
    check_move_timeout(move_timeout)
    n_per = len(p) * len(c) * (1 if t is None else len(t))
    extra = {"z_motor": z.name, "heights_m": [float(v) * uz for v in h], "n_layers": int(h.size),
             "layer_points": n_per, "n_points": n_per * int(h.size), "tth_deg": float(geo.tth_ref_deg)}
    if t is None:
        axes, motors, centre, shape = ("phi", "chi"), (phi, chi), (geo.phi0_deg, geo.chi0_deg), (len(p), len(c))
    else:
        axes, motors = ("tth", "phi", "chi"), (tth, phi, chi)
        centre, shape = (geo.tth_ref_deg, geo.phi0_deg, geo.chi0_deg), (len(t), len(p), len(c))
    _md = _metadata("layers", det, key, frame_shape, geo, axes, motors, centre, shape, count_time=count_time,
                    background=background_counts, resolution=res, order=order, extra=extra, md=md)
    _md["plan_name"] = "dfxrm_layer_scan"
    layer = Signal(name="dfxrm_layer", value=0)

    @bpp.stage_decorator(detectors)
    @bpp.run_decorator(md=_md)
    def inner():
        for k, hz in enumerate(h):
            # a pause during the layer's move rewinds to here, not to the last point of the layer
            # before (which would be measured twice and shift every later frame's layer)
            yield from bps.checkpoint()
            yield from move(z, float(hz), timeout=move_timeout, what=f"the move to layer {k}")
            yield from bps.mv(layer, k)
            for tv in ([None] if t is None else t):
                if tv is not None:
                    yield from bps.checkpoint()
                    yield from move(tth, float(tv), timeout=move_timeout, what=f"layer {k}, 2theta {tv:g}")
                for i, pv in enumerate(p):
                    for cv in (c[::-1] if snake and i % 2 else c):
                        yield from bps.checkpoint()
                        yield from move(phi, float(pv), chi, float(cv), timeout=move_timeout,
                                        what=f"layer {k}, point ({pv:g}, {cv:g})")
                        yield from bps.trigger_and_read([*detectors, *motors, z, layer])

    return (yield from _with_exposure(det, count_time, inner()))

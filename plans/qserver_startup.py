"""Startup module for bluesky-queueserver: the simulated beamline and the project's plans.

Use it with ``start-re-manager --startup-module plans.qserver_startup`` (and
``qserver-list-plans-devices --startup-module plans.qserver_startup`` to list what it offers).
Environment: ``BP_SIM_PRESET`` (tiny | small | paper, default small), ``BP_DETECTOR_DIR`` (where the
detector writes, default out/detector). At a real beamline, replace the devices by the beamline's
ophyd devices and keep the plan imports.
"""
import os

from bluesky.plans import count, grid_scan, rel_scan, scan  # noqa: F401  (standard plans for the queue)

from plans.alignment import centre_raster, find_bragg_peak  # noqa: F401
from plans.bragg_ptycho import bragg_ptycho_scan  # noqa: F401
from sim_devices.beamline import build_beamline

_beamline = build_beamline(os.environ.get("BP_SIM_PRESET", "small"),
                           write_dir=os.environ.get("BP_DETECTOR_DIR", "out/detector"))
sample_x, sample_y, sample_z = _beamline.sample_x, _beamline.sample_y, _beamline.sample_z
piezo_x, piezo_y = _beamline.piezo_x, _beamline.piezo_y
eta, tth, det_dist = _beamline.eta, _beamline.tth, _beamline.det_dist
maxipix = _beamline.detector

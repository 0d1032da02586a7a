"""Startup module for bluesky-queueserver: a RunEngine that records, the devices and the project's plans.

Use it with ``start-re-manager --startup-module plans.qserver_startup --user-group-permissions
plans/qserver_permissions.yaml`` (and ``qserver-list-plans-devices --startup-module
plans.qserver_startup`` to list what it offers). What it sets up, from the environment:

- ``RE``: a RunEngine with ``call_returns_result=True`` (a plan's return value, e.g. the peak of
  ``find_bragg_peak``, reaches the queue's history).
- ``BP_TILED_URL`` (and the writer key in ``BP_TILED_API_KEY``): every run is recorded in that Tiled
  server through bluesky's TiledWriter, behind a queue (the scan never waits for Tiled).
- ``BP_RECONSTRUCTOR`` (``tcp://HOST:PORT``): Bragg and DF-XRM runs stream their frames to that
  online reconstructor.
- ``BP_SIM_PRESET`` (tiny | small | paper, default small), ``BP_DFXRM_PRESET`` (default tiny) and
  ``BP_DETECTOR_DIR`` (where the detectors write, default out/detector): the simulated Bragg
  beamline and DF-XRM microscope. At a real beamline, replace these devices by the beamline's
  ophyd or ophyd-async devices and keep the rest (a detector without the simulated one's frame hook
  streams from its HDF5 files, :func:`streaming.taps.frame_tap`).

A plan refuses a bad item before anything moves (its message is in the queue's history); the queue
server then stops with the item back at the queue's front, unless the queue mode says
``ignore_failures`` (``qserver queue mode set ignore_failures True``): then it goes on with the next
item, as ``tests/test_queue_server.py`` runs it. A queue item hands its alignment on to the next one: ``find_bragg_peak`` leaves ``eta`` on the
peak and ``bragg_ptycho_scan(..., eta_centre="current")`` centres the rocking curve there.
The geometry of an item is a dict of :class:`bp_plugin.geometry.ExperimentGeometry` fields
(``bp-plugin geometry --json`` prints one under ``geometry``).
"""
import os

from bluesky import RunEngine
from bluesky.plans import count, grid_scan, rel_scan, scan  # noqa: F401  (standard plans for the queue)

from plans.alignment import centre_raster, find_bragg_peak  # noqa: F401
from plans.bragg_ptycho import bragg_ptycho_scan  # noqa: F401
from plans.dfxrm import combined_scan, mosaicity_scan, strain_scan, weak_beam_series  # noqa: F401
from plans.monitor import buffered
from sim_devices.beamline import build_beamline
from sim_devices.dfxrm_microscope import SimDfxrmMicroscope

_detector_dir = os.environ.get("BP_DETECTOR_DIR", "out/detector")
_beamline = build_beamline(os.environ.get("BP_SIM_PRESET", "small"), write_dir=_detector_dir)
sample_x, sample_y, sample_z = _beamline.sample_x, _beamline.sample_y, _beamline.sample_z
piezo_x, piezo_y = _beamline.piezo_x, _beamline.piezo_y
eta, tth, det_dist = _beamline.eta, _beamline.tth, _beamline.det_dist
maxipix = _beamline.detector
_microscope = SimDfxrmMicroscope(os.environ.get("BP_DFXRM_PRESET", "tiny"), write_dir=_detector_dir)
phi, chi, dfxrm_tth, dfxrm_cam = _microscope.phi, _microscope.chi, _microscope.tth, _microscope.detector

RE = RunEngine({}, call_returns_result=True)
_callbacks = []


def _subscribe(cb) -> None:
    cb = buffered(cb)
    _callbacks.append(cb)
    RE.subscribe(cb)


if os.environ.get("BP_TILED_URL"):
    from bluesky_tiled_plugins import TiledWriter

    from bp_plugin.tiled_server import connect

    _client = connect(os.environ["BP_TILED_URL"], os.environ.get("BP_TILED_API_KEY"))
    _subscribe(TiledWriter(_client, batch_size=10))

if os.environ.get("BP_RECONSTRUCTOR"):
    from streaming.dfxrm_sender import DfxrmFrameStreamer
    from streaming.sender import BlueskyFrameStreamer, FrameSender
    from streaming.taps import frame_tap

    _sender = FrameSender(os.environ["BP_RECONSTRUCTOR"])
    # frame_tap: a real detector's frames are read back from its HDF5 files (SWMR) as they are announced
    _subscribe(BlueskyFrameStreamer(_sender, frame_tap(maxipix)))
    _subscribe(DfxrmFrameStreamer(_sender, frame_tap(dfxrm_cam)))

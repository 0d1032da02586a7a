"""The plans with ophyd-async motors: the same Bragg scan and alignment as with ophyd's.

ophyd-async's ``SimMotor``s (units in their readback's description, positions only through the event
loop) drive the simulated detector (``SimBraggBeamline.drive_with``, through each motor's readback
subscription); the rocking axis in millidegrees, so its units are read and converted, not assumed.
"""
import math
from dataclasses import replace

import numpy as np
import pytest

ophyd_async = pytest.importorskip("ophyd_async", reason="ophyd-async (dev extra) is not installed")

from bluesky import RunEngine  # noqa: E402
from bluesky.run_engine import call_in_bluesky_event_loop  # noqa: E402
from ophyd_async.core import init_devices  # noqa: E402
from ophyd_async.sim import SimMotor  # noqa: E402

from plans.alignment import find_bragg_peak  # noqa: E402
from plans.bragg_ptycho import bragg_ptycho_scan  # noqa: E402
from plans.checks import PlanError  # noqa: E402
from sim_devices.beamline import build_beamline  # noqa: E402
from sim_devices.presets import get_preset  # noqa: E402


class Readback:
    """The last readback an ophyd-async motor reported, times ``scale``: what the simulated
    detector reads as the axis's ``position`` (in the units of the axis it stands for)."""

    def __init__(self, motor, scale: float = 1.0):
        self.scale, self.position = scale, None

        async def subscribe():                # ophyd-async subscribes in its event loop only
            motor.user_readback.subscribe_reading(self._update)
        call_in_bluesky_event_loop(subscribe())

    def _update(self, reading):
        self.position = float(next(iter(reading.values()))["value"]) * self.scale


@pytest.fixture
def setup(tmp_path):
    p = get_preset("tiny")
    bl = build_beamline(replace(p, position_jitter_m=0.0), write_dir=tmp_path, noise=False, background_cps=0.0)
    RE = RunEngine(call_returns_result=True)  # before init_devices: the devices join its event loop
    tb_mdeg = math.degrees(bl.geometry.theta_bragg_rad) * 1e3
    with init_devices():
        eta = SimMotor(units="mdeg", initial_value=tb_mdeg)
        piezo_x = SimMotor(units="um")
        piezo_y = SimMotor(units="um")
    bl.drive_with(eta=Readback(eta, 1e-3), piezo_x=Readback(piezo_x), piezo_y=Readback(piezo_y))
    return RE, bl, eta, piezo_x, piezo_y


def test_a_scan_on_ophyd_async_motors_in_mdeg_and_um(setup):
    RE, bl, eta, px, py = setup
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bragg_ptycho_scan([bl.detector], eta, px, py, bl.geometry, snake=True))
    start = docs[0][1]
    sp = start["bp_scan"]
    assert sp["rocking_unit_deg"] == pytest.approx(1e-3) and sp["x_unit_m"] == pytest.approx(1e-6)
    events = [d for n, d in docs if n == "event"]
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "success" and len(events) == 300
    sim = bl.experiment.simulator
    rs, cs = bl.crop_slices()
    valid = bl.mask[rs, cs]
    from sim_devices.detector_file import read_detector_file

    frames = read_detector_file(bl.detector.file_history[-1])
    for k in range(0, 300, 37):
        d = events[k]["data"]
        # the readbacks (mdeg, um) at their setpoints, and the frame the simulator's there
        assert d["eta"] * 1e-3 == pytest.approx(sp["eta_setpoints_deg"][d["bp_index_angle"]], abs=1e-9)
        assert d["piezo_x"] == pytest.approx(sp["x_setpoints"][d["bp_index_pos"]], abs=1e-9)
        t = np.array([d["piezo_x"] * 1e-6, d["piezo_y"] * 1e-6, 0.0])
        delta = math.radians(d["eta"] * 1e-3) - bl.geometry.theta_bragg_rad
        np.testing.assert_array_equal(frames[k][rs, cs][valid], np.rint(sim.expected_counts(t, [delta])[0])[valid])


def test_alignment_and_refusals_on_ophyd_async_motors(setup):
    RE, bl, eta, px, py = setup
    peak = RE(find_bragg_peak(bl.detector, eta, half_range=0.2, num=21)).plan_result   # deg
    assert abs(peak - math.degrees(bl.geometry.theta_bragg_rad)) < 0.02
    # a raster axis in an angle unit: refused before anything moves, in one line that names it
    with init_devices():
        wrong = SimMotor(name="wrong", units="deg")
    with pytest.raises(PlanError, match="'wrong' has units 'deg', which is no length"):
        RE(bragg_ptycho_scan([bl.detector], eta, wrong, py, bl.geometry))


def test_an_ophyd_async_detector_streams_live_from_its_file_and_exports_from_tiled(setup, tiled_server, tmp_path):
    """An ophyd-async StandardDetector (StreamResource / StreamDatum, a frame per event described as
    (1, rows, cols)): the plan prepares it once (one file), the streamer reads each frame back from
    that file as its event arrives and the reconstructor places all of them live (none recovered at
    the stop), cropped and masked; Tiled records the run and it exports to the same frames."""
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter

    from async_detector import SimFrameDetector
    from bp_plugin.dataset import read_dataset
    from bp_plugin.run_export import run_to_dataset
    from sim_devices.detector_file import read_detector_file
    from streaming.live import LiveOptions
    from streaming.sender import BlueskyFrameStreamer, FrameSender
    from streaming.service import ReconstructorService, ServiceOptions
    from streaming.taps import FileFrameTap, frame_tap

    RE, bl, eta, px, py = setup
    with init_devices():
        cam = SimFrameDetector(bl.detector.frame_source, bl.detector.frame_shape, tiled_server.detector_dir,
                               pixel_size_m=bl.geometry.pixel_size_m)
    svc = ReconstructorService(ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "w", max_runs=1,
                                              device="cpu", live=LiveOptions(final_iterations=4, ml_iterations=1,
                                                                             figures=False)))
    th = svc.start()
    tap = frame_tap(cam, bl.mask)                      # no frame hook: its files
    assert isinstance(tap, FileFrameTap)
    streamer = BlueskyFrameStreamer(FrameSender(svc.address), tap)
    streamer.confirm_timeout_s = 120
    writer = BufferingWrapper(TiledWriter(tiled_server.client(), batch_size=20))
    docs = []
    for cb in (lambda name, doc: docs.append((name, doc)), writer, BufferingWrapper(streamer)):
        RE.subscribe(cb)
    try:
        RE(bragg_ptycho_scan([cam], eta, px, py, bl.geometry))        # the exposure: the camera's own
    finally:
        writer.shutdown(wait=True)
    th.join(180)
    streamer.close()
    start = docs[0][1]
    uid, sp = start["uid"], start["bp_scan"]
    assert sp["image_key"] == "cam" and tuple(sp["frame_shape"]) == bl.detector.frame_shape
    assert sp["count_time_s"] is None and len(cam.file_history) == 1     # prepared once: one file
    st = svc.finished[uid]
    assert st["state"] == "final" and st["rejected"] == 0, st
    assert (st["placed"], st["recovered"]) == (300, 0), st
    assert tap.read == 300
    rs, cs = bl.crop_slices()
    raw = read_detector_file(cam.file_history[0])
    events = [d for n, d in docs if n == "event"]
    order = [(e["data"]["bp_index_angle"], e["data"]["bp_index_pos"]) for e in events]
    spool = np.load(tmp_path / "w" / uid / "frames.npy")
    for k in range(0, 300, 23):
        np.testing.assert_array_equal(spool[order[k]], raw[k][rs, cs].astype(np.float32))
    np.testing.assert_array_equal(np.load(tmp_path / "w" / uid / "mask.npy"), bl.mask[rs, cs])
    out = tmp_path / "async-scan.h5"
    info = run_to_dataset(tiled_server.client()[uid], out, progress=False)
    assert info["complete"] and info["n_frames"] == 300
    ds = read_dataset(out)
    for k in range(0, 300, 29):
        np.testing.assert_array_equal(ds.frames[order[k]], raw[k][rs, cs])


def test_alignment_refuses_an_ophyd_async_camera_in_one_line(setup, tmp_path):
    from async_detector import SimFrameDetector

    RE, bl, eta, px, py = setup
    with init_devices():
        cam = SimFrameDetector(bl.detector.frame_source, bl.detector.frame_shape, tmp_path,
                               pixel_size_m=bl.geometry.pixel_size_m)
    with pytest.raises(PlanError, match="'cam' is an ophyd-async StandardDetector") as e:
        RE(find_bragg_peak(cam, eta, half_range=0.2, num=21))
    assert "\n" not in str(e.value) and not cam.file_history        # refused before anything was written
    # a Bragg scan refused by the detector check (after its preparation: count_time is its livetime)
    # leaves it unstaged, its file closed, nothing moved
    with pytest.raises(PlanError, match="leaves the 172 x 172 frame"):
        RE(bragg_ptycho_scan([cam], eta, px, py, bl.geometry, count_time=0.5, roi_origin=(150, 150)))
    assert cam.count_time_s == 0.5 and cam.file is None and len(cam.file_history) == 1


def test_a_dfxrm_scan_with_an_ophyd_async_camera_gives_live_maps_equal_to_the_batch_ones(tiled_server, tmp_path):
    """The DF-XRM mosaicity scan with an ophyd-async camera (frames in its HDF5 file, a frame per
    event as (1, rows, cols)): every frame reaches the service live through the file tap, and the
    maps it publishes equal the batch maps of the run read back from Tiled."""
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter

    from async_detector import SimFrameDetector
    from bp_plugin.dfxrm_batch import batch_maps, scan_from_run
    from plans.dfxrm import mosaicity_scan
    from sim_devices.dfxrm_microscope import SimDfxrmMicroscope
    from streaming.dfxrm_sender import DfxrmFrameStreamer
    from streaming.live import LiveOptions
    from streaming.sender import FrameSender
    from streaming.service import ReconstructorService, ServiceOptions
    from streaming.taps import frame_tap

    RE = RunEngine(call_returns_result=True)
    mic = SimDfxrmMicroscope("tiny", write_dir=tmp_path / "unused")
    with init_devices():
        cam = SimFrameDetector(mic.detector.frame_source, mic.detector.frame_shape, tiled_server.detector_dir,
                               pixel_size_m=mic.detector.pixel_size_m, count_time_s=mic.preset.count_time_s,
                               dtype=np.uint16)
    svc = ReconstructorService(ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "w", max_runs=1,
                                              device="cpu", tiled_url=tiled_server.url, api_key=tiled_server.api_key,
                                              live=LiveOptions(figures=False, publish_interval_s=0.3)))
    th = svc.start()
    streamer = DfxrmFrameStreamer(FrameSender(svc.address), frame_tap(cam))
    writer = BufferingWrapper(TiledWriter(tiled_server.client(), batch_size=20))
    docs = []
    for cb in (lambda name, doc: docs.append((name, doc)), writer, BufferingWrapper(streamer)):
        RE.subscribe(cb)
    p = mic.preset
    try:
        RE(mosaicity_scan([cam], mic.phi, mic.chi, mic.geometry, phi_range_deg=p.phi_range_deg, n_phi=p.n_phi,
                          chi_range_deg=p.chi_range_deg, n_chi=p.n_chi, resolution_deg=mic.detector.resolution_deg,
                          background_counts=mic.background_counts(p.count_time_s)))
    finally:
        writer.shutdown(wait=True)
    th.join(120)
    streamer.close()
    uid = docs[0][1]["uid"]
    assert docs[0][1]["dfxrm_scan"]["frame_shape"] == list(mic.detector.frame_shape)
    st = svc.finished[uid]
    n = p.n_phi * p.n_chi
    assert st["state"] == "final" and (st["placed"], st["recovered"]) == (n, 0), st
    node = tiled_server.client()["dfxrm"][uid]
    batch = batch_maps(scan_from_run(tiled_server.client()[uid]))         # through the (n, 1, rows, cols) array
    assert np.isfinite(np.asarray(batch["tilt_phi"])).mean() > 0.3      # the grain is mapped, not blank
    for k in ("intensity", "tilt_phi", "tilt_chi", "fwhm_phi"):
        b = np.asarray(batch[k])
        np.testing.assert_allclose(node[k].read(), b, rtol=1e-4, atol=1e-6 * np.nanmax(np.abs(b)), equal_nan=True,
                                   err_msg=k)

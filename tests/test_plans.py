"""Plans on the simulated beamline in a real RunEngine, recorded in a real Tiled server.

The recorded scan uses the ``tiny`` preset without photon noise and without background, so every
recorded frame can be compared exactly with the simulator evaluated at the recorded motor readbacks
(rounded expected counts). The export / reconstruction test uses a noisy scan.
"""
import math
from pathlib import Path
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.callbacks.buffer import BufferingWrapper
from bluesky_tiled_plugins import TiledWriter

from bp_plugin.dataset import read_dataset
from bp_plugin.run_export import run_to_dataset
from bp_plugin.scan_document import run_scan
from bp_plugin.tiled_server import TiledServerError, connect
from plans.alignment import find_bragg_peak
from plans.bragg_ptycho import bragg_ptycho_scan
from plans.checks import PlanError
from plans.replay import dataset_documents, replay, tiled_documents
from sim_devices.beamline import build_beamline
from sim_devices.detector_file import read_detector_file

from gates import FrameGate, Watcher


def record(server, bl, plan_kwargs=None, *, on_start=None, on_event=None):
    """Run bragg_ptycho_scan with a buffered TiledWriter; returns (uid, documents seen)."""
    RE = RunEngine({})
    writer = BufferingWrapper(TiledWriter(server.client(), batch_size=10))
    docs = []
    RE.subscribe(writer)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    if on_start:
        RE.subscribe(on_start, "start")
    if on_event:
        RE.subscribe(on_event, "event")
    try:
        uids = RE(bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.preset.geometry,
                                    **(plan_kwargs or {})))
    finally:
        writer.shutdown(wait=True)
    return (uids[0] if uids else None), docs, RE


@pytest.fixture(scope="module")
def exact_run(tiled_server):
    """A noise-free tiny scan, with a second client polling Tiled while it runs."""
    bl = build_beamline("tiny", write_dir=tiled_server.detector_dir, noise=False, background_cps=0.0)
    started = {}
    gate = FrameGate(at=150)          # the scan waits at event 150 until the second client saw frames
    c = connect(tiled_server.url, tiled_server.api_key)

    def look():   # a second client, polling the run's frames while the scan goes on
        run = c[started["uid"]]
        if run.metadata.get("stop") is None:
            img = run["primary"]["maxipix_image"]
            if img.shape[0]:
                gate.open()
                return img.shape[0], int(np.asarray(img[img.shape[0] - 1]).sum())
        return None

    w = Watcher(look, period_s=0.5)
    w.start()
    try:
        uid, docs, _ = record(tiled_server, bl, on_start=lambda name, doc: started.update(uid=doc["uid"]),
                              on_event=lambda name, doc: gate.passing())
    finally:
        w.stop()
    seen_during = w.seen
    return bl, uid, docs, seen_during


def test_scan_events_frames_and_start_document(exact_run, tiled_server):
    bl, uid, docs, _ = exact_run
    geo = bl.geometry
    n_points = geo.n_angles * int(np.prod(geo.raster_shape))
    events = [d for n, d in docs if n == "event"]
    assert len(events) == n_points == 300
    start = docs[0][1]
    assert start["bp_geometry"] == geo.to_dict() and run_scan(start)[1].n_points == n_points
    assert [n for n, _ in docs].count("stream_datum") == n_points     # one frame per event, on disk
    run = tiled_server.client()[uid]
    assert run.metadata["start"]["bp_geometry"]["crop"] == list(geo.crop)
    img = run["primary"]["maxipix_image"]
    assert img.shape == (n_points, *bl.frame_shape) and img.dtype == np.uint32   # uint32 end to end
    frames = img[::37]
    assert frames.dtype == np.uint32
    # the frames are the simulator's at the recorded readbacks (independent evaluation here)
    sim = bl.experiment.simulator
    rs, cs = bl.crop_slices()
    valid = bl.mask[rs, cs]
    for k, ev in zip(range(0, n_points, 37), events[::37]):
        d = ev["data"]
        t = np.array([d["piezo_x"] * 1e-6, d["piezo_y"] * 1e-6, 0.0])
        delta = math.radians(d["eta"]) - geo.theta_bragg_rad
        expected = np.rint(sim.expected_counts(t, [delta])[0])
        np.testing.assert_array_equal(frames[k // 37][rs, cs][valid], expected[valid])
        assert frames[k // 37][~bl.mask].max() == 0 or frames[k // 37][~bl.mask].max() == bl.preset.detector.hot_value
    # readbacks carry the stage's repeatable position error: same position, same readback
    pos = {}
    for ev in events:
        d = ev["data"]
        pos.setdefault(d["bp_index_pos"], set()).add((d["piezo_x"], d["piezo_y"]))
    assert all(len(v) == 1 for v in pos.values()) and len(pos) == 25


def test_second_client_sees_frames_while_the_scan_runs(exact_run):
    _, _, _, seen = exact_run
    assert seen, "no frame was visible in Tiled before the run ended"
    assert min(n for n, _ in seen) < 300 and all(s >= 0 for _, s in seen)


@pytest.mark.slow
def test_export_reconstructs(tiled_server, tmp_path):
    bl = build_beamline("tiny", write_dir=tiled_server.detector_dir, seed=3)
    uid, _, _ = record(tiled_server, bl, {"snake": True})
    out = tmp_path / "exported.h5"
    t_export = time.perf_counter()
    info = run_to_dataset(tiled_server.client()[uid], out, progress=False)
    t1 = time.perf_counter()
    assert info["complete"] and info["n_frames"] == 300
    ds = read_dataset(out)
    assert ds.measured.all() and ds.frames.dtype == np.uint32
    # the crop of the detector file, frame for frame
    raw = read_detector_file(bl.detector.file_history[-1])
    rs, cs = bl.crop_slices()
    np.testing.assert_array_equal(ds.frames[0, 0], raw[0][rs, cs])
    assert not ds.mask[list(bl.preset.detector.gap_rows), :].any()       # gaps found from the frames
    from sim_devices.diffraction import raster_translations

    setpoints = raster_translations(bl.geometry, snake=True)              # position index = scan order
    err = np.abs(ds.translations_m[:, :2] - setpoints[:, :2])
    assert 0 < err.max() < 5 * bl.preset.position_jitter_m               # readbacks, not setpoints
    from bp_plugin.recon.run import AUTO_CURRICULUM_PER_ANGLE, ReconstructOptions, reconstruct_file

    t0 = time.perf_counter()
    m = reconstruct_file(out, tmp_path / "result.h5", ReconstructOptions(iterations=60, ml_iterations=20,
                                                                         progress=False, figures=False))
    print(f"export {t1 - t_export:.1f} s, reconstruct {time.perf_counter() - t0:.1f} s, metrics {m}")
    # measured on this exported run (seed 3, snake), with the angle curriculum at 5 per angle:
    # object 0.146, eps_zz RMS 2.9e-5, tilts 2.8e-5 rad (without it 0.201, 3.9e-5, 3.4e-5), as good as
    # a scan simulated straight to file (test_engine); thresholds about 30 % above
    assert m["curriculum_iterations"] == AUTO_CURRICULUM_PER_ANGLE * bl.geometry.n_angles
    assert m["object_error"] < 0.19 and m["strain_rms_error"] < 3.8e-5 and m["tilt_rms_error_rad"] < 3.6e-5


@pytest.mark.parametrize("case", ["limits", "sampling", "detector", "bragg", "order"])
def test_bad_plans_fail_before_any_motion(case, tmp_path):
    bl = build_beamline("tiny", write_dir=tmp_path)
    geo = bl.geometry.to_dict()
    det, kw = [bl.detector], {}
    if case == "limits":
        kw, msg = {"x_centre": 49.9}, "outside its limits"
    elif case == "sampling":
        geo.update(upsampling=1, rocking_step_deg=0.05)
        msg = "upsampling="
    elif case == "detector":
        from ophyd.sim import det as point_detector
        det, msg = [point_detector], "no 2D image"
    elif case == "bragg":
        geo.update(energy_kev=1.5)
        msg = "geometry"
    else:
        kw, msg = {"order": "diagonal"}, "order"
    before = {n: m.position for n, m in bl.motors.items()}
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append(name))
    with pytest.raises(PlanError, match=msg) as exc:
        RE(bragg_ptycho_scan(det, bl.eta, bl.piezo_x, bl.piezo_y, geo, **kw))
    assert {n: m.position for n, m in bl.motors.items()} == before and docs == []
    if case == "sampling":
        needed = bl.geometry.__class__.from_dict(geo).upsampling_needed()
        assert f"upsampling={needed}" in str(exc.value) and needed > 1


def test_abort_keeps_every_frame_acquired(tiled_server, tmp_path):
    bl = build_beamline("tiny", write_dir=tiled_server.detector_dir, seed=5)
    RE = RunEngine({})
    n_events = []

    def pause_after_40(name, doc):
        n_events.append(1)
        if len(n_events) == 40:   # an operator's Ctrl-C: from another thread, as a console does
            threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()

    writer = BufferingWrapper(TiledWriter(tiled_server.client(), batch_size=10))
    RE.subscribe(writer)
    RE.subscribe(pause_after_40, "event")
    from bluesky.utils import RunEngineInterrupted

    with pytest.raises(RunEngineInterrupted):
        # position-outer: 40 frames reach only 4 of the 25 positions, so the export must place the others
        RE(bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.preset.geometry,
                             order="position-outer"))
    assert RE.state == "paused"
    (uid,) = RE.abort(reason="test abort")
    writer.shutdown(wait=True)
    frames = read_detector_file(bl.detector.file_history[-1])
    assert 40 <= len(frames) < 300 and frames.dtype == np.uint32 and frames.sum(axis=(1, 2)).min() > 0
    run = tiled_server.client()[uid]
    assert run.metadata["stop"]["exit_status"] == "abort"
    info = run_to_dataset(run, tmp_path / "partial.h5", progress=False, ground_truth=False)
    assert not info["complete"] and info["n_frames"] == run["primary"]["maxipix_image"].shape[0] >= 40
    ds = read_dataset(tmp_path / "partial.h5", allow_partial=True)
    assert ds.measured.sum() == info["n_frames"]
    from sim_devices.diffraction import raster_translations

    unseen = ~ds.measured.any(0)
    assert unseen.sum() >= 20     # positions never reached carry their setpoints
    np.testing.assert_allclose(ds.translations_m[unseen], raster_translations(bl.geometry)[unseen], atol=1e-12)


def test_find_bragg_peak_moves_to_the_peak(tmp_path):
    bl = build_beamline("tiny", write_dir=tmp_path, seed=2)
    tb = math.degrees(bl.geometry.theta_bragg_rad)
    RE = RunEngine({}, call_returns_result=True)
    res = RE(find_bragg_peak(bl.detector, bl.eta, centre=tb + 0.07, half_range=0.2, num=41))
    assert abs(res.plan_result - tb) < bl.geometry.rocking_step_deg           # within one rocking step
    assert bl.eta.position == pytest.approx(res.plan_result)


def test_replay_reemits_frames_from_tiled_and_from_a_dataset(exact_run, tiled_server, tmp_path):
    from plans.monitor import LiveScanMonitor

    bl, uid, docs, _ = exact_run
    got = []
    monitor = LiveScanMonitor(tmp_path / "monitor", progress=False)
    n = replay(tiled_documents(tiled_server.client()[uid]), [lambda name, doc: got.append((name, doc)), monitor])
    assert n == 300 and got[0][0] == "start" and got[-1][0] == "stop"
    # the live monitor's rocking curve peaks at the Bragg angle (central index) and its map is the raster
    assert monitor.last_png.stat().st_size > 10_000
    curve = monitor.rocking_curve()
    assert abs(int(np.argmax(curve)) - bl.geometry.n_angles // 2) <= 1 and monitor.intensity_map().shape == (5, 5)
    ev = [d for name, d in got if name == "event"]
    rs, cs = bl.crop_slices()
    live = [d for name, d in docs if name == "event"]
    raw = read_detector_file(bl.detector.file_history[0], slice(0, 3))
    for k in range(3):
        assert ev[k]["data"]["bp_index_pos"] == live[k]["data"]["bp_index_pos"]
        np.testing.assert_array_equal(ev[k]["data"]["replay_image"], raw[k][rs, cs])
    path = tmp_path / "from_run.h5"
    run_to_dataset(tiled_server.client()[uid], path, progress=False, ground_truth=False)
    t0 = time.monotonic()
    got2 = list(dataset_documents(path, rate=2000.0))
    assert sum(1 for name, _ in got2 if name == "event") == 300 and time.monotonic() - t0 > 300 / 2000 * 0.9


def test_tiled_errors_name_the_fix(tiled_server):
    with pytest.raises(TiledServerError, match="API key"):
        connect(tiled_server.url, "wrong-key")
    with pytest.raises(TiledServerError, match="cannot reach"):
        connect("http://127.0.0.1:9", "key")


def test_a_run_that_is_not_in_tiled_is_named_in_one_line(tiled_server, tmp_path, monkeypatch, capsys):
    from bp_plugin.cli import main

    monkeypatch.setenv("BP_TILED_API_KEY", tiled_server.api_key)
    for argv in (["export", "no-such-run", "--out", str(tmp_path / "x.h5")], ["dfxrm", "maps", "no-such-run", "--out", str(tmp_path / "m")]):
        assert main(argv + ["--tiled-url", tiled_server.url]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no run 'no-such-run' in the Tiled server at" in err[0], err


def test_queueserver_lists_the_plans_and_devices(tmp_path):
    import os

    env = dict(os.environ, BP_SIM_PRESET="tiny", BP_DETECTOR_DIR=str(tmp_path / "det"))
    exe = os.path.join(os.path.dirname(sys.executable), "qserver-list-plans-devices")
    r = subprocess.run([exe, "--startup-module", "plans.qserver_startup", "--file-dir", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import yaml

    listed = yaml.safe_load((tmp_path / "existing_plans_and_devices.yaml").read_text())
    ours = {"bragg_ptycho_scan", "find_bragg_peak", "centre_raster", "mosaicity_scan", "strain_scan", "combined_scan",
            "weak_beam_series"}
    assert ours <= set(listed["existing_plans"])
    assert {"eta", "piezo_x", "piezo_y", "tth", "maxipix", "phi", "chi", "dfxrm_tth", "dfxrm_cam"} \
        <= set(listed["existing_devices"])
    # the shipped permissions let the default group of queue users run every plan of ours
    from bluesky_queueserver.manager.profile_ops import load_allowed_plans_and_devices

    import plans
    allowed, _ = load_allowed_plans_and_devices(
        path_existing_plans_and_devices=str(tmp_path / "existing_plans_and_devices.yaml"),
        path_user_group_permissions=str(Path(plans.__file__).parent / "qserver_permissions.yaml"))
    assert ours <= set(allowed["primary"]), sorted(allowed["primary"])


def test_the_queue_servers_runengine_records_and_hands_the_peak_on(tiled_server, tmp_path):
    """The startup module's RE (call_returns_result) records in the Tiled server of $BP_TILED_URL; an
    alignment item leaves eta on the peak and the next item's scan centres there ('current')."""
    import os

    code = """
from plans.qserver_startup import RE, _callbacks, bragg_ptycho_scan, eta, find_bragg_peak, maxipix, piezo_x, piezo_y
from plans.qserver_startup import _beamline
peak = RE(find_bragg_peak(maxipix, eta, half_range=0.2)).plan_result
r = RE(bragg_ptycho_scan([maxipix], eta, piezo_x, piezo_y, _beamline.geometry.to_dict(), eta_centre="current"))
for cb in _callbacks:
    cb.shutdown(wait=True)
print("RESULT", peak, r.run_start_uids[0], r.exit_status)
"""
    env = dict(os.environ, BP_SIM_PRESET="tiny", BP_DETECTOR_DIR=str(tiled_server.detector_dir),
               BP_TILED_URL=tiled_server.url, BP_TILED_API_KEY=tiled_server.api_key)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _, peak, uid, status = r.stdout.strip().splitlines()[-1].split()
    assert status == "success"
    run = tiled_server.client()[uid]
    s = run_scan(run.metadata["start"])[1]
    assert s.eta_centre_deg == pytest.approx(float(peak))               # centred where the alignment left eta
    assert run["primary"]["maxipix_image"].shape[0] == 300


def test_detector_file_is_readable_while_open(tmp_path):
    bl = build_beamline("tiny", write_dir=tmp_path)
    d = bl.detector
    d.stage()
    try:
        for _ in range(3):
            d.trigger().wait(30)
        with h5py.File(d.file.path, "r", swmr=True) as f:       # another handle, file still open for writing
            assert f["/entry/data/data"].shape[0] == 3
        names = [n for n, _ in d.collect_asset_docs()]
        assert names == ["stream_resource", "stream_datum"] and list(d.collect_asset_docs()) == []
    finally:
        d.unstage()


def test_motor_limits_and_speed():
    from ophyd.utils import LimitError

    from sim_devices.motors import SimAxis

    m = SimAxis(name="m", egu="um", limits=(-1.0, 1.0), velocity=4.0)
    with pytest.raises(LimitError, match="outside the limits"):
        m.set(2.0)
    st = m.set(1.0)
    assert not st.done          # a move at finite speed takes time, like a real stage
    st.wait(5)
    assert m.position == 1.0
    fast = SimAxis(name="f", egu="um", limits=(-1.0, 1.0), readback_jitter=0.01, seed=4)
    fast.set(0.5).wait(1)
    first = fast.position
    fast.set(0.0).wait(1)
    fast.set(0.5).wait(1)
    assert fast.position == first != 0.5     # repeatable readback error at the same target


@pytest.mark.parametrize("egu, dimension, scale", [
    ("UM", "length", 1e-6), ("MM", "length", 1e-3), ("microns", "length", 1e-6), ("\u03bcm", "length", 1e-6),
    ("\u00b5m", "length", 1e-6), ("nm", "length", 1e-9), ("M", "length", 1.0),
    ("DEG", "angle", 1.0), ("degrees", "angle", 1.0), ("\u00b0", "angle", 1.0), ("mdeg", "angle", 1e-3),
    ("rad", "angle", 180 / math.pi), ("mrad", "angle", 0.18 / math.pi), ("urad", "angle", 1.8e-4 / math.pi),
    ("counts", "angle", None), ("deg", "length", None), ("um", "angle", None), ("", "length", None),
    ("kg", "length", None), ("mm/s", "length", None)])
def test_motor_units_are_read_as_epics_writes_them(egu, dimension, scale):
    from plans.units import unit_scale

    got = unit_scale(egu, dimension)
    assert (got is None) if scale is None else got == pytest.approx(scale, rel=1e-12)


def test_a_scan_on_motors_in_mdeg_and_nm_moves_them_in_their_units(tmp_path):
    """The rocking axis in mdeg and the raster in nm (as an EPICS IOC may give them): the motors
    move to the same physical setpoints, the start document says the units, and every reader turns
    the readbacks back into degrees and metres."""
    from bp_plugin.scan_document import run_scan
    from plans.checks import scan_points
    from sim_devices.motors import SimAxis

    bl = build_beamline("tiny", write_dir=tmp_path)
    geo = bl.geometry
    tb = math.degrees(geo.theta_bragg_rad)
    eta = SimAxis(name="eta_m", egu="mdeg", limits=(-5e3, 95e3), init_pos=tb * 1e3)
    px = SimAxis(name="px", egu="NM", limits=(-5e4, 5e4))
    py = SimAxis(name="py", egu="nm", limits=(-5e4, 5e4))
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bragg_ptycho_scan([bl.detector], eta, px, py, geo))
    _, s = run_scan(docs[0][1])
    pts = scan_points(geo, x_centre=0.0, y_centre=0.0, x_unit_m=1e-6, y_unit_m=1e-6, eta_centre_deg=tb,
                      order="angle-outer", snake=False)
    assert s.rocking_unit_deg == pytest.approx(1e-3) and s.x_unit_m == pytest.approx(1e-9)
    np.testing.assert_allclose(s.eta_setpoints_deg, pts.eta, rtol=1e-12)           # degrees in the document
    np.testing.assert_allclose(s.translations_m[:, :2], np.stack([pts.x, pts.y], 1) * 1e-6, rtol=1e-9, atol=1e-15)
    events = [d for n, d in docs if n == "event"]
    assert len(events) == 300
    for ev in events[::29]:
        d = ev["data"]
        ia, ip = d["bp_index_angle"], d["bp_index_pos"]
        assert d["eta_m"] == pytest.approx(pts.eta[ia] * 1e3)                   # the motor moved in mdeg
        assert s.rocking_deg(d) == pytest.approx(pts.eta[ia])
        assert s.positions_m(d) == pytest.approx((pts.x[ip] * 1e-6, pts.y[ip] * 1e-6))
    with pytest.raises(PlanError, match="which is no angle"):
        RE(bragg_ptycho_scan([bl.detector], SimAxis(name="enc", egu="counts", limits=(0, 1e9)), px, py, geo))

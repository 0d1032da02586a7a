"""The plans on real Channel Access: ophyd ``EpicsMotor``s on a caproto motor-record IOC on loopback
(tests/epics_ioc.py, its own process), a real RunEngine, recorded in the session's Tiled server.

The simulated detector computes each frame from the EPICS motors' readbacks
(``SimBraggBeamline.drive_with``), so what the IOC reports is what the frames show. Found by a
beamline integrator and covered here: the pre-motion check used the limits ophyd cached at
connection (a limit lowered on the IOC passed, the IOC refused the first move, the scan hung with no
message); no move had a timeout.
"""
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

caproto = pytest.importorskip("caproto", reason="caproto (dev extra) is not installed")

from bluesky import RunEngine  # noqa: E402
from bluesky.callbacks.buffer import BufferingWrapper  # noqa: E402
from bluesky_tiled_plugins import TiledWriter  # noqa: E402

from bp_plugin.run_export import run_to_dataset  # noqa: E402
from plans.bragg_ptycho import bragg_ptycho_scan  # noqa: E402
from plans.checks import PlanError  # noqa: E402
from sim_devices.beamline import build_beamline  # noqa: E402
from sim_devices.presets import get_preset  # noqa: E402

PREFIX = "BPT:"


def _free_port() -> int:
    """A port free for both TCP and UDP on loopback (Channel Access uses both)."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
                u.bind(("127.0.0.1", port))
                r.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for Channel Access on loopback")


@pytest.fixture(scope="module")
def epics():
    """The IOC (a process of its own) and ophyd's clients of its motors, all on 127.0.0.1."""
    from ophyd import EpicsMotor, EpicsSignal

    port = _free_port()
    env = {"EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": "127.0.0.1",
           "EPICS_CA_SERVER_PORT": str(port), "EPICS_CA_REPEATER_PORT": str(port + 1),
           "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
           "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1"}
    # read by ophyd's caproto client when it first connects (nothing before this test used EPICS)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    log = tempfile.NamedTemporaryFile("w+", prefix="bp-ioc-", suffix=".log")     # read if it does not answer
    ioc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("epics_ioc.py")), "--prefix", PREFIX,
                            "--interfaces", "127.0.0.1"], env={**os.environ, **env},
                           stdout=log, stderr=subprocess.STDOUT, text=True)
    devices = []
    try:
        motors = {n: EpicsMotor(PREFIX + pv, name=n, settle_time=0.02) for n, pv in
                  (("eta", "eta"), ("piezo_x", "px"), ("piezo_y", "py"))}
        stall = EpicsSignal(PREFIX + "stall", name="stall")
        ctrl_frozen = EpicsSignal(PREFIX + "ctrl_frozen", name="ctrl_frozen")
        devices = [*motors.values(), stall, ctrl_frozen]
        for d in devices:
            try:
                d.wait_for_connection(timeout=30)
            except TimeoutError:
                log.seek(0)
                pytest.fail(f"the caproto IOC did not answer on 127.0.0.1:{port}: {log.read()[-2000:]}")
        yield SimpleNamespace(stall=stall, ctrl_frozen=ctrl_frozen, **motors)
    finally:
        for d in devices:
            d.destroy()
        ioc.terminate()
        try:
            ioc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            ioc.kill()
            ioc.wait()
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ImagePVCamera:
    """An ophyd device of the IOC's image PV camera (tests/epics_ioc.py ``Camera``): trigger = a
    put-complete of ``Acquire``; its reading is the frame, 2D uint32, given inline in the event."""

    def __init__(self, prefix: str, name: str):
        from ophyd import EpicsSignal, EpicsSignalRO

        self.name, self.parent = name, None
        self.acquire = EpicsSignal(prefix + "Acquire", name=f"{name}_acquire", put_complete=True)
        self.image = EpicsSignalRO(prefix + "image", name=f"{name}_image")
        rows = EpicsSignalRO(prefix + "ArraySize1_RBV", name=f"{name}_rows")
        cols = EpicsSignalRO(prefix + "ArraySize0_RBV", name=f"{name}_cols")
        for sig in (self.acquire, self.image, rows, cols):
            sig.wait_for_connection(timeout=30)
        self.shape = (int(rows.get()), int(cols.get()))
        self.signals = (self.acquire, self.image, rows, cols)

    def trigger(self):
        return self.acquire.set(1)

    def read(self):
        frame = np.asarray(self.image.get(use_monitor=False)).reshape(self.shape).astype(np.uint32)
        return {f"{self.name}_image": {"value": frame, "timestamp": time.time()}}

    def describe(self):
        return {f"{self.name}_image": {"source": f"PV:{self.image.pvname}", "dtype": "array",
                                        "shape": list(self.shape), "dtype_numpy": "<u4"}}

    def read_configuration(self):
        return {}

    def describe_configuration(self):
        return {}

    def destroy(self):
        for sig in self.signals:
            sig.destroy()


def _beamline(epics, write_dir):
    """A noise-free tiny beamline (no position jitter: the IOC's motors arrive exactly) driven by the
    EPICS motors; eta moved to the Bragg angle first."""
    p = get_preset("tiny")
    bl = build_beamline(replace(p, position_jitter_m=0.0), write_dir=write_dir, noise=False, background_cps=0.0)
    epics.eta.move(math.degrees(bl.geometry.theta_bragg_rad), timeout=30)
    bl.drive_with(eta=epics.eta, piezo_x=epics.piezo_x, piezo_y=epics.piezo_y)
    return bl


def _run(bl, server=None, **kwargs):
    """bragg_ptycho_scan on the beamline's (EPICS) motors; returns (the exception or None, documents)."""
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    writer = BufferingWrapper(TiledWriter(server.client(), batch_size=20)) if server else None
    if writer:
        RE.subscribe(writer)
    error = None
    try:
        RE(bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.geometry, **kwargs))
    except Exception as exc:
        error = exc
    finally:
        if writer:
            writer.shutdown(wait=True)
    return error, docs


@pytest.mark.slow
def test_a_scan_on_epics_motors_is_recorded_with_the_frames_at_their_readbacks(epics, tiled_server, tmp_path):
    bl = _beamline(epics, tiled_server.detector_dir)
    error, docs = _run(bl, tiled_server)
    assert error is None, error
    events = [d for n, d in docs if n == "event"]
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "success" and len(events) == 300
    start = docs[0][1]
    # readbacks at their setpoints (the IOC moves exactly), in the motors' EGU as the IOC states them
    sp = start["bp_scan"]
    assert start["bp_scan"]["x_unit_m"] == 1e-6 and start["bp_scan"]["rocking_unit_deg"] == 1.0
    for ev in events[::29]:
        d = ev["data"]
        assert d["piezo_x"] == pytest.approx(sp["x_setpoints"][d["bp_index_pos"]], abs=1e-9)
        assert d["eta"] == pytest.approx(sp["eta_setpoints_deg"][d["bp_index_angle"]], abs=1e-9)
    # the run exports to a scan file whose frames are the simulator's at those readbacks
    out = tmp_path / "epics-scan.h5"
    info = run_to_dataset(tiled_server.client()[start["uid"]], out, progress=False)
    assert info["complete"] and info["n_frames"] == 300
    from bp_plugin.dataset import read_dataset

    ds = read_dataset(out)
    sim = bl.experiment.simulator
    for ev in events[::41]:
        d = ev["data"]
        t = np.array([d["piezo_x"] * 1e-6, d["piezo_y"] * 1e-6, 0.0])
        expected = np.rint(sim.expected_counts(t, [math.radians(d["eta"]) - bl.geometry.theta_bragg_rad])[0])
        frame = ds.frames[d["bp_index_angle"], d["bp_index_pos"]]
        np.testing.assert_array_equal(frame[ds.mask], expected[ds.mask])


@pytest.mark.slow
def test_a_scan_with_the_iocs_image_pv_camera_has_its_frames_inline(epics):
    """Any 2D detector: the IOC's camera computes each frame at its own motors' readbacks; the plan
    reads its frame shape from describe(), the frames travel inline in the events."""
    bl = _beamline(epics, Path(tempfile.mkdtemp()))            # for the geometry and the check below
    cam = ImagePVCamera(PREFIX + "cam:", name="epics_cam")
    try:
        RE = RunEngine({})
        docs = []
        RE.subscribe(lambda name, doc: docs.append((name, doc)))
        RE(bragg_ptycho_scan([cam], epics.eta, epics.piezo_x, epics.piezo_y, bl.geometry))
    finally:
        cam.destroy()
    start = docs[0][1]
    assert start["bp_scan"]["image_key"] == "epics_cam_image" and start["bp_scan"]["frame_shape"] == [172, 172]
    events = [d for n, d in docs if n == "event"]
    assert len(events) == 300 and [d for n, d in docs if n == "stop"][0]["exit_status"] == "success"
    sim = bl.experiment.simulator
    rs, cs = bl.crop_slices()
    valid = bl.mask[rs, cs]
    for ev in events[::43]:
        d = ev["data"]
        t = np.array([d["piezo_x"] * 1e-6, d["piezo_y"] * 1e-6, 0.0])
        expected = np.rint(sim.expected_counts(t, [math.radians(d["eta"]) - bl.geometry.theta_bragg_rad])[0])
        frame = np.asarray(d["epics_cam_image"])
        assert frame.shape == (172, 172)
        np.testing.assert_array_equal(frame[rs, cs][valid], expected[valid])


def test_a_limit_lowered_on_the_ioc_after_connection_refuses_the_scan_before_motion(epics, tmp_path):
    """VAL's control limits are frozen on the IOC first, so no client cache can catch up with the
    new HLM (as with pyepics, whose monitors carry no limits): only a check that reads the record's
    HLM / LLM at plan start refuses the scan; one that trusted the cache would let the IOC refuse
    the first move and the run would end on the move timeout instead."""
    bl = _beamline(epics, tmp_path)
    before = epics.piezo_x.position
    epics.ctrl_frozen.put(1, wait=True)
    epics.piezo_x.high_limit_travel.put(0.05, wait=True)       # the raster needs +0.12 um
    try:
        epics.piezo_x.user_setpoint.get(form="ctrl", use_monitor=False)   # even a refreshed cache is stale
        assert tuple(epics.piezo_x.limits) == (-50.0, 50.0)
        error, docs = _run(bl, move_timeout=3.0)
    finally:
        epics.piezo_x.high_limit_travel.put(50.0, wait=True)
        epics.ctrl_frozen.put(0, wait=True)
    assert isinstance(error, PlanError) and "outside its limits [-50, 0.05]" in str(error), error
    assert "piezo_x" in str(error) and not docs                  # refused before the run opened
    assert epics.piezo_x.position == before                      # and before any motion


def test_a_motor_that_stalls_mid_scan_ends_the_run_with_its_reason_and_keeps_the_frames(epics, tmp_path):
    bl = _beamline(epics, tmp_path)
    n_before = 7

    def stall_after(name, doc):
        if doc["seq_num"] == n_before:
            epics.stall.put(1, wait=False)                         # the amplifier trips

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(stall_after, "event")
    try:
        with pytest.raises(PlanError) as err:
            RE(bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.geometry, move_timeout=1.5))
    finally:
        epics.stall.put(0, wait=True)
    msg = str(err.value)
    assert "did not finish within 1.5 s" in msg and "piezo_x to" in msg, msg
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "fail" and "did not finish within 1.5 s" in stop["reason"]
    events = [d for n, d in docs if n == "event"]
    assert len(events) == n_before
    from sim_devices.detector_file import read_detector_file

    assert len(read_detector_file(bl.detector.file_history[-1])) == n_before   # frames already on disk
    # the RunEngine stopped the motors it moved (STOP, put without waiting): the stalled move is
    # over, the motor usable again (once ophyd's monitor of DMOV has seen it too: a move started
    # before that event arrives would take it for its own end)
    done = epics.piezo_x.motor_done_move
    deadline = time.monotonic() + 10
    while not (done.get(use_monitor=False) == 1 and done.get() == 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done.get(use_monitor=False) == 1 and not epics.piezo_x.moving
    epics.piezo_x.move(0.0, timeout=10)
    deadline = time.monotonic() + 10               # ophyd's RBV monitor may trail its DMOV one
    while epics.piezo_x.position != 0.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert epics.piezo_x.position == 0.0

"""The queue server end to end: Redis, a real RE Manager on the shipped startup module and permissions,
a Tiled server and an online reconstructor. Queued: an alignment, a Bragg scan centred on its peak,
a scan refused for its limits (its message in the history, the queue going on), a DF-XRM mosaicity
scan; both scans recorded in Tiled and reconstructed live."""
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import plans
from bp_plugin.geometry import ExperimentGeometry
from bp_plugin.scan_document import run_scan
from streaming.processes import start_reconstructor

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (.ci/run installs Debian's redis-server)")]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_queued_alignment_scans_and_a_refusal_run_recorded_and_reconstructed(tiled_server, tmp_path):
    from bluesky_queueserver import ZMQCommSendThreads

    from sim_devices.dfxrm_microscope import SimDfxrmMicroscope
    from sim_devices.presets import get_preset

    rp = start_reconstructor(tmp_path / "rec", tiled_url=tiled_server.url, api_key=tiled_server.api_key,
                             extra_args=["--iterations", "6", "--ml-iterations", "2"], max_runs=2)
    rport, cport = _port(), _port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, BP_SIM_PRESET="tiny", BP_DETECTOR_DIR=str(tiled_server.detector_dir),
               BP_TILED_URL=tiled_server.url, BP_TILED_API_KEY=tiled_server.api_key, BP_RECONSTRUCTOR=rp.address)
    log = tmp_path / "manager.log"
    mgr = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "start-re-manager"), "--startup-module", "plans.qserver_startup",
         "--user-group-permissions", str(Path(plans.__file__).parent / "qserver_permissions.yaml"),
         "--redis-addr", f"127.0.0.1:{rport}", "--zmq-control-addr", f"tcp://127.0.0.1:{cport}",
         "--zmq-info-addr", f"tcp://127.0.0.1:{_port()}", "--existing-plans-devices", str(tmp_path / "epd.yaml"),
         "--update-existing-plans-devices", "ENVIRONMENT_OPEN"],
        env=env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    qs = ZMQCommSendThreads(zmq_server_address=f"tcp://127.0.0.1:{cport}")

    def req(method, params=None):
        r = qs.send_message(method=method, params=params or {}, timeout=10000)
        assert r.get("success", True), (method, r)
        return r

    def status():
        try:
            return req("status")
        except Exception:    # noqa: BLE001 - not up yet
            return None

    try:
        _wait(status, 60, "the RE Manager")
        req("environment_open")
        _wait(lambda: status()["worker_environment_exists"] and status()["manager_state"] == "idle", 120,
              f"the worker environment ({log.read_text()[-2000:]})")
        req("queue_mode_set", {"mode": {"ignore_failures": True}})   # a refused item does not stop the queue
        geo = get_preset("tiny").geometry.to_dict()
        dgeo = SimDfxrmMicroscope("tiny", write_dir=tmp_path / "unused").geometry.to_dict()
        scan = ["maxipix"], "eta", "piezo_x", "piezo_y", geo
        items = [("find_bragg_peak", ["maxipix", "eta"], {"half_range": 0.2}),
                 ("bragg_ptycho_scan", [*scan], {"eta_centre": "current"}),
                 ("bragg_ptycho_scan", [*scan], {"x_centre": 49.9}),
                 ("mosaicity_scan", [["dfxrm_cam"], "phi", "chi", dgeo], {})]
        for name, args, kwargs in items:
            req("queue_item_add", {"item": {"item_type": "plan", "name": name, "args": args, "kwargs": kwargs},
                                   "user": "test", "user_group": "primary"})
        req("queue_start")
        _wait(lambda: (s := status()) and s["items_in_queue"] == 0 and s["manager_state"] == "idle"
              and s["items_in_history"] == len(items), 600, "the queue to run")
        hist = req("history_get")["items"]
        got = [(h["name"], h["result"]["exit_status"]) for h in hist]
        assert got == [("find_bragg_peak", "completed"), ("bragg_ptycho_scan", "completed"),
                       ("bragg_ptycho_scan", "failed"), ("mosaicity_scan", "completed")], got
        assert "outside its limits" in hist[2]["result"]["msg"] and not req("queue_get")["items"]
        rp.process.wait(300)                           # its two runs reconstructed, the service ends
    finally:
        try:
            req("environment_close")
            _wait(lambda: not status()["worker_environment_exists"], 60, "the environment to close")
        finally:
            mgr.terminate()
            mgr.wait(30)
            redis.terminate()
            rp.stop()
    c = tiled_server.client()
    bragg, mosaic = hist[1]["result"]["run_uids"][0], hist[3]["result"]["run_uids"][0]
    s = run_scan(c[bragg].metadata["start"])[1]
    tb = math.degrees(ExperimentGeometry.from_dict(geo).theta_bragg_rad)
    # centred where the alignment left eta: its fitted peak, near but not at the computed Bragg angle
    assert s.eta_centre_deg != tb and abs(s.eta_centre_deg - tb) < 0.2, (s.eta_centre_deg, tb)
    assert c[bragg]["primary"]["maxipix_image"].shape[0] == 300
    assert c["reconstructions"][bragg].metadata["status"]["state"] == "final", rp.log_tail()
    assert c["dfxrm"][mosaic].metadata["status"]["state"] == "final", rp.log_tail()

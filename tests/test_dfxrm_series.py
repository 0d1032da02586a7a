"""In-situ time series: a scan repeated while a temperature setpoint ramps, each repetition a run
linked to the series; the simulated grain's sub-grain boundaries move with the temperature and the
maps follow them; streamed, the series' runs are found together in Tiled."""
import numpy as np
import pytest
from bluesky import RunEngine

from bp_plugin.dfxrm_batch import DfxrmScan, layer_volumes
from plans.checks import PlanError
from plans.dfxrm_layers import layer_scan
from plans.time_series import time_series
from sim_devices.detector_file import read_detector_file
from sim_devices.dfxrm_microscope import SimDfxrmMicroscope
from sim_devices.dfxrm_volume import Grain3DConfig

TEMPERATURES_K = (300.0, 400.0, 500.0)
DRIFT_M_PER_K = 5e-9           # the sub-grains' seeds move 1 um over the 200 K of the series
N_PHI, N_CHI = 21, 11


def _layer(mic):
    return lambda md: layer_scan([mic.detector], mic.z, mic.phi, mic.chi, mic.geometry, [0.0], n_phi=N_PHI,
                                 n_chi=N_CHI, md=md)


def test_the_maps_of_a_temperature_series_follow_the_moving_boundaries(tmp_path):
    """Where a pixel's sub-grain changes between two temperatures, each repetition's tilt matches
    the truth at its own temperature, not at the other's: the series sees the boundaries move."""
    mic = SimDfxrmMicroscope("tiny", write_dir=tmp_path, volume=Grain3DConfig(boundary_drift_m_per_K=DRIFT_M_PER_K),
                             temperature_rate_K_per_s=1000.0)
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    uids = RE(time_series(_layer(mic), mic.temperature, TEMPERATURES_K))
    starts = [d for n, d in docs if n == "start"]
    assert [s["uid"] for s in starts] == list(uids) and len(uids) == 3
    ser = [s["series"] for s in starts]
    assert len({s["uid"] for s in ser}) == 1 and [s["index"] for s in ser] == [0, 1, 2]
    assert [s["readback"] for s in ser] == pytest.approx(TEMPERATURES_K) and ser[0]["units"] == "K"
    assert ser[0]["t_start"] < ser[1]["t_start"] < ser[2]["t_start"]
    vols, truths = [], []
    for i, s in enumerate(starts):
        desc = {d["uid"] for n, d in docs if n == "descriptor" and d["run_start"] == s["uid"]}
        ev = [d["data"] for n, d in docs if n == "event" and d["descriptor"] in desc]
        ang = np.array([[e["phi"], e["chi"]] for e in ev])
        vols.append(layer_volumes(DfxrmScan(read_detector_file(mic.detector.file_history[i]), ang,
                                            s["dfxrm_scan"], mic.geometry)))
    for t in TEMPERATURES_K:
        mic.volume.temperature_K = t
        truths.append(mic.volume.truth_volume([0.0]))
    step = 0.14 / (N_PHI - 1)
    for i, j in ((0, 2), (2, 0)):
        moved = (truths[i]["labels"] != truths[j]["labels"]) & truths[i]["clean"] & (vols[i]["mask"] > 0)
        assert moved.sum() >= 20, moved.sum()                     # 44 pixels changed sub-grain

        def rms(truth):
            e = np.hypot(vols[i]["tilt_phi"] - truth["tilt_phi"], vols[i]["tilt_chi"] - truth["tilt_chi"])
            return float(np.sqrt(np.mean(e[moved] ** 2)))
        assert rms(truths[i]) < 0.1 * step * 2, (i, rms(truths[i]))          # measured 2.9e-4 deg
        assert rms(truths[j]) > 0.02, (i, j, rms(truths[j]))               # 0.06 deg: another sub-grain


def test_a_series_refuses_bad_setpoints_before_motion(tmp_path):
    mic = SimDfxrmMicroscope("tiny", write_dir=tmp_path, volume=Grain3DConfig())
    RE = RunEngine({})
    for args, kw, msg in (((_layer(mic), mic.temperature, [300.0, 2000.0]), {}, "outside its limits"),
                          ((_layer(mic), mic.temperature, [300.0, np.nan]), {}, "finite setpoints"),
                          ((_layer(mic), mic.temperature, []), {}, "one or more"),
                          ((_layer(mic), "temperature", [300.0]), {}, "not a positioner"),
                          ((None, mic.temperature, [300.0]), {}, "function md -> plan"),
                          ((_layer(mic), mic.temperature, [300.0]), {"interval_s": -1.0}, "interval_s")):
        with pytest.raises(PlanError, match=msg):
            RE(time_series(*args, **kw))
    assert mic.temperature.position == 300.0 and not mic.detector.file_history


@pytest.mark.slow
def test_a_streamed_series_is_linked_in_tiled_run_by_run(tiled_server, tmp_path):
    """Each repetition streamed to the service is its own published run whose metadata names the
    series; the raw runs and the published maps are both found by the series' uid."""
    from dfxrm_stream import stream_dfxrm
    from tiled.queries import Key

    mic = SimDfxrmMicroscope("tiny", write_dir=tiled_server.detector_dir,
                             volume=Grain3DConfig(boundary_drift_m_per_K=DRIFT_M_PER_K))
    uids, svc = stream_dfxrm(tiled_server, tmp_path / "w", mic,
                             time_series(_layer(mic), mic.temperature, TEMPERATURES_K, settle_s=0.1), max_runs=3,
                             figures=False, publish_interval_s=0.5, batch_size=50, join_s=240)
    assert all(svc.finished[u]["state"] == "final" for u in uids), svc.finished
    client = tiled_server.client()
    series_uid = client[uids[0]].metadata["start"]["series"]["uid"]
    raw = client.search(Key("start.series.uid") == series_uid)
    assert sorted(raw) == sorted(uids)
    maps = client["dfxrm"].search(Key("series.uid") == series_uid)
    assert sorted(maps) == sorted(uids)
    got = sorted((maps[u].metadata["series"]["index"], maps[u].metadata["series"]["readback"], u) for u in uids)
    assert got == [(i, t, u) for i, (t, u) in enumerate(zip(TEMPERATURES_K, uids))]


@pytest.mark.slow
def test_a_series_from_the_command_line_records_one_linked_run_per_temperature(tmp_path):
    """``bp-plugin dfxrm acquire --temperatures 300 500``: two runs in its embedded Tiled, one per
    temperature, each naming the series and its readback."""
    import subprocess
    import sys

    from bp_plugin.tiled_server import connect, start_tiled_server

    out = tmp_path / "acq"
    p = subprocess.run([sys.executable, "-m", "bp_plugin.cli", "dfxrm", "acquire", "--preset", "tiny", "--scan",
                        "mosaicity", "--n-phi", "15", "--n-chi", "9", "--temperatures", "300", "500", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = [line.split()[2] for line in p.stdout.splitlines() if line.startswith("series run ")]
    assert len(runs) == 2 and "2 runs of the series" in p.stdout, p.stdout
    server = start_tiled_server(out / "tiled", readable=[out / "detector"])
    try:
        client = connect(server.url, server.api_key)
        series = [client[u].metadata["start"]["series"] for u in runs]
        assert series[0]["uid"] == series[1]["uid"] and [s["index"] for s in series] == [0, 1]
        assert [s["readback"] for s in series] == pytest.approx([300.0, 500.0])
        assert all(client[u].metadata["stop"]["exit_status"] == "success" for u in runs)
    finally:
        server.stop()


def test_a_series_whose_scan_would_be_refused_moves_nothing(tmp_path):
    """The scan's own checks run before the setpoint moves: a too coarse phi grid is refused with
    the furnace still at its start, and no camera file is opened."""
    mic = SimDfxrmMicroscope("tiny", write_dir=tmp_path, volume=Grain3DConfig(), temperature_rate_K_per_s=100.0)
    RE = RunEngine({})
    bad = lambda md: layer_scan([mic.detector], mic.z, mic.phi, mic.chi, mic.geometry, [0.0], n_phi=5,  # noqa: E731
                                n_chi=N_CHI, md=md)
    with pytest.raises(PlanError, match="phi step"):
        RE(time_series(bad, mic.temperature, [400.0, 500.0]))
    assert mic.temperature.position == 300.0 and not mic.detector.file_history
    with pytest.raises(PlanError, match="no sample environment"):
        RE(time_series(bad, SimDfxrmMicroscope("tiny", write_dir=tmp_path).temperature, [400.0]))

"""DF-XRM in 3D, layer by layer: the imaging transform, a recorded layer scan, its volumes against
the simulated 3D grain's truth (tilts in every layer, boundaries in 3D, the inclined domain wall)."""
import math
import threading

import numpy as np
import pytest
from bluesky import RunEngine

from bp_plugin.dfxrm.layers import LayerGeometry
from bp_plugin.dfxrm.maps import boundary_map
from bp_plugin.dfxrm_batch import DfxrmScan, layer_volumes
from plans.checks import PlanError
from plans.dfxrm_layers import layer_scan
from sim_devices.detector_file import read_detector_file
from sim_devices.dfxrm_microscope import SimDfxrmMicroscope
from sim_devices.dfxrm_volume import Grain3DConfig

HEIGHTS_UM = np.linspace(-2.0, 2.0, 7)
N_PHI, N_CHI = 29, 15
RANGE = (-0.07, 0.07)
STEP_PHI, STEP_CHI = 0.14 / (N_PHI - 1), 0.14 / (N_CHI - 1)


def test_the_layer_transform_inverts_and_shifts_each_layer_by_cos_2theta():
    lg = LayerGeometry(tth_deg=17.9, pixel_size_m=150e-9, frame_shape=(40, 30))
    for h in (-1e-6, 0.0, 2.5e-6):
        y, x = lg.sample_yx(h)
        np.testing.assert_allclose(lg.row_of(y, h), np.indices((40, 30))[0], atol=1e-9)
        np.testing.assert_allclose(x[:, 1] - x[:, 0], 150e-9)
    # a point fixed in the sample moves on the camera by dh cos(2theta) / p rows per layer step
    r = lg.row_of(1e-6, np.array([0.0, 1e-6]))
    assert r[1] - r[0] == pytest.approx(1e-6 * math.cos(math.radians(17.9)) / 150e-9)
    assert lg.voxel_m[0] == pytest.approx(150e-9 / math.sin(math.radians(17.9)))
    # a layer map of a sample field stacks back onto that field
    field = lambda y: np.sin(y / 2e-6)             # noqa: E731  (smooth along y, constant in x)
    heights = np.array([-1e-6, 0.0, 1e-6])
    maps = np.stack([field(lg.sample_yx(h)[0]) for h in heights])
    vol = lg.stack(maps, heights)
    _, y, _ = lg.volume_grid(heights)
    ok = np.isfinite(vol)
    assert ok.mean() > 0.5
    bound = lg.voxel_m[0] ** 2 / 8 / (2e-6) ** 2             # linear interpolation: dx^2 max|f''| / 8
    np.testing.assert_allclose(vol[ok], field(y)[ok], atol=bound)
    with pytest.raises(ValueError, match="layer maps of shape"):
        lg.stack(maps[:2], heights)


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """A 7-layer scan of the simulated 3D grain, recorded by a RunEngine; its volumes and truth."""
    out = tmp_path_factory.mktemp("layers")
    mic = SimDfxrmMicroscope("tiny", write_dir=out, seed=0, volume=Grain3DConfig())
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(layer_scan([mic.detector], mic.z, mic.phi, mic.chi, mic.geometry, HEIGHTS_UM, phi_range_deg=RANGE,
                  n_phi=N_PHI, chi_range_deg=RANGE, n_chi=N_CHI, snake=True))
    start = docs[0][1]
    events = [d for n, d in docs if n == "event"]
    angles = np.array([[e["data"]["phi"], e["data"]["chi"]] for e in events])
    scan = DfxrmScan(read_detector_file(mic.detector.file_history[-1]), angles, start["dfxrm_scan"], mic.geometry,
                     start.get("dfxrm_sim"), start["uid"])
    vols = layer_volumes(scan)
    return mic, start, events, vols, mic.volume.truth_volume(vols["heights_m"])


def test_a_layer_scan_records_every_layer_in_order(layers):
    mic, start, events, vols, _ = layers
    s = start["dfxrm_scan"]
    assert s["kind"] == "layers" and s["n_layers"] == 7 and s["layer_points"] == N_PHI * N_CHI
    assert s["heights_m"] == pytest.approx(HEIGHTS_UM * 1e-6)
    assert len(events) == s["n_points"] == 7 * N_PHI * N_CHI
    lay = np.array([e["data"]["dfxrm_layer"] for e in events])
    assert (lay == np.repeat(np.arange(7), N_PHI * N_CHI)).all()
    z = np.array([e["data"]["sample_z"] for e in events])
    np.testing.assert_allclose(z, HEIGHTS_UM[lay])
    assert vols["incomplete"] == [] and vols["tilt_phi"].shape[0] == 7
    lg = LayerGeometry(tth_deg=s["tth_deg"], pixel_size_m=mic.geometry.pixel_size_m, frame_shape=(64, 64))
    assert vols["voxel_m"] == pytest.approx(((HEIGHTS_UM[1] - HEIGHTS_UM[0]) * 1e-6, *lg.voxel_m))


def test_tilt_volumes_match_the_3d_truth_in_every_layer(layers):
    """Within the 2D maps' bounds (a tenth of the scan step), layer by layer, on the voxels whose
    beam footprint holds one sub-grain and one domain; stacked without undoing each layer's shift
    on the camera, the same maps are far off."""
    mic, start, _, vols, truth = layers
    clean = truth["clean"] & (vols["mask"] > 0)
    for name, step in (("tilt_phi", STEP_PHI), ("tilt_chi", STEP_CHI)):
        err = vols[name] - truth[name]
        for k in range(7):
            ok = clean[k] & np.isfinite(err[k])
            assert ok.sum() > 50, (name, k, ok.sum())           # 94 to 364 voxels a layer
            rms = float(np.sqrt(np.mean(err[k][ok] ** 2)))
            assert rms < 0.1 * step, (name, k, rms)
    # the naive stack: each layer's rows taken as the same y
    naive = np.stack([m["tilt_phi"] for m in vols["layer_maps"]])
    lg = LayerGeometry(tth_deg=start["dfxrm_scan"]["tth_deg"], pixel_size_m=mic.geometry.pixel_size_m,
                       frame_shape=(64, 64))
    y0, x0 = lg.sample_yx(0.0)
    t_naive = np.stack([mic.volume.fields(x0, y0, h)["tilt_phi"] for h in vols["heights_m"]])
    e = (naive - t_naive)[np.isfinite(naive)]
    assert np.sqrt(np.mean(e ** 2)) > 10 * 0.1 * STEP_PHI


def test_boundaries_and_the_inclined_domain_wall_are_found_in_3d(layers):
    """Sub-grain boundaries (misorientations 0.034 to 0.073 deg) against the truth's label changes,
    one voxel of tolerance; the beam's height and the stacking spread a boundary over two voxels
    along y, so the threshold (0.01 deg) is below half the smallest misorientation."""
    mic, _, _, vols, truth = layers
    g = mic.volume
    inside = truth["inside"] & (vols["mask"] > 0)
    found = boundary_map(vols["tilt_phi"], vols["tilt_chi"], 0.01) & inside
    lab = np.where(truth["inside"], truth["labels"], -1)
    true_b = boundary_map(lab.astype(float), np.zeros_like(lab, float), 0.5) & inside
    true_b &= boundary_map(truth["tilt_phi"], truth["tilt_chi"], 0.02)        # jumps the threshold can see
    near = lambda a: boundary_map(a.astype(float), np.zeros(a.shape), 0.5) | a   # noqa: E731  (one voxel)
    recall = (near(found) & true_b).sum() / true_b.sum()
    precision = (near(true_b) & found).sum() / found.sum()
    assert recall > 0.9 and precision > 0.85, (recall, precision)    # measured 1.0 and 0.94
    # the wall: in its sub-grain (the truth's labels say which voxels), where the measured chi
    # flips by domain_tilt_deg; its y in each layer, fitted against the layer's height, gives its
    # inclination (the naive stack, whose layers are each shifted by h cos 2theta / p rows, would
    # give atan(tan 25 deg - 1 / tan 2theta) = -69 deg)
    host = truth["inside"] & (truth["labels"] == g.wall_cell) & (vols["mask"] > 0)
    mean_chi = np.nanmedian(vols["tilt_chi"][host])        # measured: between the two domains' tilts
    ys, hs = [], []
    for k, h in enumerate(vols["heights_m"]):
        walls = []
        for j in range(host.shape[2]):                  # each x: where chi crosses between the domains
            c = np.where(host[k, :, j], vols["tilt_chi"][k, :, j], np.nan) - mean_chi
            i = np.flatnonzero((c[:-1] < 0) & (c[1:] > 0))
            if len(i) == 1:                             # one crossing, interpolated between voxels
                i = i[0]
                walls.append(vols["y_m"][i] + c[i] / (c[i] - c[i + 1]) * (vols["y_m"][i + 1] - vols["y_m"][i]))
        if len(walls) >= 5:
            ys.append(np.median(walls))
            hs.append(h)
    assert len(hs) >= 4, hs
    slope = np.polyfit(hs, ys, 1)[0]
    angle = math.degrees(math.atan(slope))
    assert abs(angle - g.config.wall_angle_deg) < 3.0, angle            # measured 24.1 deg over 6 layers


def test_a_layer_scan_refuses_bad_heights_before_motion(tmp_path):
    mic = SimDfxrmMicroscope("tiny", write_dir=tmp_path, volume=Grain3DConfig())
    RE = RunEngine({})
    for heights, msg in (([0.0, 1.0, 0.5], "strictly increasing or decreasing"), ([0.0, 80.0], "outside its limits"),
                         ([0.0, np.nan], "finite positions")):
        with pytest.raises(PlanError, match=msg):
            RE(layer_scan([mic.detector], mic.z, mic.phi, mic.chi, mic.geometry, heights))
    assert mic.z.position == 0.0 and not mic.detector.file_history


def test_live_layer_volumes_in_tiled_equal_the_batch_ones(tiled_server, tmp_path):
    """A layer scan streamed to the service: each layer's frames fold into that layer's sums, the
    volumes grow in Tiled while the scan runs (layers finished one after the other), and the final
    volumes equal the batch volumes of the recorded frames."""
    from dfxrm_stream import stream_dfxrm

    heights = np.array([-1.0, 0.0, 1.0])
    mic = SimDfxrmMicroscope("tiny", write_dir=tiled_server.detector_dir, volume=Grain3DConfig())
    seen_finished = set()

    def watch(name, doc, started):          # the published layers while the scan runs, every 100 frames
        if name == "event" and doc["seq_num"] % 100 == 0:
            try:
                node = tiled_server.client()["dfxrm"][started[0]]
                seen_finished.add(tuple(node.metadata["layers"]["finished"]))
            except (KeyError, TypeError):
                pass

    uid, svc = stream_dfxrm(tiled_server, tmp_path / "w", mic,
                            layer_scan([mic.detector], mic.z, mic.phi, mic.chi, mic.geometry, heights, n_phi=21,
                                       n_chi=11), watch=watch)
    st = svc.finished[uid[0]]
    assert st["state"] == "final" and st["placed"] == 3 * 21 * 11 and st["rejected"] == 0, st
    node = tiled_server.client()["dfxrm"][uid[0]]
    assert node.metadata["layers"]["finished"] == [0, 1, 2]
    assert any(0 < len(f) < 3 for f in seen_finished), seen_finished     # layers appeared one by one
    from bp_plugin.dfxrm_batch import scan_from_run

    batch = layer_volumes(scan_from_run(tiled_server.client()[uid[0]]))
    for k in ("intensity", "tilt_phi", "tilt_chi", "fwhm_phi", "mask"):
        live = node[k].read()
        assert live.shape == batch[k].shape and live.ndim == 3, (k, live.shape)
        b = np.asarray(batch[k], float)
        np.testing.assert_allclose(live, b, rtol=1e-4, atol=1e-6 * np.nanmax(np.abs(b)), equal_nan=True, err_msg=k)
    assert (tmp_path / "w" / uid[0] / "maps.png").exists()


def test_a_recorded_layer_run_exports_and_gives_volumes_from_the_command_line(tiled_server, tmp_path):
    """``bp-plugin dfxrm acquire --scan layers`` recorded in Tiled, exported to a scan file, and
    ``bp-plugin dfxrm maps`` on it: volumes (layers, y, x) in maps.h5, equal to layer_volumes'."""
    import subprocess
    import sys

    import h5py

    from bp_plugin.dfxrm_batch import scan_from_file, scan_from_run, write_scan_file
    from plans.dfxrm_acquire import DfxrmAcquireOptions, acquire_dfxrm

    r = acquire_dfxrm(DfxrmAcquireOptions(preset="tiny", scan="layers", out=tmp_path / "acq", n_phi=15, n_chi=9,
                                          heights_um=(-1.0, 0.0, 1.0), detector_dir=tiled_server.detector_dir),
                      server=tiled_server)
    assert r["exit_status"] == "success" and r["n_events"] == 3 * 15 * 9
    path = write_scan_file(tmp_path / "layers.h5", scan_from_run(tiled_server.client()[r["uid"]]))
    out = tmp_path / "volumes.h5"
    p = subprocess.run([sys.executable, "-m", "bp_plugin.cli", "dfxrm", "maps", str(path), "--out", str(out),
                        "--no-progress", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "volumes (3, " in p.stdout and "(layers, y, x)" in p.stdout, p.stdout
    scan, f = scan_from_file(path)
    with f:
        ref = layer_volumes(scan)
    with h5py.File(out, "r") as h:
        for k in ("tilt_phi", "tilt_chi", "mask"):
            np.testing.assert_array_equal(h["maps"][k][()], ref[k], err_msg=k)
    assert out.with_suffix(".png").exists()


def test_a_pause_at_a_layer_move_measures_no_point_twice(tmp_path):
    """A pause (Ctrl-C, a suspender) while the sample moves to the next layer: resumed, the scan
    repeats that move only, so every layer keeps its own layer_points frames in order."""
    mic = SimDfxrmMicroscope("tiny", write_dir=tmp_path, volume=Grain3DConfig())
    RE = RunEngine({})
    events = []
    RE.subscribe(lambda name, doc: events.append(doc["data"]) if name == "event" else None)
    set_z, paused = mic.z.set, []

    def set_and_pause(value, **kw):             # the move to layer 1 (0.5 s) is interrupted once
        if value == 1.0 and not paused:
            paused.append(True)
            threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()   # as Ctrl-C does
        return set_z(value, **kw)

    mic.z.velocity = 2.0                         # um/s
    mic.z.set = set_and_pause
    from bluesky.utils import RunEngineInterrupted

    with pytest.raises(RunEngineInterrupted):
        RE(layer_scan([mic.detector], mic.z, mic.phi, mic.chi, mic.geometry, [0.0, 1.0], n_phi=5, n_chi=3,
                      phi_range_deg=(-0.02, 0.02), chi_range_deg=(-0.02, 0.02)))
    RE.resume()
    assert paused and len(events) == 2 * 15
    assert [e["dfxrm_layer"] for e in events] == [0] * 15 + [1] * 15
    assert [e["sample_z"] for e in events] == [0.0] * 15 + [1.0] * 15

"""DF-XRM topo-tomography (projections around Q): a family of simulated grains' shapes against
their truth, the reconstruction's conventions (an off-axis grain lands where it is), the plan's
checks, and a recorded run through Tiled to the command line."""
import math

import numpy as np
import pytest
from bluesky import RunEngine

from bp_plugin.dfxrm.geometry import DfxrmGeometry
from bp_plugin.dfxrm.topotomo import TopoGeometry, integrated_projections, reconstruct_shape, shape_overlap
from plans.checks import PlanError
from plans.dfxrm_topo import topo_scan
from sim_devices.dfxrm_microscope import SimDfxrmMicroscope
from sim_devices.dfxrm_topo import GrainProjector, topo_grain
from sim_devices.dfxrm_volume import Grain3D, Grain3DConfig

SHAPE = (64, 64)
PIXEL = 150e-9
HALF = SHAPE[0] * PIXEL / 2
#: the documented ranges the family is drawn from: Al reflections at 17 keV (111, 200, 220:
#: 2theta 17.9-29.5 deg, where the rays' tilt out of the slices grows), semi-axes 0.35-0.65 of the
#: half field, the centre up to 0.12 of it off the rotation axis, any layout seed
D_SPACINGS_M = (2.3381e-10, 2.0249e-10, 1.4318e-10)
DICE_MIN, VOLUME_ERROR_MAX = 0.95, 0.08
OMEGAS = np.arange(0.0, 360.0, 6.0)
PHIS = np.linspace(-0.1, 0.1, 21)


def _series(cfg: Grain3DConfig, d_m: float, seed: int):
    """Noisy frames of a phi rocking at every omega, summed into projections; the truth on the
    reconstruction's grid."""
    geo = DfxrmGeometry(pixel_size_m=PIXEL, d_spacing_m=d_m)
    proj = GrainProjector(Grain3D(cfg, geo, SHAPE))
    rng = np.random.default_rng(seed)
    sums = np.array([sum(proj.frame(ph, om, 0.1, rng).astype(float) for ph in PHIS) for om in OMEGAS])
    bg = proj.grain.background_counts(0.1)
    tg = TopoGeometry(tth_deg=geo.tth_ref_deg, pixel_size_m=PIXEL, frame_shape=SHAPE)
    r = reconstruct_shape(integrated_projections(sums, np.full(len(OMEGAS), len(PHIS)), bg), OMEGAS, tg)
    ax = r["axes_m"]
    truth = proj.truth_shape(*np.meshgrid(ax["w"], ax["b"], ax["a"], indexing="ij"))
    return r, truth, geo


def test_the_shapes_of_a_family_of_grains_match_their_truth():
    rng = np.random.default_rng(2026)
    results = []
    for member in range(3):
        cfg = Grain3DConfig(semi_axes_m=tuple(rng.uniform(0.35, 0.65, 3) * HALF),
                            centre_m=tuple(rng.uniform(-0.12, 0.12, 3) * HALF), seed=int(rng.integers(1000)))
        d = D_SPACINGS_M[member % 3]
        r, truth, geo = _series(cfg, d, member)
        m = shape_overlap(r["shape"], truth)
        results.append((round(geo.tth_ref_deg, 1), round(m["dice"], 3), round(m["volume_error"], 3)))
        assert r["grain_volume_m3"] == pytest.approx(r["shape"].sum() * PIXEL ** 3)
    assert all(dice >= DICE_MIN and abs(err) <= VOLUME_ERROR_MAX for _, dice, err in results), results


def test_an_off_axis_grain_is_reconstructed_where_it_is():
    """A small grain far off the rotation axis: a mirrored axis or a turned-back omega would put
    its reconstruction several voxels away, on the other side."""
    centre = np.array([0.35, -0.3, 0.25]) * HALF
    cfg = Grain3DConfig(semi_axes_m=(0.22 * HALF, 0.25 * HALF, 0.2 * HALF), centre_m=tuple(centre), n_subgrains=2)
    r, truth, _ = _series(cfg, D_SPACINGS_M[0], 7)
    ax = r["axes_m"]
    grids = np.meshgrid(ax["w"], ax["b"], ax["a"], indexing="ij")
    found = np.array([g[r["shape"].astype(bool)].mean() for g in grids])
    true = np.array([g[truth].mean() for g in grids])
    assert np.abs(found - true).max() < PIXEL, (found / PIXEL, true / PIXEL)
    assert np.abs(true).min() > 2 * PIXEL             # the grain is off the axis in w, b and a
    assert shape_overlap(r["shape"], truth)["dice"] > 0.85


def test_a_topo_scan_records_its_projections_in_order(tmp_path):
    mic = SimDfxrmMicroscope("tiny", write_dir=tmp_path, volume=topo_grain(SHAPE, PIXEL), imaging="projections")
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(topo_scan([mic.detector], mic.omega, mic.phi, mic.geometry, np.arange(0.0, 360.0, 30.0), n_phi=21))
    start = docs[0][1]
    s = start["dfxrm_scan"]
    events = [d["data"] for n, d in docs if n == "event"]
    assert s["kind"] == "topotomo" and s["axes"] == ["omega", "phi"] and s["n_projections"] == 12
    assert s["projection_points"] == 21 and len(events) == s["n_points"] == 12 * 21
    k = np.array([e["dfxrm_projection"] for e in events])
    assert (k == np.repeat(np.arange(12), 21)).all()
    np.testing.assert_allclose([e["omega"] for e in events], np.repeat(np.arange(0.0, 360.0, 30.0), 21))
    assert s["tth_deg"] == pytest.approx(mic.geometry.tth_ref_deg)
    assert start["dfxrm_sim"]["imaging"] == "projections"


def test_a_topo_scan_refuses_bad_omegas_before_motion(tmp_path):
    mic = SimDfxrmMicroscope("tiny", write_dir=tmp_path, volume=topo_grain(SHAPE, PIXEL), imaging="projections")
    RE = RunEngine({})
    for omegas, msg in ((np.arange(0, 120, 10.0), "cover 120 deg"), ([0, 20, 10, 30, 40, 50, 60, 200], "strictly"),
                        (np.arange(0, 400, 20.0), "outside its limits"), ([0, 1, 2], "8 or more"),
                        (np.r_[np.arange(0, 350, 50.0), np.nan], "finite")):
        with pytest.raises(PlanError, match=msg):
            RE(topo_scan([mic.detector], mic.omega, mic.phi, mic.geometry, omegas))
    with pytest.raises(PlanError, match="not a motor"):
        RE(topo_scan([mic.detector], "omega", mic.phi, mic.geometry))
    assert mic.omega.position == 0.0 and not mic.detector.file_history
    with pytest.raises(ValueError, match="imaging"):
        SimDfxrmMicroscope("tiny", write_dir=tmp_path, volume=topo_grain(SHAPE, PIXEL), imaging="tomo")
    with pytest.raises(ValueError, match="cover 100 deg"):
        reconstruct_shape(np.zeros((10, *SHAPE)), np.arange(10) * 10.0,
                          TopoGeometry(tth_deg=17.9, pixel_size_m=PIXEL, frame_shape=SHAPE))
    assert math.isclose(TopoGeometry(17.9, PIXEL, SHAPE).axes_m()["w"][1] - TopoGeometry(17.9, PIXEL, SHAPE).axes_m()["w"][0], PIXEL)


@pytest.mark.slow
def test_live_topo_projections_in_tiled_and_the_shape_equal_the_batch_ones(tiled_server, tmp_path):
    """A topo-tomography streamed to the service: the projections appear in Tiled one omega at a
    time while the scan runs; at the end the shape, equal to the batch path's on the recorded
    frames, and its overlap with the simulated grain's truth."""
    from dfxrm_stream import stream_dfxrm

    from bp_plugin.dfxrm_batch import scan_from_run, topo_shape

    omegas = np.arange(0.0, 360.0, 9.0)
    mic = SimDfxrmMicroscope("tiny", write_dir=tiled_server.detector_dir, volume=topo_grain(SHAPE, PIXEL),
                             imaging="projections")
    seen = set()

    def watch(name, doc, started):          # the published projections while the scan runs
        if name == "event" and doc["seq_num"] % 60 == 0:
            try:
                seen.add(len(tiled_server.client()["dfxrm"][started[0]].metadata["topotomo"]["finished"]))
            except (KeyError, TypeError):
                pass

    uid, svc = stream_dfxrm(tiled_server, tmp_path / "w", mic,
                            topo_scan([mic.detector], mic.omega, mic.phi, mic.geometry, omegas), watch=watch)
    st = svc.finished[uid[0]]
    assert st["state"] == "final" and st["placed"] == len(omegas) * 21 and st["rejected"] == 0, st
    node = tiled_server.client()["dfxrm"][uid[0]]
    assert node.metadata["topotomo"]["finished"] == list(range(len(omegas)))
    assert any(0 < n < len(omegas) for n in seen), seen              # projections appeared one by one
    batch = topo_shape(scan_from_run(tiled_server.client()[uid[0]]))
    np.testing.assert_allclose(node["projections"].read(), batch["projections"], rtol=1e-6)
    np.testing.assert_array_equal(node["shape"].read(), batch["shape"])
    m = node.metadata["metrics"]
    assert m["shape_dice"] >= DICE_MIN and abs(m["shape_volume_error"]) <= VOLUME_ERROR_MAX, m
    assert m["grain_volume_m3"] == pytest.approx(batch["grain_volume_m3"])
    assert (tmp_path / "w" / uid[0] / "maps.png").exists()


@pytest.mark.slow
def test_a_recorded_topo_run_gives_its_shape_from_the_command_line(tiled_server, tmp_path):
    """``dfxrm acquire --scan topotomo`` recorded in Tiled, exported to a scan file, and ``dfxrm
    maps`` on it: the shape in maps.h5 equals topo_shape's; a run stopped in a rocking curve
    leaves that projection out and still gives the shape."""
    import subprocess
    import sys

    import h5py

    from bp_plugin.dfxrm_batch import DfxrmScan, scan_from_file, scan_from_run, topo_shape, write_scan_file
    from plans.dfxrm_acquire import DfxrmAcquireOptions, acquire_dfxrm

    r = acquire_dfxrm(DfxrmAcquireOptions(preset="tiny", scan="topotomo", out=tmp_path / "acq",
                                          omegas_deg=tuple(np.arange(0.0, 360.0, 9.0)),
                                          detector_dir=tiled_server.detector_dir), server=tiled_server)
    assert r["exit_status"] == "success" and r["n_events"] == 40 * 21
    path = write_scan_file(tmp_path / "topo.h5", scan_from_run(tiled_server.client()[r["uid"]]))
    out = tmp_path / "shape.h5"
    p = subprocess.run([sys.executable, "-m", "bp_plugin.cli", "dfxrm", "maps", str(path), "--out", str(out),
                        "--no-progress"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "grain shape (" in p.stdout and "from 40 projections" in p.stdout, p.stdout
    scan, f = scan_from_file(path)
    with f:
        ref = topo_shape(scan)
        cut = topo_shape(DfxrmScan(scan.frames[:39 * 21 + 5], scan.angles_deg[:39 * 21 + 5], scan.scan, scan.geometry))
    with h5py.File(out, "r") as h:
        np.testing.assert_array_equal(h["maps"]["shape"][()], ref["shape"])
    assert cut["incomplete"] == [39] and cut["n_projections"] == 39
    assert shape_overlap(cut["shape"], ref["shape"])["dice"] > 0.97
    assert out.with_suffix(".png").exists()

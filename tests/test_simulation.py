"""The simulated experiment: sample, probe, detector and frames, against independent computations."""
import math
import subprocess
import sys

import numpy as np
import pytest

from bp_plugin.dataset import read_dataset
from bp_plugin.geometry import ExperimentGeometry, focus_fwhm_m
from bp_plugin.sheared_fft import ShearedFFT
from sim_devices.diffraction import BraggSimulator, DetectorModel, measured_rocking_offsets_rad, raster_translations
from sim_devices.experiment import build_experiment, simulate_to_file
from sim_devices.presets import get_preset
from sim_devices.probe import ProbeModel
from sim_devices.sample import CrystalSample, Dislocation

GEO = ExperimentGeometry(crop=(24, 20), n_angles=10, rocking_step_deg=0.02, pixel_size_m=165e-6,
                         numerical_aperture=(5e-4, 5e-4), thickness_m=0.15e-6)
PROBE = ProbeModel(numerical_aperture=(5e-4, 5e-4), extent_m=(0.6e-6, 0.6e-6), taper_m=(0.15e-6, 0.15e-6))


def smooth_sample(**kw):
    return CrystalSample(q_bragg_inv_m=GEO.q_bragg_inv_m, thickness_m=0.15e-6, tilt_x_deg=3, edge_m=10e-9,
                         implanted_strain=3e-4, implanted_edge_x_m=0.1e-6, implanted_edge_width_m=40e-9, **kw)


def test_simulator_on_the_reconstruction_grid_equals_the_sheared_transform():
    """Two independent implementations (direct sums + folding vs the factorised FFT) agree."""
    n3, n1, n2 = GEO.box_shape
    box = ((-(n3 // 2), n3 - n3 // 2), (-(n1 // 2), n1 - n1 // 2), (-(n2 // 2), n2 - n2 // 2))
    sample = smooth_sample(dislocations=(Dislocation((0.05e-6, 0.0, 0.0)),))
    sim = BraggSimulator(GEO, sample, PROBE, oversampling=1, box=box)
    t = np.array([20e-9, -10e-9, 0.0])
    psi = sim.exit_wave_chunk(t, 0, n3)
    assert (psi != 0).mean() > 0.02           # the foil is really illuminated
    a = sim.amplitudes(t, measured_rocking_offsets_rad(GEO))
    b = ShearedFFT.from_geometry(GEO).forward(psi) * math.sqrt(psi.size)
    assert np.abs(a - b).max() < 1e-5 * np.abs(b).max()


def test_default_oversampling_is_converged_and_unlike_the_reconstruction_grid():
    """Frames at oversampling 2 match 4 to 0.1 %; the reconstruction's own sampling (1) does not."""
    rel = {}
    for f in (1, 2, 4):
        sim = BraggSimulator(GEO, smooth_sample(), PROBE, oversampling=f,
                             translation_range_m=((-0.1e-6, 0.1e-6),) * 2)
        i = np.abs(sim.amplitudes([20e-9, -10e-9, 0], measured_rocking_offsets_rad(GEO))) ** 2
        rel[f] = i / i.sum()
    assert np.abs(rel[2] - rel[4]).sum() < 1e-3
    assert np.abs(rel[1] - rel[4]).sum() > 0.05


def test_off_grid_angles_and_batching():
    sim = BraggSimulator(GEO, smooth_sample(), PROBE, translation_range_m=((-0.1e-6, 0.1e-6),) * 2)
    d = measured_rocking_offsets_rad(GEO)
    all_at_once = sim.amplitudes([0, 0, 0], d)
    np.testing.assert_allclose(sim.amplitudes([0, 0, 0], d[3:4])[0], all_at_once[3], rtol=1e-4, atol=1e-3)
    mid = np.abs(sim.amplitudes([0, 0, 0], [(d[4] + d[5]) / 2])[0]) ** 2   # a motor between two steps
    lo, hi = np.abs(all_at_once[4]) ** 2, np.abs(all_at_once[5]) ** 2
    assert min(lo.sum(), hi.sum()) * 0.5 < mid.sum() < max(lo.sum(), hi.sum()) * 1.5


def test_displacement_gradient_matches_finite_differences():
    s = get_preset("small").crystal()
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.25e-6, 0.25e-6, size=(200, 3)) * [1, 1, 0.5]
    _, grad = s.displacement(pts, gradient=True)
    h = 1e-10
    for k in range(3):
        dp = np.zeros(3)
        dp[k] = h
        # phase difference without unwrapping: dislocation cuts make u_z multivalued
        dphi = np.angle(np.exp(1j * s.q_bragg_inv_m * (s.displacement(pts + dp) - s.displacement(pts - dp))))
        np.testing.assert_allclose(dphi / (2 * h) / s.q_bragg_inv_m, grad[:, k], rtol=2e-3, atol=5e-8)


@pytest.mark.parametrize("winding", [4 * math.pi, 2 * math.pi])
def test_dislocation_phase_winding(winding):
    s = CrystalSample(q_bragg_inv_m=5.6e10, dislocations=(Dislocation((10e-9, -5e-9, 0.0), (0, 0, 1), winding),))
    a = np.linspace(0, 2 * math.pi, 721)
    loop = np.stack([10e-9 + 50e-9 * np.cos(a), -5e-9 + 50e-9 * np.sin(a), np.zeros_like(a)], 1)
    phase = np.angle(s.density(loop))
    total = np.sum(np.angle(np.exp(1j * np.diff(phase))))
    assert total == pytest.approx(winding, abs=1e-6)
    assert s.amplitude(np.array([[10e-9, -5e-9, 0.0]]))[0] < 0.01   # the pipe of missing density


def test_ground_truth_features_are_where_the_parameters_put_them():
    from sim_devices.presets import make_sample

    p = get_preset("small")
    geo = p.geometry
    # no dislocations here: their long-range fields add ~2e-5 to eps_zz everywhere
    s = make_sample(geo, p.scan_half_extent_m, ("grain_boundary", "implanted", "fib"))
    gt = s.ground_truth((-0.4e-6, -0.4e-6, -0.2e-6), 10e-9, (41, 81, 81))
    inside = gt["amplitude"] > 0.99
    x = -0.4e-6 + 10e-9 * np.arange(81)
    y = -0.4e-6 + 10e-9 * np.arange(81)
    # implanted layer: eps_zz 3e-4 well left of its edge, away from the grain boundary and dislocations
    left = inside & (x[None, None, :] < s.implanted_edge_x_m - 60e-9) & (y[None, :, None] < -0.15e-6)
    mid = np.abs(np.arange(41) - 20)[:, None, None] < 3
    assert np.median(gt["eps_zz"][left & mid]) == pytest.approx(3e-4, rel=0.02)
    right = inside & mid & (x[None, None, :] > 0.15e-6) & (y[None, :, None] < -0.2e-6)
    assert abs(np.median(gt["eps_zz"][right])) < 2e-5
    # no crystal beyond the grain boundary
    assert not inside[:, y > s.grain_boundary_y_m + 0.1e-6, :].any()
    assert geo.thickness_m == s.thickness_m


def test_probe_focus_width_matches_the_numerical_aperture():
    p = ProbeModel(numerical_aperture=(3.7e-4, 1.9e-4), coma_rad=(0, 0), edge_softness=1e-3,
                   extent_m=(20e-6, 20e-6), n_quadrature=2048)
    lam = GEO.wavelength_m
    for axis, na in enumerate(p.numerical_aperture):
        t = np.linspace(-1e-6, 1e-6, 4001)
        i = np.abs(p.field_1d(t, lam, axis)) ** 2
        assert i.max() == pytest.approx(1.0, rel=1e-3)
        fwhm = np.ptp(t[i >= 0.5])
        assert fwhm == pytest.approx(focus_fwhm_m(lam, na), rel=0.01)
    assert np.all(p.field_1d(np.array([10.5e-6, -11e-6]), lam, 0) == 0)   # tapered beyond the extent


def test_counts_scale_with_exposure_and_follow_poisson_statistics():
    sample = smooth_sample()
    det = DetectorModel(count_time_s=0.1, gap_rows=(3,), gap_cols=(7,), n_hot=1, n_dead=1, background_cps=5)
    sim = BraggSimulator(GEO, sample, PROBE, det, translation_range_m=((-0.1e-6, 0.1e-6),) * 2)
    d = measured_rocking_offsets_rad(GEO)[4:6]
    e1 = sim.expected_counts([0, 0, 0], d)
    assert e1.max() <= det.peak_rate_cps * 0.1 * 1.0001
    sim2 = BraggSimulator(GEO, sample, PROBE, DetectorModel(count_time_s=0.4), translation_range_m=sim_range())
    np.testing.assert_allclose(sim2.expected_counts([0, 0, 0], d), 4 * e1, rtol=1e-4)
    rng = np.random.default_rng(5)
    stack = np.stack([sim.frames([0, 0, 0], d, rng) for _ in range(200)]).astype(float)
    mask = det.mask(GEO.crop)
    expected = e1 + det.background(GEO.crop)
    mean = stack.mean(0)
    bright = mask & (expected.min(0) > 50)
    z = (mean[:, bright] - expected[:, bright]) / np.sqrt(expected[:, bright] / 200)
    assert np.abs(z).mean() < 1.2 and np.abs(z).max() < 6
    assert stack.dtype == float and np.all(stack[:, :, 3, :] == 0) and np.all(stack[:, :, :, 7] == 0)
    assert (~mask).sum() >= GEO.crop[0] + GEO.crop[1] - 1 + 2 - 1


def sim_range():
    return ((-0.1e-6, 0.1e-6),) * 2


def test_raster_order_snake_and_jitter():
    geo = ExperimentGeometry(raster_shape=(3, 4), raster_step_m=(100e-9, 50e-9))
    t = raster_translations(geo)
    assert t.shape == (12, 3)
    np.testing.assert_allclose(t[:4, 0], [-150e-9, -50e-9, 50e-9, 150e-9])
    np.testing.assert_allclose(t[::4, 1], [-50e-9, 0, 50e-9])
    s = raster_translations(geo, snake=True)
    np.testing.assert_allclose(s[4:8, 0], t[4:8, 0][::-1])
    j = raster_translations(geo, jitter_m=2e-9, seed=1)
    assert 0 < np.abs(j - t).max() < 10e-9 and np.all(j[:, 2] == 0)


def test_tiny_preset_round_trips_through_the_dataset_format(tmp_path):
    path = tmp_path / "tiny.h5"
    info = simulate_to_file(path, "tiny", seed=3, progress=False)
    ds = read_dataset(path)
    geo = get_preset("tiny").geometry
    assert ds.frames.shape == (geo.n_angles, 25, 32, 32) and ds.frames.dtype == np.uint32
    assert info["n_frames"] == geo.n_angles * 25
    assert ds.geometry == geo and ds.metadata["preset"] == "tiny"
    assert ds.measured.all() and not ds.mask.all()
    # the frames are the simulator's, for the recorded positions (same seed -> same photons)
    exp = build_experiment("tiny", seed=3)
    np.testing.assert_allclose(ds.translations_m, exp.translations_m)
    rng = np.random.default_rng(3)
    first = exp.simulator.frames(exp.translations_m[0], exp.deltas_rad, rng)
    np.testing.assert_array_equal(ds.frames[:, 0], first)
    assert ds.frames[:, :, ds.mask].max() > 1000            # a real Bragg peak, not noise
    for key in ("density", "eps_zz", "omega_x", "omega_y", "probe"):
        assert key in ds.ground_truth
    assert ds.ground_truth["density"].dtype == np.complex64


def test_small_preset_partial_scan_round_trips(tmp_path):
    """The small preset's file (6 of 64 positions, as a scan aborted early would leave it)."""
    path = tmp_path / "small.h5"
    simulate_to_file(path, "small", progress=False, max_positions=6)
    geo = get_preset("small").geometry
    ds = read_dataset(path, allow_partial=True)
    assert ds.frames.shape == (16, 64, 64, 64) and ds.geometry == geo
    assert ds.measured[:, :6].all() and not ds.measured[:, 6:].any()
    assert ds.frames[:, 6:].max() == 0 and ds.frames[:, :6][:, :, ds.mask].max() > 1000
    assert ds.ground_truth_attrs["eps_zz_units"] == "1" and ds.ground_truth_attrs["grid_voxel_m"] == 10e-9
    with pytest.raises(ValueError, match="allow_partial"):
        read_dataset(path)


def test_cli_simulate_and_show(tmp_path):
    scan, png = tmp_path / "scan.h5", tmp_path / "overview.png"
    run = lambda *a: subprocess.run([sys.executable, "-m", "bp_plugin.cli", *a], capture_output=True, text=True)  # noqa: E731
    r = run("simulate", "--preset", "tiny", "--out", str(scan), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "300 frames" in r.stdout
    r = run("simulate", "--preset", "tiny", "--out", str(scan), "--no-progress")
    assert r.returncode == 2 and "overwrite" in r.stderr       # a file that exists is not replaced silently
    r = run("show", str(scan), "--out", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    r = run("simulate", "--preset", "huge", "--out", str(tmp_path / "x.h5"))
    assert r.returncode == 2 and "unknown preset" in r.stderr and "tiny" in r.stderr

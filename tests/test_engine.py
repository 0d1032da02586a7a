"""Reconstruction engine: operators, update equations, and reconstructions against ground truth.

Quality thresholds were set from measured runs on the ``tiny`` preset (seed 0, 60 joint + 20 ML
iterations, CPU): joint retrieval reached object error 0.166, probe error 0.107, eps_zz RMS error
3.5e-5 and tilt RMS error 3.4e-5 rad; the fixed (aberration-free, hence wrong) probe reached
object error 0.208; batched mode 0.247 and 5.4e-5. Thresholds sit about 30 % above the measured
values, so a regression of the engine, the simulator or the metrics fails them, while
seed-to-seed noise does not.
"""
import dataclasses
import json
import math

import numpy as np
import pytest

from bp_plugin.defaults import SHORT
from bp_plugin.geometry import ExperimentGeometry, lab_to_recon
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.engine import Reconstructor
from bp_plugin.recon.layout import ScanLayout
from bp_plugin.recon.probe_ops import ProbeOperator, na_focus
from bp_plugin.recon.results import evaluate
from bp_plugin.recon.run import AUTO_CURRICULUM_PER_ANGLE, ReconstructOptions, reconstruct_file
from bp_plugin.recon.updates import object_step, probe_increment
from bp_plugin.strain import find_vortices, strain_maps


@pytest.fixture(scope="module")
def tiny_scan(tiny_dataset):
    return tiny_dataset                      # the session's tiny scan (tests/conftest.py)


def make_rec(ds, **kw):
    # the ratio these thresholds were measured at (the tiny file's own); the default
    # (geometry.upsampling_default(), x3 here) is exercised by tests/test_family.py
    kw.setdefault("upsampling", 2)
    iterations = kw.pop("iterations", SHORT.iterations)
    ml = kw.pop("ml_iterations", SHORT.ml_iterations)
    cfg = ReconConfig(**kw).scaled(iterations, ml)
    return Reconstructor.from_scan(ds, config=cfg)


def quality(rec, ds):
    return evaluate(rec.object, rec.probe2d, rec.illumination(), rec.layout, rec.probe_op,
                    ds.ground_truth, ds.ground_truth_attrs)


# --- operators ---------------------------------------------------------------------------------
GEO = ExperimentGeometry(crop=(16, 12), n_angles=6, upsampling=2, rocking_step_deg=0.02, pixel_size_m=165e-6,
                         raster_shape=(2, 3), numerical_aperture=(5e-4, 5e-4))


def test_layout_places_each_box_on_its_beam_centre():
    t = np.random.default_rng(0).normal(scale=80e-9, size=(6, 3))
    lay = ScanLayout.from_scan(GEO, t)
    centre = (np.asarray(lay.object_origin) + lay.offsets + np.array(lay.box_shape) // 2 + lay.subvoxel) * lay.voxel_m
    expected = lab_to_recon(-t, GEO.theta_bragg_rad)[:, [2, 0, 1]]
    np.testing.assert_allclose(centre, expected, atol=1e-15)
    assert np.all(np.abs(lay.subvoxel) <= 0.5) and lay.offsets.min() == 0
    assert all(o + b <= s for o, b, s in zip(lay.offsets.max(0), lay.box_shape, lay.object_shape))
    assert list(lay.planes) == [0, 2, 4, 6, 8, 10]            # 6 measured of 12 planes, centred


def test_invariance_projection_is_idempotent_and_keeps_invariant_probes():
    op = ProbeOperator(ScanLayout.from_scan(GEO, np.zeros((6, 3))))
    rng = np.random.default_rng(1)
    p3 = (rng.normal(size=GEO.box_shape) + 1j * rng.normal(size=GEO.box_shape)).astype(np.complex64)
    once = op.extrude(op.project(p3))
    np.testing.assert_allclose(op.extrude(op.project(once)), once, atol=1e-5)
    invariant = op.extrude(na_focus(op))
    np.testing.assert_allclose(op.extrude(op.project(invariant)), invariant, atol=1e-6)
    # orthogonal projection: the residual is orthogonal to the projected part
    assert abs(np.vdot(once, p3 - once)) < 1e-3 * np.vdot(p3, p3).real


def test_na_constraint_is_a_projection_and_shifts_compose():
    op = ProbeOperator(ScanLayout.from_scan(GEO, np.zeros((6, 3))))
    rng = np.random.default_rng(2)
    p2 = (rng.normal(size=op.shape2d) + 1j * rng.normal(size=op.shape2d)).astype(np.complex64)
    a = op.na_constraint(p2)
    np.testing.assert_allclose(op.na_constraint(a), a, atol=1e-5)
    assert np.linalg.norm(a) < np.linalg.norm(p2)
    focus = na_focus(op)
    assert np.linalg.norm(op.na_constraint(focus) - focus) < 0.05 * np.linalg.norm(focus)
    back = op.shift(op.shift(p2, 7e-9, -3e-9), -7e-9, 3e-9)
    np.testing.assert_allclose(back, p2, atol=1e-4)


def test_strain_maps_of_a_known_field_and_vortex_windings():
    v = 5e-9
    z, y, x = np.meshgrid(*(np.arange(n) * v for n in (8, 9, 10)), indexing="ij")
    q = 5.6e10
    rho = np.exp(1j * q * (3e-4 * z + 2e-4 * y - 1e-4 * x)).astype(np.complex64)
    m = strain_maps(rho, v, q)
    np.testing.assert_allclose(m["eps_zz"], 3e-4, rtol=1e-3)
    np.testing.assert_allclose(m["omega_x"], math.asin(2e-4), rtol=1e-3)
    np.testing.assert_allclose(m["omega_y"], math.asin(-1e-4), rtol=1e-3)
    yy, xx = np.meshgrid(np.arange(12) - 5.5, np.arange(12) - 4.5, indexing="ij")
    field = np.exp(1j * np.arctan2(yy, xx))[None].repeat(3, 0)
    found = find_vortices(field)
    assert len(found) == 3 and all(f["winding"] == pytest.approx(2 * math.pi) for f in found)
    assert all((f["row"], f["col"]) == (5, 4) for f in found)


def test_bad_frames_are_refused_with_a_clear_message(tiny_scan):
    ds, _ = tiny_scan
    frames = ds.frames.astype(np.float32)
    frames[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Reconstructor(ds.geometry, frames, ds.translations_m, ds.mask, config=ReconConfig())
    with pytest.raises(ValueError, match="n_positions"):
        Reconstructor(ds.geometry, ds.frames[:, :3], ds.translations_m, ds.mask, config=ReconConfig())


# --- updates and reconstructions ------------------------------------------------------------------
def test_one_update_decreases_the_cost_of_its_position(tiny_scan):
    ds, _ = tiny_scan
    rec = make_rec(ds)
    for _ in range(3):
        rec.step()
    j = 12
    v = rec.layout.view(j)
    probe = rec.probe3d(j)
    d, before, _ = rec.fourier(j, probe * rec.object[v], False)
    c = rec.config
    new = object_step(np, probe, rec.object[v], rec.support.astype(np.float32)[v], d, c.mu, c.beta)
    _, after_obj, _ = rec.fourier(j, probe * new, False)
    assert after_obj < 0.95 * before
    inc = probe_increment(np, rec.probe_op, rec.layout.subvoxel[j], rec.object[v], d, c.alpha, c.probe_norm)
    rec.probe2d = rec.probe2d + inc
    _, after_probe, _ = rec.fourier(j, rec.probe3d(j) * rec.object[v], False)
    assert after_probe < before


def test_fast_paths_equal_the_plain_formulas(tiny_scan):
    """The hot path's shortcuts (probe intensity taken on the section, real projection, in-place
    object step) give what the plain formulas give, and leave their inputs untouched."""
    ds, _ = tiny_scan
    rec = make_rec(ds)
    for _ in range(2):
        rec.step()
    j = 7
    v = rec.layout.view(j)
    probe, (p2, pmax) = rec.probe3d_with_intensity(j)
    np.testing.assert_array_equal(probe, rec.probe3d(j))
    np.testing.assert_allclose(p2, np.abs(probe) ** 2, rtol=1e-5, atol=1e-6 * float(pmax))
    assert p2.dtype == np.float32 and float(pmax) == pytest.approx(float((np.abs(probe) ** 2).max()), rel=1e-5)
    rho = np.array(rec.object[v])
    r2 = np.abs(rho) ** 2
    np.testing.assert_allclose(rec.probe_op.project_real(r2.astype(np.float32)),
                               rec.probe_op.project(r2.astype(np.complex64)).real, rtol=1e-5, atol=1e-7 * r2.max())
    d, _, _ = rec.fourier(j, probe * rho, False)
    sup = rec.support.astype(np.float32)[v]
    keep = [a.copy() for a in (probe, rho, d, sup)]
    c = rec.config
    fast = object_step(np, probe, rho, sup, d, c.mu, c.beta, (p2, pmax))
    q2 = np.abs(probe) ** 2
    mu = c.mu * q2.max()
    plain = rho + (np.conj(probe) * d - mu * (1 - sup) * rho) / ((1 - c.beta) * q2 + c.beta * q2.max() + mu * (1 - sup))
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-6 * np.abs(plain).max())
    assert fast.dtype == np.complex64
    for a, b in zip(keep, (probe, rho, d, sup)):
        np.testing.assert_array_equal(a, b)


def test_joint_reconstruction_of_a_noisy_tiny_scan_meets_ground_truth(tiny_scan):
    ds, _ = tiny_scan
    rec = make_rec(ds)
    rec.run()
    errors = [h["error"] for h in rec.history]
    assert errors[-1] < 0.25 * errors[0] and errors[-1] < 0.012
    q = quality(rec, ds)
    assert q["object_error"] < 0.22
    assert q["strain_rms_error"] < 4.6e-5        # the implanted layer itself is 3e-4
    assert q["tilt_rms_error_rad"] < 4.5e-5
    assert q["probe_error"] < 0.14
    assert max(q["probe_fwhm_rel_error"]) < 0.10  # central lobe within 10 % in FWHM
    fixed = make_rec(ds, probe_update=False)
    fixed.run()
    qf = quality(fixed, ds)
    assert q["object_error"] < qf["object_error"]  # joint retrieval beats the fixed, wrong probe


def _gaussian(rec):
    """A plain Gaussian twice as wide as the NA focus, flat phase: a poor initial probe."""
    op, (fv, fh) = rec.probe_op, rec.geometry.focus_fwhm_m
    s1, s2 = 2 * fv / 2.355, 2 * fh / 2.355
    return np.outer(np.exp(-op.p1_m ** 2 / (2 * s1 ** 2)), np.exp(-op.r2_m ** 2 / (2 * s2 ** 2))).astype(np.complex64)


def test_probe_warmup_recovers_from_a_plain_gaussian_probe(tiny_scan):
    """From a plain Gaussian, 20 warm-up iterations (probe learned, then the object restarted from
    the slab) reach the quality of a good start. Measured (tiny, seed 0, 60 + 20 iterations):
    without warm-up object 0.177, probe 0.292; with it 0.151 and 0.156 (the NA-focus start: 0.166
    and 0.107). Thresholds 30 % above; the probe must improve by a third."""
    ds, _ = tiny_scan
    runs = {}
    for warm in (0, 20):
        rec = make_rec(ds)
        rec.config = dataclasses.replace(rec.config, probe_warmup=warm)
        rec.probe2d = rec.backend.xp.asarray(_gaussian(rec))
        rec.scale_probe_to_data()
        rec.run()
        runs[warm] = rec, quality(rec, ds)
    rec, q = runs[20]
    assert rec.iteration == rec.total_iterations == 20 + 60 + 20
    assert [h.get("stage") for h in rec.history[:21]] == ["warmup"] * 20 + [None]
    assert q["object_error"] < 0.2 and q["probe_error"] < 0.2 and q["strain_rms_error"] < 4.6e-5, q
    assert q["probe_error"] < 0.67 * runs[0][1]["probe_error"]
    assert q["object_error"] < runs[0][1]["object_error"]
    with pytest.raises(ValueError, match="never updates the probe"):
        ReconConfig(probe_warmup=4)                             # not longer than probe_freeze (5)
    with pytest.raises(ValueError, match="never updates the probe"):
        ReconConfig(probe_warmup=50, probe_update=False)


def test_angle_curriculum_then_the_schedule(tiny_scan):
    """Angles added one by one (5 iterations each) before the 60 + 20 schedule. Measured (tiny, seed
    0): object error 0.142, eps_zz 2.8e-5 (the schedule alone: 0.166, 3.5e-5); on `small` the same idea
    took 0.713 to 0.146 (bp_plugin/recon/curriculum.py). Bounds: the engine's thresholds, and no worse
    than the schedule alone's measured value with 10 % margin."""
    from bp_plugin.recon.curriculum import angle_curriculum

    ds, _ = tiny_scan
    rec = make_rec(ds)
    cfg = rec.config
    n = angle_curriculum(rec, 5)
    assert n == 5 * ds.geometry.n_angles and rec.iteration == 0 and rec.measured.all() and rec.config is cfg
    assert [h["stage"] for h in rec.history] == ["curriculum"] * n
    rec.run()
    q = quality(rec, ds)
    assert q["object_error"] < min(0.22, 1.1 * 0.166) and q["strain_rms_error"] < 4.6e-5, q
    with pytest.raises(ValueError, match="starts a reconstruction"):
        angle_curriculum(rec, 5)


def test_batched_mode_reaches_comparable_quality(tiny_scan):
    ds, _ = tiny_scan
    rec = make_rec(ds, mode="batched")
    rec.run()
    q = quality(rec, ds)
    assert q["object_error"] < 0.32 and q["strain_rms_error"] < 7e-5


def test_resume_repeats_an_uninterrupted_run(tiny_scan):
    ds, _ = tiny_scan
    full = make_rec(ds, iterations=12, ml_iterations=0)
    full.run()
    part = make_rec(ds, iterations=12, ml_iterations=0)
    for _ in range(7):
        part.step()
    saved = part.state()
    resumed = make_rec(ds, iterations=12, ml_iterations=0)
    resumed.load_state(saved)
    resumed.run()
    np.testing.assert_allclose(resumed.object, full.object, atol=1e-4)
    np.testing.assert_allclose(resumed.probe2d, full.probe2d, rtol=1e-4, atol=1e-3)
    assert [h["iteration"] for h in resumed.history] == list(range(12))


def test_cli_reconstruct_writes_result_metrics_and_figures(tiny_scan, tmp_path):
    ds, path = tiny_scan
    tmp_path = tmp_path / "new" / "folder"                   # created by the command
    out = tmp_path / "result.h5"
    opts = ReconstructOptions(iterations=10, ml_iterations=2, progress=False)
    m = reconstruct_file(path, out, opts)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("object_error", "probe_error", "strain_rms_error", "tilt_rms_error_rad", "iterations", "seconds"):
        assert key in saved
    assert saved["iterations"] == 12 == m["iterations"]
    assert saved["curriculum_iterations"] == AUTO_CURRICULUM_PER_ANGLE * ds.geometry.n_angles   # 12 angles: on by default
    for png in ("result_maps.png", "result_probe.png", "result_truth_maps.png"):
        assert (tmp_path / png).stat().st_size > 20_000
    m2 = reconstruct_file(path, out, ReconstructOptions(ml_iterations=4, resume=True, progress=False, figures=False))
    assert m2["iterations"] == 14
    with pytest.raises(ValueError, match="resumed run continues"):
        reconstruct_file(path, out, ReconstructOptions(resume=True, angle_curriculum=3, progress=False))


def test_default_angle_curriculum_by_number_of_angles():
    from bp_plugin.recon.run import AUTO_CURRICULUM_PER_ANGLE as N, curriculum_per_angle

    assert N == 10 and curriculum_per_angle(None, 16, False) == N and curriculum_per_angle(None, 8, False) == N
    assert curriculum_per_angle(None, 6, False) == 0           # few angles: it doubled the strain error
    assert curriculum_per_angle(None, 16, True) == 0           # a resumed run continues its schedule
    assert curriculum_per_angle(0, 16, False) == 0 and curriculum_per_angle(3, 6, False) == 3
    with pytest.raises(ValueError, match=">= 0"):
        curriculum_per_angle(-1, 16, False)


def test_fourier_shell_correlation_and_half_dose_split():
    from bp_plugin.quality import fourier_shell_correlation, fsc_resolution, split_counts

    rng = np.random.default_rng(3)
    a = rng.normal(size=(24, 24, 24)) + 1j * rng.normal(size=(24, 24, 24))
    freq, fsc = fourier_shell_correlation(a, a, 10e-9)
    np.testing.assert_allclose(fsc, 1, atol=1e-9)
    assert fsc_resolution(freq, fsc) == pytest.approx(10e-9, rel=0.1)   # never below: the grid's limit
    b = rng.normal(size=a.shape) + 1j * rng.normal(size=a.shape)
    _, fsc_ab = fourier_shell_correlation(a, b, 10e-9)
    assert np.abs(fsc_ab[2:]).max() < 0.3                               # independent noise
    frames = rng.poisson(50, size=(4, 5, 6)).astype(np.uint32)
    h1, h2 = split_counts(frames)
    assert np.array_equal(h1 + h2, frames) and abs(h1.mean() - 25) < 1.5


@pytest.mark.parametrize("up", [1, 2, 3, 4])
def test_step_exposure_is_the_mean_intensity_over_each_step_and_its_correction_projects(up):
    """``rocking_exposure = "step"``: a frame is the trapezoidal mean of |Psi|^2 over the box planes
    of its step (brute force below); with the measured intensity equal to the model's, the
    correction changes nothing; for an odd ratio (no plane shared) a corrected far field has exactly
    the measured intensity; planes beyond the first and last step stay free."""
    from bp_plugin.recon.exposure import RockingExposure

    n_a = 5
    planes = (n_a * up) // 2 + (np.arange(n_a) - n_a // 2) * up
    ex = RockingExposure(planes, n_a * up, up, "step", np, prune=False)      # the whole box
    rng = np.random.default_rng(up)
    big = (rng.normal(size=(2, n_a * up, 3, 4)) + 1j * rng.normal(size=(2, n_a * up, 3, 4))).astype(np.complex64)
    brute = np.zeros((2, n_a, 3, 4))
    for a, p in enumerate(planes):
        ks = [k for k in range(-(up // 2), up // 2 + 1) if 0 <= p + k < n_a * up]
        w = np.array([0.5 if up > 1 and abs(k) * 2 == up else 1.0 for k in ks])
        brute[:, a] = np.tensordot(w / w.sum(), np.abs(big[:, [p + k for k in ks]]) ** 2, (0, 1))
    np.testing.assert_allclose(ex.intensity(big)[0], brute, rtol=1e-5)
    np.testing.assert_array_equal(ex.correction(big, np.zeros((2, n_a, 3, 4), np.float32)), 0)
    measured = rng.uniform(0.5, 2, size=brute.shape).astype(np.float32) * brute.astype(np.float32)
    corrected = big + ex.correction(big, np.sqrt(measured / ex.intensity(big)[0]) - 1)
    if up % 2:
        np.testing.assert_allclose(ex.intensity(corrected)[0], measured, rtol=1e-4)
    # pruned to the planes some frame sees (the engine's default): the same numbers there, and
    # the whole box's correction is zero on the others
    pruned = RockingExposure(planes, n_a * up, up, "step", np)
    factor = np.sqrt(measured / ex.intensity(big)[0]) - 1
    np.testing.assert_array_equal(pruned.intensity(big[:, pruned.used])[0], ex.intensity(big)[0])
    full = ex.correction(big, factor)
    np.testing.assert_allclose(pruned.correction(big[:, pruned.used], factor), full[:, pruned.used], atol=1e-6)
    off = np.ones(n_a * up, bool)
    off[pruned.used] = False
    assert not full[:, off].any()
    point = RockingExposure(planes, n_a * up, up, "point", np)
    np.testing.assert_allclose(point.intensity(big[:, point.used])[0], np.abs(big[:, planes]) ** 2, rtol=1e-5)
    with pytest.raises(ValueError, match="rocking_exposure"):
        RockingExposure(planes, n_a * up, up, "fly", np)


@pytest.mark.parametrize("exposure", ["point", "step"])
def test_ml_gradient_matches_finite_differences(tiny_scan, exposure):
    """The ML gradient (with respect to conj(rho)) is the derivative of the ML cost: for random
    directions, (L(rho + e d) - L(rho - e d)) / 2e = 2 Re <grad, d>, point frames and integrated ones."""
    from dataclasses import replace

    from bp_plugin.recon.ml import MLObjective

    ds, _ = tiny_scan
    geo = replace(ds.geometry, rocking_exposure=exposure)
    rec = Reconstructor(geo, ds.frames, ds.translations_m, ds.mask, config=ReconConfig(upsampling=2).scaled(20))
    for _ in range(3):
        rec.step()
    rec.support[:, :, :3] = False                         # a support edge inside the lit region: the penalty counts
    obj = MLObjective(rec)
    rho = rec.modulated.astype(np.complex128)
    _, total, grad = obj.cost_grad(rec.modulated)
    assert total == pytest.approx(obj.cost(rec.modulated), rel=1e-5)
    rng = np.random.default_rng(3)
    for _ in range(3):
        d = (rng.normal(size=rho.shape) + 1j * rng.normal(size=rho.shape)) * np.abs(rho).max() * 1e-3
        eps = 1.0
        numeric = (obj.cost((rho + eps * d).astype(np.complex64)) - obj.cost((rho - eps * d).astype(np.complex64))) / (2 * eps)
        analytic = 2 * np.real(np.vdot(grad, d))
        assert numeric == pytest.approx(analytic, rel=2e-2, abs=1e-3 * abs(analytic)), (numeric, analytic)

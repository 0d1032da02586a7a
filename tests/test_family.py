"""Data the project did not tune to: flipped files, another foil tilt, family members, the defaults.

Thresholds come from measured runs (``benchmarks/bench_family.py``; numbers in the comments),
with about 30 % of margin, so a regression fails them while seed-to-seed noise does not.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import replace

import numpy as np
import pytest

from bp_plugin.dataset import read_dataset
from bp_plugin.geometry import recon_basis
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.engine import Reconstructor
from bp_plugin.recon.layout import MIN_VOXELS_ACROSS, angles_for_voxels_across, slab_normal, voxels_across
from bp_plugin.recon.run import ReconstructOptions, reconstruct_file
from sim_devices.experiment import simulate_to_file
from sim_devices.family import RANGES, draw_member
from sim_devices.presets import get_preset

FAST = dict(iterations=40, ml_iterations=10, angle_curriculum=0, progress=False, figures=False)


def tiny_with(**geometry_changes):
    p = get_preset("tiny")
    return replace(p, geometry=replace(p.geometry, **geometry_changes))


@pytest.mark.parametrize("crop", [(32, 32), (31, 33)])
def test_a_flipped_file_reads_and_reconstructs_as_the_unflipped_one(tmp_path, crop):
    """Frames stored with n1 and n2 running the other way (flipped about the crop's centre, as a
    detector would store them, q0_pixel at the centre) read back as the unflipped scan: bit for bit
    for odd crops; for even crops but the first row and column, which the flip leaves unmeasured
    (masked); and the even one reconstructs as well."""
    base = tiny_with(crop=crop)
    plain, flipped = tmp_path / "plain.h5", tmp_path / "flipped.h5"
    simulate_to_file(plain, base, progress=False)
    simulate_to_file(flipped, replace(base, file_conventions=(-1, -1, -1)), progress=False)
    a, b = read_dataset(plain), read_dataset(flipped)
    np.testing.assert_array_equal(b.translations_m, a.translations_m)
    odd = [n % 2 == 1 for n in crop]
    keep = np.ones(crop, bool)
    keep[0, :] &= odd[0]
    keep[:, 0] &= odd[1]
    np.testing.assert_array_equal(b.mask, a.mask & keep)
    np.testing.assert_array_equal(b.frames[..., keep], a.frames[..., keep])
    if all(odd):
        return
    errs = [reconstruct_file(p, tmp_path / p.stem / "r.h5", ReconstructOptions(**FAST))["object_error"]
            for p in (plain, flipped)]
    assert errs[1] < 1.1 * errs[0] + 0.01, errs               # measured 0.180 and 0.182


def test_a_foil_with_another_tilt_reconstructs_as_well_when_its_tilt_is_stated(tmp_path):
    """The slab's tilt comes from what the user states, not from a constant equal to a test sample:
    tiny's foil tilted (-3, 4) deg instead of (5.5, -2) meets tiny's thresholds (test_engine)."""
    tilt = (-3.0, 4.0)
    p = replace(tiny_with(sample_tilt_deg=tilt), sample_tilt_deg=tilt)
    path = tmp_path / "tilted.h5"
    simulate_to_file(path, p, progress=False)
    ds = read_dataset(path)
    assert ds.geometry.sample_tilt_deg == tilt
    m = reconstruct_file(path, tmp_path / "r" / "r.h5", ReconstructOptions(iterations=60, ml_iterations=20,
                                                                           progress=False, figures=False))
    assert m["slab_tilt_deg"] == list(tilt) and m["slab_tilt_source"] == "geometry"
    assert m["object_error"] < 0.22 and m["strain_rms_error"] < 4.6e-5, m      # measured 0.150, 3.1e-5
    assert not any("tilt" in w for w in m["warnings"])


def test_no_tilt_constant_in_the_defaults_and_an_unknown_tilt_is_said(tmp_path):
    assert ReconConfig().slab_tilt_deg is None
    p = tiny_with(sample_tilt_deg=None)
    path = tmp_path / "s.h5"
    simulate_to_file(path, p, progress=False)
    ds = read_dataset(path)
    rec = Reconstructor.from_scan(ds, config=ReconConfig().scaled(10))
    assert rec.slab_tilt_deg == (0.0, 0.0) and rec.slab_tilt_source == "assumed specular"
    assert any("--sample-tilt" in w for w in rec.warnings)
    rec = Reconstructor(ds.geometry, ds.frames, ds.translations_m, ds.mask,
                        config=ReconConfig(slab_tilt_deg=(1.0, 2.0)).scaled(10))
    assert rec.slab_tilt_deg == (1.0, 2.0) and rec.slab_tilt_source == "config" and not rec.warnings


def test_upsampling_comes_from_the_geometry_and_less_is_warned_about():
    geo = get_preset("tiny").geometry
    # the tiny file says x2 (its stated 0.8 um beam); a beam filling the detector's window needs x3
    assert geo.upsampling == 2 and geo.upsampling_needed() == 2 and geo.upsampling_default() == 3
    assert geo.widest_sampled_beam_m == pytest.approx(geo.window_m[0] - 2 * math.cos(geo.theta_bragg_rad) * geo.thickness_m)
    member = draw_member(1).geometry
    assert member.upsampling == 1 and member.upsampling_default() >= 3     # a converter's file: x1
    t = np.zeros((member.raster_shape[0] * member.raster_shape[1], 3))
    frames = np.zeros((member.n_angles, len(t), *member.crop), np.float32)
    rec = Reconstructor(member, frames, t, np.ones(member.crop, bool), config=ReconConfig(upsampling=1))
    assert rec.geometry.upsampling == 1
    assert any(w.startswith("up-sampling x1 is below the x") for w in rec.warnings), rec.warnings
    rec = Reconstructor(member, frames, t, np.ones(member.crop, bool), config=ReconConfig())
    assert rec.geometry.upsampling == member.upsampling_default()
    assert not any("up-sampling" in w for w in rec.warnings)


def set_up_warnings(geo, **config):
    t = np.zeros((geo.raster_shape[0] * geo.raster_shape[1], 3))
    frames = np.zeros((geo.n_angles, len(t), *geo.crop), np.float32)
    return Reconstructor(geo, frames, t, np.ones(geo.crop, bool), config=ReconConfig(**config)).warnings


def test_a_foil_under_two_voxels_thick_is_said_with_the_angles_that_would_resolve_it():
    """Voxels across the foil: its thickness over a voxel's extent along the normal (brute force:
    the spread of the voxel's 8 corners). Member 4 (theta_B 15.7 deg, dr3 129 nm, 0.114 um) spans
    1.53 along Q: the set-up says so, with the number of angles that gives 2, and that number does
    while one fewer does not; tiny (2.71) says nothing."""
    tiny, member = get_preset("tiny").geometry, draw_member(4).geometry
    for geo, tilt in ((tiny, (5.5, -2.0)), (member, (0.0, 0.0)), (member, (-3.0, 4.0))):
        n, e = slab_normal(*tilt), recon_basis(geo.theta_bragg_rad)
        corners = [sum(s * d / 2 * float(ek @ n) for s, d, ek in zip(signs, geo.voxel_size_m, e))
                   for signs in itertools.product((-1, 1), repeat=3)]
        assert voxels_across(geo, tilt) == pytest.approx(geo.thickness_m / np.ptp(corners), rel=1e-9)
    assert voxels_across(tiny, (0.0, 0.0)) > MIN_VOXELS_ACROSS > voxels_across(member, (0.0, 0.0))
    assert not any("reconstruction voxels" in w for w in set_up_warnings(tiny, slab_tilt_deg=(5.5, -2.0)))
    said = [w for w in set_up_warnings(member) if "reconstruction voxels along its normal (assumed along Q)" in w]
    assert len(said) == 1 and "spans 1.53" in said[0], said
    n_angles = int(re.search(r"(\d+) angles or more", said[0]).group(1))
    assert voxels_across(replace(member, n_angles=n_angles), (0.0, 0.0)) >= MIN_VOXELS_ACROSS
    assert voxels_across(replace(member, n_angles=n_angles - 1), (0.0, 0.0)) < MIN_VOXELS_ACROSS
    assert angles_for_voxels_across(member, (0.0, 0.0)) == n_angles
    # a foil thinner than two voxels' extent along e1, e2 alone: no number of angles gives 2
    too_thin = replace(member, thickness_m=member.voxel_size_m[0] * 0.5)
    assert angles_for_voxels_across(too_thin, (0.0, 0.0)) is None
    assert any("a larger crop gives finer voxels" in w for w in set_up_warnings(too_thin))
    stated = [w for w in set_up_warnings(member, slab_tilt_deg=(-3.0, 4.0)) if "reconstruction voxels" in w]
    assert len(stated) == 1 and "(from the config)" in stated[0], stated


def test_family_members_are_drawn_from_the_documented_ranges():
    members = [draw_member(s) for s in range(12)]
    for p in members:
        g = p.geometry
        assert RANGES["energy_kev"][0] <= g.energy_kev <= RANGES["energy_kev"][1]
        assert all(RANGES["crop_px"][0] <= c <= RANGES["crop_px"][1] for c in g.crop)
        assert all(abs(t) <= RANGES["sample_tilt_deg"][1] for t in p.sample_tilt_deg)
        assert g.sample_tilt_deg is None and g.upsampling == 1                  # what the file does not say
        assert g.exit_wave_extent_r1_m <= g.window_m[0]                         # the pixels sample the exit wave
        assert p.rocking_substeps in (1, 5) and set(p.file_conventions) <= {-1, 1}
    assert len({p.geometry.hkl for p in members}) > 1 and len({p.geometry.crop[0] % 2 for p in members}) == 2
    assert draw_member(3) == draw_member(3)                                     # seeded


@pytest.mark.slow
def test_family_members_reconstruct_with_the_defaults(tmp_path):
    """Three members with only what a user knows (the tilt stated, as by an experimenter who cut the
    foil): every NaN metric comes with a warning that says why, and the errors stay within bounds
    measured on them (members 0, 3, 4: object 0.122, 0.133, 0.216; probe, where it meets the
    crystal, 0.126, 0.070, 0.230, and over its whole section 0.293, 0.229, 0.251; eps_zz against
    the analytic strain 4.8e-5 and 4.7e-5 for a truth RMS of 2.0e-4 and 1.9e-4;
    member 4's foil is under two voxels thick away from its surfaces: NaN, said)."""
    for seed in (0, 3, 4):
        p = draw_member(seed)
        path = tmp_path / f"m{seed}.h5"
        simulate_to_file(path, p, progress=False)
        m = reconstruct_file(path, tmp_path / f"r{seed}" / "r.h5", ReconstructOptions(
            iterations=60, ml_iterations=20, progress=False, figures=False, sample_tilt_deg=tuple(p.sample_tilt_deg)))
        nan = [k for k, v in m.items() if isinstance(v, float) and math.isnan(v)]
        assert not nan or any("NaN" in w for w in m["warnings"]), (nan, m["warnings"])
        assert m["upsampling"] == p.geometry.upsampling_default()
        assert m["object_error"] < 0.28 and m["probe_error"] < 0.30 and m["probe_error_section"] < 0.36, (seed, m)
        if seed != 4:
            assert m["strain_rms_error_analytic"] < 0.5 * m["strain_truth_rms"], (seed, m)
            assert m["strain_floor_rms"] < m["strain_rms_error_analytic"]


@pytest.mark.slow
def test_frames_integrated_over_their_step_are_modelled_so(tmp_path):
    """A fly scan (each frame the mean over its rocking step, member 1) reconstructs better when
    the model integrates too (rocking_exposure "step", as its file says) than with point frames:
    measured object error 0.132 against 0.196."""
    p = draw_member(1)
    assert p.rocking_substeps > 1 and p.geometry.rocking_exposure == "step"
    errs = {}
    for mode in ("step", "point"):
        path = tmp_path / f"{mode}.h5"
        simulate_to_file(path, replace(p, geometry=replace(p.geometry, rocking_exposure=mode)), progress=False)
        errs[mode] = reconstruct_file(path, tmp_path / mode / "r.h5", ReconstructOptions(
            iterations=60, ml_iterations=20, progress=False, figures=False,
            sample_tilt_deg=tuple(p.sample_tilt_deg)))["object_error"]
    assert errs["step"] < 0.85 * errs["point"] and errs["step"] < 0.18, errs


def test_the_strain_metric_keeps_a_thin_foil_at_a_low_bragg_angle(tmp_path):
    """'One reconstruction voxel from the surfaces' is the +-1 voxel box of the reconstruction grid
    in the lab (ScanLayout.lab_footprint), not the voxel's longest edge in every direction: at
    theta_B 15.8 deg (member 2) dr3 is about 3 x dr1 but lies nearly in the foil's plane, so its
    144 nm foil keeps a core (the longest-edge erosion kept none: strain metric NaN)."""
    from scipy import ndimage

    from bp_plugin.recon.layout import ScanLayout

    p = draw_member(2)
    geo = replace(p.geometry, upsampling=p.geometry.upsampling_default())
    lay = ScanLayout.from_scan(geo, np.zeros((1, 3)))
    lab = 8e-9
    fp = lay.lab_footprint(lab)
    assert fp.shape[0] % 2 == 1 and np.array_equal(fp, fp[::-1, ::-1, ::-1])       # centred, symmetric
    tb = geo.theta_bragg_rad
    dr3, dr1, _ = lay.voxel_m
    along_z = dr3 * math.sin(tb) + dr1 * math.cos(tb)        # the box's half-extent along z (e3, e1 in y-z)
    rows = np.nonzero(fp.any(axis=(1, 2)))[0]
    assert abs((rows[-1] - rows[0]) / 2 * lab - along_z) <= lab and along_z < 0.7 * max(lay.voxel_m)
    z = (np.arange(61) - 30) * lab
    foil = np.broadcast_to((np.abs(z) <= 72e-9)[:, None, None], (61, 41, 41))        # 144 nm, normal z
    core = ndimage.binary_erosion(foil, structure=fp)[:, 20, 20]
    assert core.any() and abs(z[core]).max() <= 72e-9 - along_z + lab
    longest = int(math.ceil(max(lay.voxel_m) / lab))
    assert not ndimage.binary_erosion(foil, iterations=longest)[:, 20, 20].any()


def test_the_probe_error_weighs_the_beam_where_it_meets_the_crystal(tiny_dataset):
    """Beyond tiny's grain boundary the crystal does not diffract: beam lines that only cross it
    leave no trace in the frames. The probe error weighs each line by how much it lit the true
    crystal (crystal_coverage), so a probe exact where it is seen and wrong elsewhere scores ~0
    (while the whole-section error does not), and one wrong where it is seen scores high."""
    from bp_plugin.quality import ground_truth_at_resolution, probe_quality
    from bp_plugin.recon.probe_ops import crystal_coverage

    ds, _ = tiny_dataset
    gt, at = ds.ground_truth, ds.ground_truth_attrs
    rec = Reconstructor.from_scan(ds, config=ReconConfig().scaled(10))
    op = rec.probe_op
    glow = ground_truth_at_resolution(gt["density"], at["grid_origin_m"], float(at["grid_voxel_m"]), rec.layout)
    cov = crystal_coverage(op, glow)
    assert cov.shape == op.shape2d and cov.max() == pytest.approx(1.0)
    q = probe_quality(np.asarray(rec.probe2d), op.p1_m, op.r2_m, gt["probe"], gt["probe_p1_m"], gt["probe_p2_m"],
                      coverage=cov)
    truth = q["truth"]
    region = np.abs(truth) > 0.01 * np.abs(truth).max()
    unseen = region & (cov == 0)
    assert np.sum(np.abs(truth[unseen]) ** 2) > 0.05 * np.sum(np.abs(truth[region]) ** 2)   # the case exists
    rng = np.random.default_rng(0)
    noise = (rng.normal(size=truth.shape) + 1j * rng.normal(size=truth.shape)).astype(np.complex64)
    wrong_unseen = np.where(cov > 0, truth, 0.5 * np.abs(truth).max() * noise)
    a = probe_quality(wrong_unseen, op.p1_m, op.r2_m, gt["probe"], gt["probe_p1_m"], gt["probe_p2_m"], coverage=cov)
    assert a["probe_error"] < 0.02 and a["probe_error_section"] > 0.3, (a["probe_error"], a["probe_error_section"])
    wrong_seen = np.where(cov > 0.05, truth * (1 + 0.3 * noise), truth)
    b = probe_quality(wrong_seen, op.p1_m, op.r2_m, gt["probe"], gt["probe_p1_m"], gt["probe_p2_m"], coverage=cov)
    # 30 % complex noise on the lit part: an error of that order, ten times the unseen case's bound
    assert b["probe_error"] > 0.15 and b["probe_error"] > 10 * a["probe_error"], (b["probe_error"], a["probe_error"])


def test_an_object_slid_along_k_i_is_aligned_back(tiny_dataset):
    """The probe is invariant along k_i, so a reconstruction may slide along it at no cost. The
    metric searches whole-voxel steps along k_i before its local refinement: a slide of 5 voxels
    and a phase factor come back exactly. (Family member 2's reconstruction, slid by about 3
    voxels, was scored 0.77 by the local search alone, 0.26 with this one: bench_family.py.)"""
    from bp_plugin.quality import fourier_shift, ground_truth_at_resolution, relative_error, remove_ambiguities

    ds, _ = tiny_dataset
    gt, at = ds.ground_truth, ds.ground_truth_attrs
    rec = Reconstructor.from_scan(ds, config=ReconConfig().scaled(10))
    lay = rec.layout
    glow = ground_truth_at_resolution(gt["density"], at["grid_origin_m"], float(at["grid_voxel_m"]), lay)
    tb = lay.geometry.theta_bragg_rad
    along = np.array([math.cos(2 * tb) / lay.voxel_m[0], math.sin(2 * tb) / lay.voxel_m[1], 0.0])
    step = 5 * along / np.abs(along).max()                       # 5 voxels along its longest axis
    slid = fourier_shift(glow, step) * np.exp(0.2j)
    region = np.abs(glow) > 0.5
    aligned, info = remove_ambiguities(slid, glow, region, shift_search=True, free_direction=along)
    assert relative_error(aligned, glow, region) < 0.05, info
    np.testing.assert_allclose(info["shift_voxels"], -step, atol=0.3)

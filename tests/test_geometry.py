"""Geometry: the paper's worked numbers, frame conventions, the CLI's JSON."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from bp_plugin import geometry as g
from bp_plugin.geometry import ExperimentGeometry

PAPER = ExperimentGeometry(upsampling=3)


def test_wavelength_and_bragg_angle_of_w220_at_8kev():
    assert PAPER.wavelength_m == pytest.approx(1.5498e-10, rel=1e-4)
    assert PAPER.d_m == pytest.approx(1.119e-10, rel=1e-3)
    # physics.md quotes 43.9 deg; the exact value for a = 3.165 A is 43.82 deg
    assert math.degrees(PAPER.theta_bragg_rad) == pytest.approx(43.9, abs=0.1)
    assert PAPER.q_bragg_inv_m == pytest.approx(2 * math.pi / PAPER.d_m, rel=1e-12)
    assert PAPER.q_bragg_inv_m == pytest.approx(5.6e10, rel=0.01)


def test_window_eq2_matches_paper_with_and_without_upsampling():
    assert PAPER.window_w_m == pytest.approx(1.7e-6, rel=0.02)          # central lobe only
    assert PAPER.window_w_upsampled_m == pytest.approx(5.1e-6, rel=0.02)  # "a 5 um window"


def test_sampling_condition_eq12_is_the_inverse_of_eq2():
    tb, lam, t = PAPER.theta_bragg_rad, PAPER.wavelength_m, PAPER.thickness_m
    step = g.rocking_step_max_rad(lam, tb, t, 1.7e-6)
    assert g.window_w_m(lam, tb, step, t) == pytest.approx(1.7e-6, rel=1e-10)
    assert PAPER.rocking_step_max_deg == pytest.approx(0.00494, rel=0.01)
    # 0.005 deg holds 1.68 um: a 5 um beam needs up-sampling x3
    assert PAPER.upsampling_needed(5.0e-6) == 3
    assert PAPER.upsampling_needed(1.0e-6) == 1


def test_voxel_sizes_match_the_paper():
    dr1, dr2, dr3 = PAPER.voxel_size_m
    assert PAPER.box_shape == (126, 200, 160)
    assert dr2 == pytest.approx(24.6e-9, rel=0.01)
    assert dr3 == pytest.approx(42.3e-9, rel=0.01)
    assert dr1 * math.sin(PAPER.theta_bragg_rad) == pytest.approx(13.6e-9, rel=0.01)
    # up-sampling widens the r3 window but keeps dr3
    assert ExperimentGeometry(upsampling=1).voxel_size_m[2] == pytest.approx(dr3, rel=1e-12)


def test_footprint_overlap_dof_and_intersection_length():
    fv, fh = PAPER.focus_fwhm_m
    assert fh == pytest.approx(360e-9, rel=0.05) and fv == pytest.approx(186e-9, rel=0.05)
    # the paper's KB focus, 200 nm (vertical) x 400 nm (horizontal) FWHM
    na = [0.8858929 * PAPER.wavelength_m / (2 * f) for f in (200e-9, 400e-9)]
    geo = ExperimentGeometry(numerical_aperture=tuple(na))
    fx, fy = geo.footprint_m
    assert fx == pytest.approx(400e-9, rel=1e-3) and fy == pytest.approx(288e-9, rel=0.01)
    ox, oy = geo.overlap
    assert ox == pytest.approx(0.75, abs=0.005) and oy == pytest.approx(0.65, abs=0.01)
    dv, dh = PAPER.depth_of_focus_m
    assert dh == pytest.approx(2.1e-3, rel=0.05) and dv == pytest.approx(0.56e-3, rel=0.05)
    t, w, tb = 0.5e-6, 1.7e-6, PAPER.theta_bragg_rad
    assert PAPER.intersection_length_m == pytest.approx(t / math.sin(tb) + w / math.tan(tb))


def test_frames_are_right_handed_orthonormal_and_consistent():
    tb = PAPER.theta_bragg_rad
    for basis in (g.recon_basis(tb), g.probe_basis(tb)):
        np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(np.cross(basis[0], basis[1]), basis[2], atol=1e-12)
    k_i, k_f = g.probe_basis(tb)[2], g.recon_basis(tb)[2]
    q = (k_f - k_i) / np.linalg.norm(k_f - k_i)
    np.testing.assert_allclose(q, [0, 0, 1], atol=1e-12)            # z along Q
    np.testing.assert_allclose(g.rocking_direction(tb), [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(np.dot(g.rocking_direction(tb), q), 0, atol=1e-12)
    pts = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(g.lab_to_recon(g.recon_to_lab(pts, tb), tb), pts, atol=1e-12)
    # (p1, p2) of a point does not change when it moves along k_i: the probe is invariant there
    p_a = g.lab_to_probe(pts, tb)
    p_b = g.lab_to_probe(pts + 3.0 * k_i, tb)
    np.testing.assert_allclose(p_a[:, :2], p_b[:, :2], atol=1e-12)
    np.testing.assert_allclose(g.recon_to_probe(g.lab_to_recon(pts, tb), tb), p_a, atol=1e-12)


def test_bad_geometry_gives_clear_errors():
    with pytest.raises(ValueError, match="unreachable"):
        ExperimentGeometry(energy_kev=5.0, hkl=(4, 4, 0))
    with pytest.raises(ValueError, match="rocking_step_deg"):
        ExperimentGeometry(rocking_step_deg=-0.01)
    with pytest.raises(ValueError, match="unknown geometry field"):
        ExperimentGeometry.from_dict({"energy": 8})
    geo = ExperimentGeometry(crop=(16, 12), n_angles=5)
    assert ExperimentGeometry.from_dict(json.loads(json.dumps(geo.to_dict()))) == geo


def test_cli_geometry_json_gives_the_paper_numbers():
    cmd = [sys.executable, "-m", "bp_plugin.cli", "geometry", "--energy-kev", "8", "--hkl", "2", "2", "0",
           "--lattice-a-angstrom", "3.165", "--distance-m", "1.4", "--pixel-um", "55", "--crop", "200", "160",
           "--rocking-step-deg", "0.005", "--angles", "42", "--upsampling", "3", "--thickness-um", "0.5",
           "--json"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    assert out["wavelength_m"] == pytest.approx(1.5498e-10, rel=1e-4)
    assert out["theta_bragg_deg"] == pytest.approx(43.9, abs=0.1)
    assert out["q_bragg_inv_m"] == pytest.approx(5.6e10, rel=0.01)
    assert out["voxel_size_m"][1:] == pytest.approx([24.6e-9, 42.3e-9], rel=0.01)
    assert out["window_w_m"] == pytest.approx(1.7e-6, rel=0.02)
    assert out["window_w_upsampled_m"] == pytest.approx(5.1e-6, rel=0.02)
    assert out["intersection_length_m"] == pytest.approx(2.49e-6, rel=0.01)
    assert out["rocking_step_max_deg"] == pytest.approx(0.00494, rel=0.01)
    tb, (dr1, _, dr3) = math.radians(out["theta_bragg_deg"]), out["voxel_size_m"]
    # the normal along Q (z): a voxel's extent along it is cos(tB) dr1 + sin(tB) dr3
    assert out["voxels_across_foil"] == pytest.approx(0.5e-6 / (math.cos(tb) * dr1 + math.sin(tb) * dr3), rel=1e-6)
    assert out["foil_normal"] == "assumed specular"
    human = subprocess.run(cmd[:-1], check=True, capture_output=True, text=True).stdout
    assert "Bragg angle" in human and "43.8" in human
    assert "foil across its normal" in human and "THIN" not in human
    thin = subprocess.run(cmd[:-2] + ["0.05", "--sample-tilt", "3", "-1"], check=True, capture_output=True, text=True).stdout
    assert "THIN: the foil (0.05 um) spans" in thin and "(from the geometry)" in thin and "angles or more" in thin, thin


def test_exit_wave_extent_along_r1_and_the_pixel_sampling_condition():
    tb, t, w = PAPER.theta_bragg_rad, 0.5e-6, 1.7e-6
    # brute force: the r1 extent of the intersection of the beam band and the foil band
    e = g.recon_basis(tb)
    p1, z = g.probe_basis(tb)[0], np.array([0.0, 0.0, 1.0])
    corners = []
    for a in (-1, 1):
        for b in (-1, 1):
            # solve p1 . r = a W/2, z . r = b T/2 in the scattering plane (r = r1 e1 + r3 e3)
            m = np.array([[p1 @ e[0], p1 @ e[2]], [z @ e[0], z @ e[2]]])
            corners.append(np.linalg.solve(m, [a * w / 2, b * t / 2])[0])
    assert np.ptp(corners) == pytest.approx(g.exit_wave_extent_r1_m(tb, t, w), rel=1e-9)
    assert PAPER.summary()["pixel_sampling_ok"]
    binned = ExperimentGeometry(pixel_size_m=440e-6, beam_width_m=1.7e-6)   # window 0.49 um
    assert not binned.summary()["pixel_sampling_ok"]

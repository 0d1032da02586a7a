"""The sheared 3D transform against a brute-force sum of exp(-i q.r), adjointness, layouts."""
import math

import numpy as np
import pytest

from bp_plugin import geometry as g
from bp_plugin.geometry import ExperimentGeometry
from bp_plugin.sheared_fft import ShearedFFT, centred_indices


def brute_force(psi, geo):
    """Direct sum over every voxel with q and r built from the lab-frame basis vectors."""
    tb = geo.theta_bragg_rad
    e = g.recon_basis(tb)
    e_rock = g.rocking_direction(tb)
    dq1, dq2, dq3 = geo.q_step_inv_m
    dr1, dr2, dr3 = geo.voxel_size_m
    n3, n1, n2 = (centred_indices(n) for n in psi.shape)
    # r(m) and q(n) as (..., 3) lab vectors, axis order (3, 1, 2)
    r = (n3[:, None, None, None] * dr3 * e[2] + n1[None, :, None, None] * dr1 * e[0]
         + n2[None, None, :, None] * dr2 * e[1]).reshape(-1, 3)
    q = (n3[:, None, None, None] * dq3 * e_rock + n1[None, :, None, None] * dq1 * e[0]
         + n2[None, None, :, None] * dq2 * e[1]).reshape(-1, 3)
    kernel = np.exp(-1j * (q @ r.T))
    return (kernel @ psi.reshape(-1)).reshape(psi.shape) / math.sqrt(psi.size)


@pytest.mark.parametrize("crop,angles,up", [((6, 5), 4, 1), ((5, 4), 3, 2)])
def test_matches_brute_force_dft(crop, angles, up):
    geo = ExperimentGeometry(crop=crop, n_angles=angles, upsampling=up, rocking_step_deg=0.01)
    rng = np.random.default_rng(1)
    psi = rng.normal(size=geo.box_shape) + 1j * rng.normal(size=geo.box_shape)
    op = ShearedFFT.from_geometry(geo, dtype=np.complex128)
    np.testing.assert_allclose(op.forward(psi), brute_force(psi, geo), rtol=1e-9, atol=1e-9)


def test_adjoint_inverse_and_batch():
    geo = ExperimentGeometry(crop=(8, 6), n_angles=5, upsampling=2)
    rng = np.random.default_rng(2)
    shape = (3,) + geo.box_shape
    a = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    b = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    for centred in (True, False):
        op = ShearedFFT.from_geometry(geo, centred=centred)
        fa, fhb = op.forward(a), op.adjoint(b)
        assert fa.dtype == np.complex64
        lhs, rhs = np.vdot(fa, b), np.vdot(a, fhb)          # <F a, b> = <a, F^H b>
        assert abs(lhs - rhs) < 1e-4 * abs(lhs)
        np.testing.assert_allclose(op.adjoint(fa), a, atol=1e-4)   # unitary
        np.testing.assert_allclose(fa[1], op.forward(a[1]), atol=1e-5)  # batch == one by one
        assert np.linalg.norm(fa) == pytest.approx(np.linalg.norm(a), rel=1e-5)  # Parseval


def test_fft_order_layout_is_the_shifted_centred_layout():
    geo = ExperimentGeometry(crop=(8, 7), n_angles=5)
    rng = np.random.default_rng(3)
    psi = (rng.normal(size=geo.box_shape) + 1j * rng.normal(size=geo.box_shape)).astype(np.complex64)
    centred = ShearedFFT.from_geometry(geo).forward(psi)
    raw = ShearedFFT.from_geometry(geo, centred=False).forward(np.fft.ifftshift(psi))
    np.testing.assert_allclose(np.fft.fftshift(raw), centred, atol=1e-5)


def test_wrong_shape_is_refused():
    op = ShearedFFT((4, 6, 6), 0.1)
    with pytest.raises(ValueError, match="box shape"):
        op.forward(np.zeros((4, 6, 5), np.complex64))


def test_modulated_layout_equals_centred_up_to_unimodular_factors():
    from bp_plugin.sheared_fft import modulation

    for crop, angles in (((8, 6), 4), ((7, 5), 3)):       # even and odd sizes
        geo = ExperimentGeometry(crop=crop, n_angles=angles, upsampling=2)
        rng = np.random.default_rng(4)
        psi = (rng.normal(size=geo.box_shape) + 1j * rng.normal(size=geo.box_shape)).astype(np.complex64)
        g = np.einsum("i,j,k->ijk", *(modulation(n) for n in geo.box_shape))
        centred = ShearedFFT.from_geometry(geo).forward(psi)
        op = ShearedFFT.from_geometry(geo, layout="modulated")
        mod = op.forward(psi * g)
        np.testing.assert_allclose(np.abs(mod), np.abs(centred), atol=1e-4)
        u = mod / centred
        np.testing.assert_allclose(np.abs(u), 1, atol=1e-3)   # a phase per voxel, no mixing
        np.testing.assert_allclose(op.adjoint(mod) * np.conj(g), psi, atol=1e-4)
        # a real correction of the magnitudes commutes with the unimodular factor
        ratio = rng.uniform(0.5, 1.5, size=geo.box_shape)
        np.testing.assert_allclose(op.adjoint(mod * ratio) * np.conj(g),
                                   ShearedFFT.from_geometry(geo).adjoint(centred * ratio), atol=1e-4)

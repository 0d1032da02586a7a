"""The probe as a 2D section invariant along the beam: extrusion B, projection R, NA constraint, shifts.

The 3D probe on a box is ``P(m3, m1, m2) = P2(p1(m3, m1), m2)`` where
``p1 = sin(2 tB) r3 - cos(2 tB) r1`` is the vertical coordinate of the plane perpendicular to
``k_i`` (see bp_plugin.geometry) and the second axis of ``P2`` is ``r2 = -p2`` on the box's own
``N2`` samples (the horizontal probe axis is exactly the r2 axis). ``P2`` is sampled along p1
every ``dp1 = sin(2 tB) dr3 / subsample``; extrusion takes, for each voxel, the nearest p1 sample
(an error of at most ``dp1 / 2``). With nearest-sample extrusion ``B^T B`` is diagonal, so the
normalised adjoint ``R = (B^T B)^-1 B^T`` (the average along each line parallel to ``k_i``) is the
least-squares inverse of ``B`` and ``B R`` is an orthogonal projection onto invariant probes.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import Backend, get_backend
from .layout import ScanLayout


class ProbeOperator:
    """Extrusion / projection / NA constraint / sub-voxel shift for one :class:`ScanLayout`.

    Args:
        layout: the scan layout (box shape, voxel sizes, geometry).
        backend: array backend.
        subsample: p1 samples per ``sin(2 tB) dr3`` (default: ``ReconConfig.probe_subsample``).
        na_factor: the NA constraint keeps spatial frequencies within ``na_factor * NA``.
    """

    def __init__(self, layout: ScanLayout, backend: Backend | None = None, *, subsample: int | None = None,
                 na_factor: float = 1.5):
        import scipy.sparse as sp

        from .config import ReconConfig

        subsample = ReconConfig.probe_subsample if subsample is None else int(subsample)
        self.layout = layout
        self.backend = backend or get_backend("cpu")
        xp = self.backend.xp
        geo = layout.geometry
        tb = geo.theta_bragg_rad
        n3, n1, n2 = layout.box_shape
        dr3, dr1, dr2 = layout.voxel_m
        self.dp1 = math.sin(2 * tb) * dr3 / subsample
        m3 = (np.arange(n3) - n3 // 2)[:, None]
        m1 = (np.arange(n1) - n1 // 2)[None, :]
        p1 = math.sin(2 * tb) * m3 * dr3 - math.cos(2 * tb) * m1 * dr1        # (n3, n1)
        k = np.rint(p1 / self.dp1).astype(np.int64)
        self.p1_index0 = int(-k.min())                                        # P2 row of p1 = 0
        idx = (k + self.p1_index0).ravel()
        self.shape2d = (int(idx.max()) + 1, n2)
        counts = np.bincount(idx, minlength=self.shape2d[0]).astype(np.float32)
        rows = sp.csr_matrix((1.0 / counts[idx], (idx, np.arange(idx.size))),
                             shape=(self.shape2d[0], idx.size), dtype=np.complex64)
        self._gather = xp.asarray(idx.reshape(n3, n1))
        # section rows present on the box, as indices (a boolean mask costs CuPy a sync per use)
        self.rows_used = xp.asarray(np.flatnonzero(counts > 0))
        self._project = self._sparse(rows)
        self._project_real = self._sparse(rows.real.astype(np.float32))
        self.p1_m = (np.arange(self.shape2d[0]) - self.p1_index0) * self.dp1   # (np1,)
        self.r2_m = (np.arange(n2) - n2 // 2) * dr2                              # (n2,)
        lam = geo.wavelength_m
        f1 = np.fft.fftfreq(self.shape2d[0], self.dp1) * lam
        f2 = np.fft.fftfreq(n2, dr2) * lam
        na_v, na_h = geo.numerical_aperture
        keep = (np.abs(f1)[:, None] <= na_factor * na_v) & (np.abs(f2)[None, :] <= na_factor * na_h)
        self._na_mask = xp.asarray(keep.astype(np.complex64))
        self._f1 = xp.asarray(np.fft.fftfreq(self.shape2d[0], self.dp1).astype(np.float32))
        self._f2 = xp.asarray(np.fft.fftfreq(n2, dr2).astype(np.float32))

    def _sparse(self, m):
        return self.backend.csr(m)

    # --- extrusion and projection ---------------------------------------------------------
    def extrude(self, p2):
        """``B``: 2D section ``(np1, N2)`` -> 3D probe on the box ``(N3, N1, N2)``."""
        return p2[self._gather]

    def project(self, p3):
        """``R``: 3D field ``(N3, N1, N2)`` -> its average along ``k_i``, a section ``(np1, N2)``."""
        n2 = p3.shape[-1]
        return self._project @ p3.reshape(-1, n2)

    def project_real(self, p3):
        """``R`` of a real field ``(N3, N1, N2)`` (float32), without a complex copy of it."""
        n2 = p3.shape[-1]
        return self._project_real @ p3.reshape(-1, n2)

    # --- constraints and shifts ------------------------------------------------------------
    def na_constraint(self, p2):
        """Zero the section's 2D spectrum outside ``na_factor`` x the numerical-aperture rectangle."""
        fft = self.backend.fft
        return fft.ifft2(fft.fft2(p2) * self._na_mask).astype(p2.dtype, copy=False)

    def shift(self, p2, shift_p1_m: float, shift_r2_m: float):
        """Section translated by ``(shift_p1_m, shift_r2_m)`` (m): ``P2(p - shift)`` (Fourier shift)."""
        xp, fft = self.backend.xp, self.backend.fft
        ramp = xp.exp((-2j * math.pi) * (self._f1[:, None] * shift_p1_m + self._f2[None, :] * shift_r2_m))
        return fft.ifft2(fft.fft2(p2) * ramp.astype(p2.dtype)).astype(p2.dtype, copy=False)

    def subvoxel_shift_m(self, subvoxel: np.ndarray) -> tuple[float, float]:
        """Probe shift ``(p1, r2)`` in metres for a beam-centre remainder ``(e3, e1, e2)`` in voxels."""
        tb = self.layout.geometry.theta_bragg_rad
        dr3, dr1, dr2 = self.layout.voxel_m
        e3, e1, e2 = (float(v) for v in subvoxel)
        return (math.sin(2 * tb) * e3 * dr3 - math.cos(2 * tb) * e1 * dr1, e2 * dr2)


def crystal_coverage(op: ProbeOperator, obj, positions=None) -> np.ndarray:
    """How much each section pixel lights the crystal over the scan: ``sum_j R[|rho_j|^2]``, peak 1.

    ``obj``: object array (object grid, axis order 3, 1, 2; host or device), ``positions``: the
    positions to sum (default: all). Float32 ``(np1, N2)`` on the host. The data constrain the
    probe only where this is not 0: a beam line that never crosses diffracting crystal inside a
    position's box leaves no trace in any frame (the sub-voxel shifts, at most half a voxel, are
    left out: this is a weight, not a model).
    """
    layout, xp = op.layout, op.backend.xp
    obj = xp.asarray(obj)
    js = range(layout.n_positions) if positions is None else positions
    total = 0
    for j in js:
        v = obj[layout.view(int(j))]
        total = total + op.project_real((v.real ** 2 + v.imag ** 2).astype(np.float32))
    cov = op.backend.asnumpy(xp.asarray(total)).astype(np.float32).reshape(op.shape2d)
    return cov / cov.max() if cov.max() > 0 else cov


def na_focus(op: ProbeOperator, defocus_m: float = 0.0) -> np.ndarray:
    """Aberration-free focus of the geometry's NA rectangle on the operator's section grid, complex64.

    ``sinc(2 NA_v p1 / lambda) sinc(2 NA_h r2 / lambda)`` (the Fourier transform of a uniformly lit
    rectangular aperture), with an optional paraxial defocus applied in Fourier space; peak 1.
    """
    geo = op.layout.geometry
    lam = geo.wavelength_m
    na_v, na_h = geo.numerical_aperture
    p2 = np.outer(np.sinc(2 * na_v * op.p1_m / lam), np.sinc(2 * na_h * op.r2_m / lam)).astype(np.complex64)
    if defocus_m:
        f1 = np.fft.fftfreq(len(op.p1_m), op.dp1)[:, None]
        f2 = np.fft.fftfreq(len(op.r2_m), op.layout.voxel_m[2])[None, :]
        kern = np.exp(-1j * math.pi * lam * defocus_m * (f1 ** 2 + f2 ** 2))
        p2 = np.fft.ifft2(np.fft.fft2(p2) * kern).astype(np.complex64)
    return p2

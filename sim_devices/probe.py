"""Kirkpatrick-Baez focus: a 2D complex probe invariant along the beam (physics.md section 2).

A KB system is two crossed 1D mirrors, so the focal field is separable:
``P2(p1, p2) = f_v(p1) f_h(p2)`` with ``p1`` the vertical (scattering-plane) and ``p2`` the
horizontal coordinate of the plane perpendicular to ``k_i``. Each factor is computed exactly by
numerical quadrature of the aperture (no FFT grid, no interpolation):

    f(t) = integral_{-NA}^{NA} A(u) exp(i phi(u)) exp(i 2 pi u t / lambda) du,
    phi(u) = -pi defocus u^2 / lambda + coma (u / NA)^3 + astig (u / NA)^2,

with ``A`` a rectangular aperture whose edges are softened over ``edge_softness`` (fraction of
NA). The sinc-like side lobes give the realistic tails; beyond ``extent_m`` (full width) the
field is tapered to zero by a raised cosine over ``taper_m``, which bounds the volume a simulator
has to compute (the real beam is cut by slits and the guard aperture in the same way).
The probe is normalised to a peak amplitude of 1 for the aberration-free focus.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProbeModel:
    """KB focus; tuples are ``(vertical / p1, horizontal / p2)``.

    Attributes:
        numerical_aperture: half-aperture angles (rad).
        defocus_m: distance of the sample from the focus along the beam (m).
        coma_rad: cubic aberration at the aperture edge (rad), gives asymmetric side lobes.
        astig_rad: quadratic phase at the edge (rad) on top of ``defocus_m``.
        edge_softness: aperture edge roll-off as a fraction of NA.
        extent_m: full width beyond which the field is tapered to zero (m).
        taper_m: width of the raised-cosine taper (m).
        n_quadrature: quadrature points across the aperture.
    """

    numerical_aperture: tuple[float, float] = (3.7e-4, 1.9e-4)
    defocus_m: float = 0.0
    coma_rad: tuple[float, float] = (0.6, 0.4)
    astig_rad: tuple[float, float] = (0.0, 0.0)
    edge_softness: float = 0.05
    extent_m: tuple[float, float] = (4e-6, 4e-6)
    taper_m: tuple[float, float] = (0.5e-6, 0.5e-6)
    n_quadrature: int = 512

    def field_1d(self, t_m: np.ndarray, wavelength_m: float, axis: int) -> np.ndarray:
        """Complex focal field along axis 0 (p1, vertical) or 1 (p2, horizontal) at ``t_m`` (m)."""
        na = self.numerical_aperture[axis]
        u = np.linspace(-na, na, self.n_quadrature)
        du = u[1] - u[0]
        soft = max(self.edge_softness, 1e-6) * na
        amp = 0.5 * (1 + np.tanh((na - np.abs(u)) / (0.5 * soft)))
        x = u / na
        phase = (-math.pi * self.defocus_m * u ** 2 / wavelength_m
                 + self.coma_rad[axis] * x ** 3 + self.astig_rad[axis] * x ** 2)
        pupil = amp * np.exp(1j * phase) * du
        t = np.asarray(t_m, dtype=float)
        kernel = np.exp(2j * math.pi * np.multiply.outer(t.ravel(), u) / wavelength_m)
        f = (kernel @ pupil).reshape(t.shape)
        norm = amp.sum() * du  # aberration-free peak
        return f / norm * self._taper(t, axis)

    def _taper(self, t: np.ndarray, axis: int) -> np.ndarray:
        half, w = self.extent_m[axis] / 2, self.taper_m[axis]
        d = np.abs(t) - (half - w)
        out = np.where(d <= 0, 1.0, 0.5 * (1 + np.cos(math.pi * np.clip(d / w, 0, 1))))
        return np.where(np.abs(t) >= half, 0.0, out)

    def field_2d(self, p1_m: np.ndarray, p2_m: np.ndarray, wavelength_m: float) -> np.ndarray:
        """``P2(p1, p2)`` on the outer product of 1D coordinate arrays, shape ``(len(p1), len(p2))``."""
        return np.multiply.outer(self.field_1d(p1_m, wavelength_m, 0), self.field_1d(p2_m, wavelength_m, 1))

    def section(self, pixel_m: tuple[float, float], shape: tuple[int, int], wavelength_m: float):
        """The probe section on a centred grid; returns ``(P2 complex64 (n1, n2), p1 axis, p2 axis)``."""
        p1 = (np.arange(shape[0]) - shape[0] // 2) * pixel_m[0]
        p2 = (np.arange(shape[1]) - shape[1] // 2) * pixel_m[1]
        return self.field_2d(p1, p2, wavelength_m).astype(np.complex64), p1, p2

"""The modified ("sheared") 3D Fourier transform of Bragg ptychography (physics.md section 1).

For a field ``psi`` sampled on the orthogonal reconstruction grid ``r = r1 e1 + r2 e2 + r3 e3``
and the measured, non-orthogonal reciprocal grid ``q = n1 dq1 e1 + n2 dq2 e2 + n3 dq3 e_rock``
(``e_rock = cos tB e3 + sin tB e1``), with centred integer indices ``m_k`` for r and ``n_k`` for q,

    F[psi](n) = N^(-1/2) sum_m psi(m) exp(-i q(n) . r(m)),
    q . r = n1 dq1 r1 + n2 dq2 r2 + n3 dq3 (cos tB r3 + sin tB r1).

With ``dr_k`` from :class:`bp_plugin.geometry.ExperimentGeometry` (``dr1 dq1 = 2 pi / N1``,
``dr2 dq2 = 2 pi / N2``, ``dr3 dq3 cos tB = 2 pi / N3``) this factorises exactly into an FFT along
r3, a multiplication by ``exp(-i n3 m1 dq3 dr1 sin tB)``, and an FFT over (r1, r2). With the
orthonormal scaling used here the transform is unitary: its adjoint is its inverse.

Arrays use axis order ``(3, 1, 2)``. Three layouts:

* ``"centred"``: index 0 of an axis is ``-N // 2``; what users and files see.
* ``"fft"``: index ``k`` holds ``k`` for ``k < (N + 1) // 2`` and ``k - N`` after.
* ``"modulated"``: the centred layout without any shift. With ``c = N // 2`` per axis,
  ``sum_m x[m] exp(-2 pi i (k - c)(m - c) / N) = u(k) sum_m [x[m] g(m)] exp(-2 pi i k m / N)``
  where ``g(m) = exp(2 pi i c m / N)`` and ``u(k)`` is unimodular. So a plain FFT of ``x g``
  gives the centred transform times ``u``, which no magnitude constraint sees. The engine stores
  the object multiplied by ``g`` (the product over the three axes; a position's box differs from
  the global one by a constant phase only) and never shifts on its hot path.
  :func:`modulation` gives ``g``.

The transform acts on the last three axes, so a leading batch axis (several scan positions at
once) is transformed in one call.

Pruned to planes: a reconstruction needs the far field only on the planes its frames measure (a
third of them at x3 up-sampling), and its corrections are zero elsewhere. ``forward(psi, planes)``
does the r3 transform and the shear on the whole box but the (r1, r2) transform on those planes
only, and ``adjoint(big, planes)`` takes them back: the same numbers as the full transform on
those planes, for about 45 % fewer FFT operations at x3.
"""
from __future__ import annotations

import numpy as np

from .backend import Backend, get_backend


def fft_order_indices(n: int) -> np.ndarray:
    """Centred integer indices of an axis of length ``n`` stored in FFT order, shape (n,)."""
    return np.rint(np.fft.fftfreq(n) * n).astype(np.int64)


def modulation(n: int, length: int | None = None) -> np.ndarray:
    """``g(m) = exp(2 pi i (n // 2) m / n)`` for ``m = 0 .. length - 1`` (default ``n``), complex128.

    ``n`` is the box size along the axis; a longer ``length`` extends ``g`` over an object grid,
    on which a box starting at ``b`` sees ``g(b + m) = g(b) g(m)``: its own modulation up to a
    constant phase. +-1 for even ``n``.
    """
    return np.exp(2j * np.pi * (n // 2) * np.arange(n if length is None else length) / n)


def centred_indices(n: int) -> np.ndarray:
    """Centred integer indices ``-n // 2 ... (n - 1) // 2`` in natural order, shape (n,)."""
    return np.arange(n) - n // 2


class ShearedFFT:
    """Sheared 3D FFT and its adjoint for boxes of shape ``(N3, N1, N2)`` (axis order 3, 1, 2).

    Args:
        shape: ``(N3, N1, N2)`` of the box (leading batch axes are allowed at call time).
        shear: ``dq3 * dr1 * sin(theta_B)`` (dimensionless), the shear phase per index product.
        backend: array backend (NumPy/scipy or CuPy); default: CPU.
        centred: True for the "centred" layout, False for "fft" (see module docstring).
        layout: "centred", "fft" or "modulated"; overrides ``centred`` when given.
        dtype: complex dtype of the phase factor (complex64 on the hot path).
    """

    def __init__(self, shape, shear: float, backend: Backend | None = None, *, centred: bool = True,
                 layout: str | None = None, dtype=np.complex64):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"ShearedFFT needs a 3D box shape (N3, N1, N2), got {shape}")
        self.layout = layout or ("centred" if centred else "fft")
        if self.layout not in ("centred", "fft", "modulated"):
            raise ValueError(f"layout must be 'centred', 'fft' or 'modulated', got {layout!r}")
        self.backend = backend or get_backend("cpu")
        self.centred = self.layout == "centred"
        self.shear = float(shear)
        index = centred_indices if self.layout == "modulated" else fft_order_indices
        n3 = index(self.shape[0])[:, None, None]
        m1 = index(self.shape[1])[None, :, None]
        phase = np.exp(-1j * self.shear * n3 * m1).astype(dtype)
        self._phase = self.backend.xp.asarray(phase)
        self._phase_conj = self.backend.xp.conj(self._phase)

    @classmethod
    def from_geometry(cls, geometry, backend: Backend | None = None, **kw) -> "ShearedFFT":
        """Transform for the reconstruction box of an :class:`ExperimentGeometry`."""
        dq3 = geometry.q_step_inv_m[2]
        dr1 = geometry.voxel_size_m[0]
        shear = dq3 * dr1 * np.sin(geometry.theta_bragg_rad)
        return cls(geometry.box_shape, shear, backend, **kw)

    def _check(self, a) -> None:
        if tuple(a.shape[-3:]) != self.shape:
            raise ValueError(f"array of shape {tuple(a.shape)} does not end with the box shape {self.shape}")

    def _pruned(self, planes) -> None:
        if planes is not None and self.centred:
            raise ValueError("plane-pruned transforms need the 'fft' or 'modulated' layout")

    def forward(self, psi, planes=None):
        """Real space -> detector space: ``Psi = F[psi]``; shape ``(..., N3, N1, N2)`` complex, or
        ``(..., n, N1, N2)`` on ``planes`` only (a slice or an index array of the r3-transform axis;
        not with the centred layout)."""
        self._check(psi)
        self._pruned(planes)
        fft, kw = self.backend.fft, self.backend.fft_kwargs()
        if self.centred:
            psi = fft.ifftshift(psi, axes=(-3, -2, -1))
        a = fft.fft(psi, axis=-3, norm="ortho", **kw)
        if planes is None:
            a *= self._phase
        else:
            a = a[..., planes, :, :] * self._phase[planes]
        a = fft.fft2(a, axes=(-2, -1), norm="ortho", overwrite_x=True, **kw)
        return fft.fftshift(a, axes=(-3, -2, -1)) if self.centred else a

    def adjoint(self, big_psi, planes=None):
        """Detector space -> real space: ``F^H = F^-1`` (the transform is unitary). With ``planes``,
        ``big_psi`` holds those planes only ``(..., n, N1, N2)`` and the others are zero."""
        self._pruned(planes)
        fft, kw = self.backend.fft, self.backend.fft_kwargs()
        if planes is not None:
            a = fft.ifft2(big_psi, axes=(-2, -1), norm="ortho", **kw)
            a *= self._phase_conj[planes]
            full = self.backend.xp.zeros(a.shape[:-3] + self.shape, a.dtype)
            full[..., planes, :, :] = a
            return fft.ifft(full, axis=-3, norm="ortho", overwrite_x=True, **kw)
        self._check(big_psi)
        if self.centred:
            big_psi = fft.ifftshift(big_psi, axes=(-3, -2, -1))
        a = fft.ifft2(big_psi, axes=(-2, -1), norm="ortho", **kw)
        a *= self._phase_conj
        a = fft.ifft(a, axis=-3, norm="ortho", overwrite_x=True, **kw)
        return fft.fftshift(a, axes=(-3, -2, -1)) if self.centred else a

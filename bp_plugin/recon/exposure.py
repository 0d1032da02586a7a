"""How a detector frame samples the rocking curve: at one angle, or integrated over its step.

A step-and-count scan holds the sample still during each exposure: frame ``a`` is the intensity
at one rocking angle, box plane ``P_a`` (:attr:`ScanLayout.planes`), and the up-sampled planes
between measured ones are free. A continuous ("fly") rocking scan, or a finite rocking motion
during the exposure, integrates the intensity over the frame's whole step
``[delta_a - dtheta / 2, delta_a + dtheta / 2]``. With up-sampling ``u`` that interval holds the
box planes ``P_a + k`` for ``|k| <= u / 2``; the frame is their mean intensity (trapezoidal: the
two end planes of an even ``u`` lie on the step's edges, weight 1/2, and are shared with the
neighbouring frames)::

    h_a = sum_k W[a, k] |Psi(P_a + k)|^2 + b_a,      sum_k W[a, k] = 1.

The modulus correction scales each plane of a frame by that frame's factor ``sqrt(I_a / h_a)``
(the projection onto the measured intensity of an incoherent sum); a plane shared by two frames
takes their mean (coefficients ``W[a, k] / sum over the frames covering the plane``). The
maximum-likelihood gradient weighs the same factors by ``W[a, k]`` itself (the cost's derivative). Planes no
frame covers (beyond the first and last step) stay free. With ``u = 1`` the integrated frame
is its one plane: the point model. Arrays are NumPy or CuPy (``xp``).
"""
from __future__ import annotations

import numpy as np

from ..geometry import EXPOSURES


class RockingExposure:
    """Model intensity of the frames from the box's far field, and the modulus correction.

    Args:
        planes: ``(n_a,)`` box plane of each measured angle.
        n_planes: ``N3``.
        upsampling: planes per measured step.
        mode: ``"point"`` (one plane per frame) or ``"step"`` (the frame's whole step).
        xp: array module.
    """

    def __init__(self, planes: np.ndarray, n_planes: int, upsampling: int, mode: str, xp):
        if mode not in EXPOSURES:
            raise ValueError(f"rocking_exposure must be one of {EXPOSURES}, got {mode!r}")
        self.xp, self.mode = xp, mode
        self.integrated = mode == "step" and upsampling > 1
        self.planes = xp.asarray(np.asarray(planes, np.int64))
        if not self.integrated:
            return
        half = upsampling / 2
        ks = np.arange(-int(np.floor(half)), int(np.floor(half)) + 1)
        wk = np.where(np.abs(ks) == half, 0.5, 1.0)
        wk /= wk.sum()
        idx = np.asarray(planes)[:, None] + ks[None, :]                    # (n_a, K)
        inside = (idx >= 0) & (idx < n_planes)
        weights = np.where(inside, wk[None, :], 0.0)
        weights /= weights.sum(1, keepdims=True)
        coverage = np.zeros(n_planes)
        np.add.at(coverage, np.clip(idx, 0, n_planes - 1), weights)
        coef = np.where(inside, weights / np.maximum(coverage[np.clip(idx, 0, n_planes - 1)], 1e-30), 0.0)
        self.k = len(ks)
        self._idx = [xp.asarray(np.clip(idx[:, k], 0, n_planes - 1)) for k in range(self.k)]
        self._w = [xp.asarray(weights[:, k].astype(np.float32))[None, :, None, None] for k in range(self.k)]
        self._c = [xp.asarray(coef[:, k].astype(np.float32))[None, :, None, None] for k in range(self.k)]

    def intensity(self, big):
        """``(model intensity (no background) of the frames, float32 (B, n_a, N1, N2); the measured
        planes of the far field for point frames, else None)`` from the far field ``big``
        ``(B, N3, N1, N2)``; the second item spares :meth:`correction` a second gather."""
        if not self.integrated:
            bm = big[:, self.planes]
            return bm.real ** 2 + bm.imag ** 2, bm
        out = None
        for idx, w in zip(self._idx, self._w):
            b = big[:, idx]
            term = (b.real ** 2 + b.imag ** 2) * w
            out = term if out is None else out + term
        return out, None

    def correction(self, big, factor, *, planes_field=None, gradient: bool = False):
        """``Psi' - Psi`` on the box for per-frame factors ``factor = w (sqrt(I / h) - 1)``
        ``(B, n_a, N1, N2)``; zero on the planes no frame covers.

        ``gradient``: the weights of the cost's own derivative (``W[a, k]``, for maximum likelihood)
        instead of the projection's (``W[a, k] / coverage``); both are 1 for point frames.
        ``planes_field``: :meth:`intensity`'s second item, when the caller has it.
        """
        dbig = self.xp.zeros_like(big)
        if not self.integrated:
            dbig[:, self.planes] = (big[:, self.planes] if planes_field is None else planes_field) * factor
            return dbig
        for idx, c in zip(self._idx, self._w if gradient else self._c):
            dbig[:, idx] += big[:, idx] * (factor * c)
        return dbig

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


def plane_index(indices: np.ndarray, xp):
    """An index of box planes for ``a[:, index]``: a slice (a view, no gather) when ``indices`` are an
    increasing arithmetic progression, else a device index array."""
    indices = np.asarray(indices, np.int64)
    steps = np.diff(indices)
    if indices.size and (indices.size == 1 or (steps[0] > 0 and (steps == steps[0]).all())):
        step = int(steps[0]) if indices.size > 1 else 1
        return slice(int(indices[0]), int(indices[-1]) + 1, step)
    return xp.asarray(indices)


class RockingExposure:
    """Model intensity of the frames from the box's far field on the planes they use, and the
    modulus correction there.

    Args:
        planes: ``(n_a,)`` box plane of each measured angle.
        n_planes: ``N3``.
        upsampling: planes per measured step.
        mode: ``"point"`` (one plane per frame) or ``"step"`` (the frame's whole step).
        xp: array module.
        prune: False: far fields on the whole box (``used`` is None), the reference path.

    :attr:`used` (a slice or an index array of the box's planes, ``n_u`` of them) are the planes
    some frame sees; the far fields this class takes and gives are ``(B, n_u, N1, N2)`` on those
    planes only (:meth:`ShearedFFT.forward` with ``planes=used``): the others are free.
    """

    def __init__(self, planes: np.ndarray, n_planes: int, upsampling: int, mode: str, xp, *, prune: bool = True):
        if mode not in EXPOSURES:
            raise ValueError(f"rocking_exposure must be one of {EXPOSURES}, got {mode!r}")
        self.xp, self.mode = xp, mode
        self.integrated = mode == "step" and upsampling > 1
        planes = np.asarray(planes, np.int64)
        if not self.integrated:
            used = np.unique(planes) if prune else np.arange(n_planes)
            self.used = plane_index(used, xp) if prune else None
            pos = np.searchsorted(used, planes)
            # frames in plane order (the layout's): the used planes are the frames, no gather
            self._pos = None if np.array_equal(pos, np.arange(len(planes))) else plane_index(pos, xp)
            self.frames_are_planes = self._pos is None
            return
        self.frames_are_planes = False
        half = upsampling / 2
        ks = np.arange(-int(np.floor(half)), int(np.floor(half)) + 1)
        wk = np.where(np.abs(ks) == half, 0.5, 1.0)
        wk /= wk.sum()
        idx = planes[:, None] + ks[None, :]                                # (n_a, K)
        inside = (idx >= 0) & (idx < n_planes)
        weights = np.where(inside, wk[None, :], 0.0)
        weights /= weights.sum(1, keepdims=True)
        clipped = np.clip(idx, 0, n_planes - 1)
        coverage = np.zeros(n_planes)
        np.add.at(coverage, clipped, weights)
        coef = np.where(inside, weights / np.maximum(coverage[clipped], 1e-30), 0.0)
        used = np.unique(clipped[weights > 0]) if prune else np.arange(n_planes)
        self.used = plane_index(used, xp) if prune else None
        pos = np.clip(np.searchsorted(used, clipped), 0, len(used) - 1)    # weight-0 entries: any plane
        self.k = len(ks)
        self._idx = [plane_index(pos[:, k], xp) for k in range(self.k)]
        self._w = [xp.asarray(weights[:, k].astype(np.float32))[None, :, None, None] for k in range(self.k)]
        self._c = [xp.asarray(coef[:, k].astype(np.float32))[None, :, None, None] for k in range(self.k)]

    def intensity(self, big):
        """``(model intensity (no background) of the frames, float32 (B, n_a, N1, N2); the frames'
        planes of the far field for point frames, else None)`` from the far field ``big``
        ``(B, n_u, N1, N2)`` on :attr:`used`; the second item spares :meth:`correction` a gather."""
        if not self.integrated:
            bm = big if self._pos is None else big[:, self._pos]
            return bm.real ** 2 + bm.imag ** 2, bm
        out = None
        for idx, w in zip(self._idx, self._w):
            b = big[:, idx]
            term = (b.real ** 2 + b.imag ** 2) * w
            out = term if out is None else out + term
        return out, None

    def correction(self, big, factor, *, planes_field=None, gradient: bool = False):
        """``Psi' - Psi`` on :attr:`used` ``(B, n_u, N1, N2)`` for per-frame factors
        ``factor = w (sqrt(I / h) - 1)`` ``(B, n_a, N1, N2)``.

        ``gradient``: the weights of the cost's own derivative (``W[a, k]``, for maximum likelihood)
        instead of the projection's (``W[a, k] / coverage``); both are 1 for point frames.
        ``planes_field``: :meth:`intensity`'s second item, when the caller has it.
        """
        if not self.integrated:
            bm = (big if self._pos is None else big[:, self._pos]) if planes_field is None else planes_field
            if self._pos is None:
                return bm * factor
            dbig = self.xp.zeros_like(big)
            dbig[:, self._pos] = bm * factor
            return dbig
        dbig = self.xp.zeros_like(big)
        for idx, c in zip(self._idx, self._w if gradient else self._c):
            dbig[:, idx] += big[:, idx] * (factor * c)
        return dbig

"""Shrink-wrap: the support follows the object's smoothed amplitude (NumPy or CuPy arrays alike).

The threshold is taken on ``|rho|`` convolved with a Gaussian of ``sigma`` voxels, as in the
shrink-wrap of Marchesini et al. (2003), not on ``|rho|`` itself. The foils of a Bragg
ptychography scan are two or three reconstruction voxels thick, so nearly every crystal voxel is a
surface voxel whose amplitude holds only part of a voxel's crystal; a raw threshold, applied again
every few iterations and never given back, removes some of them for good, and the data then want
what was cut away (on family member 3 at the full schedule: data error 0.0081 against 0.0045
smoothed, object error 0.229 against 0.174; ``docs/family.md``).
"""
from __future__ import annotations

import numpy as np


def gaussian_smooth(a, sigma_voxels: float, xp):
    """``a`` (real, any number of axes) convolved with a Gaussian of ``sigma_voxels`` along every
    axis, zero outside the array (the object's box holds no crystal beyond its edges).
    Separable, ``2 round(3 sigma) + 1`` taps per axis; ``sigma_voxels = 0`` returns ``a``."""
    if sigma_voxels <= 0:
        return a
    r = int(3 * sigma_voxels + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_voxels) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = a.astype(np.float32)
    for axis in range(a.ndim):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (r, r)
        p = xp.pad(out, pad)
        n = out.shape[axis]
        acc = xp.zeros_like(out)
        for i, w in enumerate(k):
            sl = [slice(None)] * a.ndim
            sl[axis] = slice(i, i + n)
            acc += np.float32(w) * p[tuple(sl)]
        out = acc
    return out


def shrinkwrap(support, obj, threshold: float, sigma_voxels: float, xp):
    """The support without the voxels where the smoothed ``|obj|`` is under ``threshold`` of its
    maximum (a voxel once out stays out). ``support`` bool, ``obj`` complex, same shape."""
    a = gaussian_smooth(xp.abs(obj), sigma_voxels, xp)
    return support & (a > threshold * a.max())

"""Fused CPU kernels of the position update (numba), one pass where NumPy takes six.

On a CPU the update of one position is bound by memory traffic: at the paper's box (126 x 200 x
160, 41 MB per complex field) every NumPy pass with its temporary costs about 9 ms, and the object
step of Eqs. 5, 7, 9 takes six of them. The kernels here read each operand once, write the result
in place, and run over the CPU's cores. They compute in float32 with the operations of the NumPy
expressions of :class:`~bp_plugin.recon.engine.Reconstructor` in the same order (NumPy's
complex-by-real division as a multiplication by the reciprocal). The results agree to float32
rounding, not bitwise: NumPy's SIMD complex product fuses a multiply-add on CPUs that have one
(6e-7 relative after 4 joint and 3 ML iterations on ``tiny``, tests/test_kernels.py); the sums
(cost, norm) accumulate in float64 where NumPy sums float32 pairwise.

``available`` is False where numba is not installed (or ``BP_FUSED=0``): the engine then runs its
NumPy expressions, which are also those of the GPU (CuPy).
"""
from __future__ import annotations

import os

import numpy as np

try:
    if os.environ.get("BP_FUSED", "1") == "0":
        raise ImportError("fused kernels switched off (BP_FUSED=0)")
    import numba
except ImportError:                      # NumPy expressions instead (the same to float32 rounding)
    numba = None

available = numba is not None

if available:
    _jit = numba.njit(parallel=True, cache=True, nogil=True)
    _f32 = np.float32

    @_jit
    def _object_update(obj, probe, d, support, pmax, one_b, beta, mu):   # pragma: no cover - compiled
        n3, n1, n2 = obj.shape
        mp = mu * pmax
        bp = beta * pmax
        for i3 in numba.prange(n3):
            for i1 in range(n1):
                for i2 in range(n2):
                    p = probe[i3, i1, i2]
                    r = obj[i3, i1, i2]
                    dd = d[i3, i1, i2]
                    reg = (_f32(1) - support[i3, i1, i2]) * mp
                    pr, pi = p.real, p.imag
                    # d * conj(P) - reg * rho, as NumPy's complex64 products
                    nr = dd.real * pr - dd.imag * (-pi)
                    ni = dd.real * (-pi) + dd.imag * pr
                    nr = nr - (reg * r.real - _f32(0) * r.imag)
                    ni = ni - (reg * r.imag + _f32(0) * r.real)
                    lam = (pr * pr + pi * pi) * one_b
                    lam = lam + reg
                    lam = lam + bp
                    scl = _f32(1) / lam
                    obj[i3, i1, i2] = complex(nr * scl + r.real, ni * scl + r.imag)

    @_jit
    def _modulus(big, amp, mask, measured, background, one_g, g, update_background):  # pragma: no cover
        _, n_a, n1, n2 = big.shape
        cost = np.zeros(n_a)
        norm = np.zeros(n_a)
        for a in numba.prange(n_a):
            c = 0.0
            s = 0.0
            for i1 in range(n1):
                for i2 in range(n2):
                    z = big[0, a, i1, i2]
                    h = z.real * z.real + z.imag * z.imag + background[a, i1, i2]
                    sh = np.sqrt(max(h, _f32(1e-12)))
                    am = amp[a, i1, i2]
                    ww = mask[i1, i2] * measured[a]
                    e = am - sh
                    c += ww * (e * e)
                    s += ww * (am * am)
                    ratio = am / sh
                    f = ww * (ratio - _f32(1))
                    big[0, a, i1, i2] = complex(z.real * f, z.imag * f)
                    if update_background and ww > 0:
                        b = one_g + (g * am) / sh
                        background[a, i1, i2] = background[a, i1, i2] * (b * b)
            cost[a] = c
            norm[a] = s
        return cost.sum(), norm.sum()


def object_update(obj_view, probe, d, support_view, pmax, beta: float, mu: float) -> None:
    """Eqs. 5, 7, 9 in place on one view of the object (complex64 ``(N3, N1, N2)``, any strides):
    ``rho += (P* d - reg rho) / ((1 - beta)|P|^2 + reg + beta max|P|^2)``, ``reg = mu max|P|^2 (1 - S)``.

    ``probe``, ``d``: complex64 box arrays; ``support_view``: float32; ``pmax``: ``max |P|^2``.
    Constants are rounded to float32 as NumPy rounds the engine's Python floats.
    """
    _object_update(obj_view, probe, d, support_view, np.float32(pmax), np.float32(1 - beta), np.float32(beta),
                   np.float32(mu))


def modulus(big, amp, mask, measured, background, gamma: float, update_background: bool):
    """The modulus correction of point frames of one position, in place: ``big`` (complex64
    ``(1, n_a, N1, N2)``, the far field on the frames' planes) becomes ``Psi' - Psi = Psi w (sqrt(I / h) - 1)``
    with ``h = |Psi|^2 + b`` and ``w = mask * measured``; the background ``(n_a, N1, N2)`` is updated in
    place (Eq. 11) when asked.

    Args: ``amp`` ``(n_a, N1, N2)`` measured amplitudes; ``mask`` ``(N1, N2)`` and ``measured``
    ``(n_a,)`` float32 weights.

    Returns ``(cost, norm)`` as Python floats (float64 sums over the frames).
    """
    return _modulus(big, amp, mask, measured, background, np.float32(1 - gamma), np.float32(gamma),
                    bool(update_background))

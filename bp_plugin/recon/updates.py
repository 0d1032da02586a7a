"""The update equations of one position (physics.md section 3, Eqs. 5-10), as pure functions.

The engine (:mod:`bp_plugin.recon.engine`) calls them on the views of its state; NumPy or CuPy
arrays through ``xp``. Shapes: a box ``(N3, N1, N2)`` (complex64 object view ``rho_v``, probe,
exit-wave change ``d = psi' - psi``; float32 support and ``|P|^2``); the probe section on the
operator's grid ``(np1, N2)``. The fused CPU kernel of the object step is
:func:`bp_plugin.recon.cpu_kernels.object_update` (the same to float32 rounding).
"""
from __future__ import annotations

import numpy as np

from ..geometry import ExperimentGeometry


def object_step(xp, probe, rho_v, support_v, d, mu: float, beta: float, intensity=None):
    """Eqs. 5, 7, 9 on one view: the new ``rho_v``.

    ``rho + (P* d - mu_j (1 - S) rho) / ((1 - beta)|P|^2 + beta max|P|^2 + mu_j (1 - S))``, with
    ``mu_j = mu max|P|^2``. ``intensity``: ``(|P|^2, max |P|^2)`` when the caller has them.
    In-place passes: on a CPU the step is bound by memory traffic, not arithmetic.
    """
    if intensity is None:
        p2 = probe.real ** 2 + probe.imag ** 2
        intensity = (p2, p2.max())
    p2, pmax = intensity
    reg = (1 - support_v) * (mu * pmax)                        # mu_j outside the support
    num = d * xp.conj(probe)
    num -= reg * rho_v
    lam = p2 * np.float32(1 - beta)
    lam += reg
    lam += beta * pmax
    num /= lam
    num += rho_v
    return num


def probe_increment(xp, probe_op, subvoxel_m, rho_v, d, alpha: float, probe_norm: str):
    """Eqs. 6, 8, 10: the change of the (unshifted) probe section ``(np1, N2)``, before the NA constraint.

    ``probe_norm="paper"``: ``R[rho* d / lam_P]`` with ``lam_P`` of Eq. 10 per voxel.
    ``"line"``: ``R[rho* d] / lam`` with ``lam`` built from ``R[|rho|^2]``, the object's
    intensity averaged along the same lines parallel to ``k_i`` (the least-squares step for a
    probe invariant along the beam; the per-voxel form is diluted by the share of each line
    that crosses the crystal, a quarter for the paper's foil). ``subvoxel_m``: the position's
    sub-voxel remainder (``ScanLayout.subvoxel[j]``), undone on the increment.
    """
    r2 = rho_v.real ** 2 + rho_v.imag ** 2
    line = probe_norm == "line"
    if line:
        r2 = probe_op.project_real(r2)
    lam = xp.maximum((1 - alpha) * r2 + alpha * r2.max(), 1e-20)
    if line:
        inc = probe_op.project(xp.conj(rho_v) * d) / lam
    else:
        inc = probe_op.project(xp.conj(rho_v) * d / lam)
    s1, s2 = probe_op.subvoxel_shift_m(subvoxel_m)
    return probe_op.shift(inc, -s1, -s2)


def upsampling_ratio(geometry: ExperimentGeometry, requested: int | None) -> tuple[int, str | None]:
    """The ratio of the reconstruction grid and a warning (or None): ``requested``, else the
    geometry's default (:meth:`ExperimentGeometry.upsampling_default`); a requested ratio below
    the default is kept, with the warning."""
    default = geometry.upsampling_default()
    if requested is None:
        return default, None
    requested = int(requested)
    if requested < 1:
        raise ValueError(f"up-sampling must be >= 1, got {requested}")
    if requested >= default:
        return requested, None
    return requested, (f"up-sampling x{requested} is below the x{default} this geometry needs (a beam filling the "
                       f"detector's window, {geometry.widest_sampled_beam_m * 1e6:.2f} um along p1, at a rocking step "
                       f"of {geometry.rocking_step_deg:g} deg): the probe's tails alias along the rocking direction; "
                       f"drop --upsampling to use x{default}")

"""The sequential iteration, the paper's ePIE order: each position's update before the next one's.

The default of :meth:`bp_plugin.recon.engine.Reconstructor.step` (``mode="sequential"``); the batched
one, for GPUs, is :mod:`bp_plugin.recon.batched`.
"""
from __future__ import annotations

import numpy as np

from . import cpu_kernels
from .updates import object_step, probe_increment


def sequential_pass(rec, update_probe: bool):
    """One pass of reconstructor ``rec`` over its positions in its order; updates its object (and
    probe, background) in place. Returns ``(cost, data norm)`` as float64 device scalars."""
    cost = norm = 0.0
    sup = rec.support.astype(np.float32)
    xp, c = rec.backend.xp, rec.config
    fused = rec.fused
    obj = rec.modulated
    for j in rec.position_order():
        if rec.pause_hook is not None:
            rec.pause_hook()
        v = rec.layout.view(j)
        # the fused kernel squares the probe itself: no |P|^2 box for it
        probe, intensity = rec.probe3d_with_intensity(j, box_intensity=not fused)
        rho_v = obj[v]
        d, cj, nj = rec.fourier(j, probe * rho_v, c.background_update)
        cost, norm = cost + cj, norm + nj
        if update_probe:                            # from the object before its update
            inc = probe_increment(xp, rec.probe_op, rec.layout.subvoxel[j], rho_v, d, c.alpha, c.probe_norm)
            rec.probe2d = rec.probe_op.na_constraint(rec.probe2d + inc)
        if fused:
            cpu_kernels.object_update(rho_v, probe, d, sup[v], intensity[1], c.beta, c.mu)
        else:
            obj[v] = object_step(xp, probe, rho_v, sup[v], d, c.mu, c.beta, intensity)
    return cost, norm

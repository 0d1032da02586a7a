"""The batched iteration: accumulated updates over ``batch_size`` positions at a time.

One batched FFT per batch keeps a GPU busy; the object step divides the summed ``P* d`` by the
summed illumination (the ``lam_rho`` of Eq. 9 applied to the batch), with ``batched_beta`` in place
of ``beta`` (:class:`bp_plugin.recon.config.ReconConfig`). The sequential iteration, the paper's
ePIE order, is :meth:`bp_plugin.recon.engine.Reconstructor.step`'s default.
"""
from __future__ import annotations

import numpy as np

from .updates import probe_increment


def batched_pass(rec, update_probe: bool):
    """One pass of reconstructor ``rec`` over its positions in batches; updates its object (and
    probe, background) in place. Returns ``(cost, data norm)`` as float64 device scalars."""
    xp, c = rec.backend.xp, rec.config
    cost = norm = 0.0
    sup = rec.support.astype(np.float32)
    outside = 1 - sup
    order = rec.position_order()
    for b0 in range(0, len(order), c.batch_size):
        if rec.pause_hook is not None:
            rec.pause_hook()
        batch = order[b0:b0 + c.batch_size]
        views = [rec.layout.view(j) for j in batch]
        probes = xp.stack([rec.probe3d(j) for j in batch])
        obj = rec.modulated
        rho_b = xp.stack([obj[v] for v in views])
        d, cb, nb = rec.fourier(batch, probes * rho_b, c.background_update)
        cost, norm = cost + cb, norm + nb
        num = xp.zeros_like(obj)
        den = xp.zeros(obj.shape, np.float32)
        reg = xp.zeros(obj.shape, np.float32)
        p2 = xp.abs(probes) ** 2
        for k, v in enumerate(views):
            num[v] += xp.conj(probes[k]) * d[k]
            den[v] += p2[k]
            reg[v] += c.mu * p2[k].max()
        touched = den > 0
        den = (1 - c.batched_beta) * den + c.batched_beta * den.max()
        step = (num - reg * outside * obj) / xp.where(touched, den + reg * outside, 1)
        if update_probe:
            pinc = sum(probe_increment(xp, rec.probe_op, rec.layout.subvoxel[j], rho_b[k], d[k], c.alpha,
                                       c.probe_norm) for k, j in enumerate(batch))
            rec.probe2d = rec.probe_op.na_constraint(rec.probe2d + pinc / len(batch))
        rec.modulated = obj + xp.where(touched, step, 0).astype(np.complex64)
    return cost, norm

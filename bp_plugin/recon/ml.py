"""Maximum-likelihood refinement of the object: preconditioned nonlinear conjugate gradient.

Gaussian noise model on the amplitudes (the same cost the joint updates decrease):

    L(rho) = sum_j sum_q w (sqrt(I_j) - sqrt(h_j))^2 + sum_j mu_j sum_{r in view_j, outside S} |rho|^2,

with probe, background and support fixed. On several processes each sums its own positions' terms
and the sums are taken across them (costs, gradient, regulariser, illumination), so every process
takes the same steps: the ML stage does not depend on the number of processes (to rounding). Its gradient with respect to ``conj(rho)`` is
``-sum_j P_j* d_j + (sum_j mu_j) (1 - S) rho`` (``d_j`` the exit-wave correction of the joint
updates), preconditioned by ``1 / (sum_j |P_j|^2 + eps)``. Directions are Polak-Ribiere (reset
when negative); the step comes from a parabola through the cost at 0, its slope at 0 and the
cost at a trial step.
"""
from __future__ import annotations

import time

import numpy as np


class MLObjective:
    """The ML cost of a reconstructor's object with its probe, background and support held.

    ``mu_out``: the summed support regulariser ``sum_j mu_j`` of the positions that see a voxel,
    outside the support (float32, object-shaped). Object arrays are in the engine's stored
    ("modulated") form, ``rec.modulated``.
    """

    def __init__(self, rec):
        xp = rec.backend.xp
        self.rec = rec
        mu_sum = xp.zeros(rec.modulated.shape, np.float32)
        for j in rec.active_positions():        # mu * max|P|^2 in float64, added in float32 (as a host float was)
            mu_j = (xp.abs(rec.probe3d(j)).max() ** 2).astype(np.float64) * rec.config.mu
            mu_sum[rec.layout.view(j)] += mu_j.astype(np.float32)
        self.mu_out = rec.comm.sum(mu_sum) * (~rec.support).astype(np.float32)

    def penalty(self, rho):
        """The support penalty at ``rho``, a float64 device scalar."""
        xp = self.rec.backend.xp
        return self.rec.total(self.mu_out * xp.abs(rho) ** 2)

    def cost(self, rho) -> float:
        """Data cost plus the support penalty at ``rho`` (summed on the device, read once)."""
        rec = self.rec
        total = 0.0
        for j in rec.active_positions():
            _, _, _, sqrt_h, a, w = rec.model(j, (rec.probe3d(j) * rho[rec.layout.view(j)])[None])
            total = total + rec.total(w * (a - sqrt_h) ** 2)
        return float(rec.comm.sum(total) + self.penalty(rho))

    def cost_grad(self, rho):
        """``(data cost, total cost, gradient with respect to conj(rho))`` (object-shaped, complex64):
        ``dL = 2 Re <grad, d rho>``; the costs are host floats (one read per call)."""
        rec, xp = self.rec, self.rec.backend.xp
        grad = xp.zeros_like(rho)
        total = 0.0
        for j in rec.active_positions():
            if rec.pause_hook is not None:
                rec.pause_hook()
            v = rec.layout.view(j)
            probe = rec.probe3d(j)
            d, cj, _ = rec.fourier(j, probe * rho[v], False, gradient=True)
            total += cj
            grad[v] -= xp.conj(probe) * d
        grad = rec.comm.sum(grad) + self.mu_out * rho
        total, penalty = float(rec.comm.sum(total)), float(self.penalty(rho))
        return total, total + penalty, grad


def ml_refine(rec, iterations: int, callback=None) -> None:
    """Run ``iterations`` of preconditioned nonlinear CG on ``rec.object`` (in place).

    Appends ``{"iteration", "error", "seconds", "stage": "ml"}`` to ``rec.history`` (error =
    data cost / data norm, as for the joint updates) and calls ``callback(rec)`` after each.
    """
    xp = rec.backend.xp
    active = rec.active_positions()
    norm = 0.0
    for j in active:
        norm = norm + rec.total(rec.weights(j) * rec.amplitudes(j) ** 2)
    norm = float(rec.comm.sum(norm))
    illum = rec.illumination()
    objective = MLObjective(rec)
    precond = 1.0 / (illum + 1e-3 * illum.max())
    rho = rec.modulated
    g_prev = s = pg_prev = None
    step = None
    for _ in range(iterations):
        t0 = time.perf_counter()
        data_cost, cost0, g = objective.cost_grad(rho)
        pg = precond * g
        if s is None:
            s = -pg
        else:
            beta = float(xp.real(xp.vdot(g, pg - pg_prev))) / max(float(xp.real(xp.vdot(g_prev, pg_prev))), 1e-30)
            s = -pg + max(beta, 0.0) * s
        slope = 2 * float(xp.real(xp.vdot(g, s)))          # dL/dt at t = 0 along rho + t s
        if slope >= 0:                                     # not a descent direction: restart
            s, slope = -pg, -2 * float(xp.real(xp.vdot(g, pg)))
        trial = step if step else 1.0
        cost_t = objective.cost(rho + trial * s)
        curv = (cost_t - cost0 - slope * trial) / trial ** 2
        step = -slope / (2 * curv) if curv > 0 else trial * 2
        new = rho + np.float32(step) * s
        if objective.cost(new) > cost0:                       # the parabola lied: take the trial if it helped
            step = trial if cost_t < cost0 else 0.5 * trial
            new = rho + np.float32(step) * s if cost_t < cost0 else rho
        rho = new.astype(np.complex64, copy=False)
        g_prev, pg_prev = g, pg
        rec.modulated = rho
        rec.history.append({"iteration": rec.iteration, "error": data_cost / norm if norm else float("nan"),
                            "seconds": time.perf_counter() - t0, "stage": "ml", "probe_update": False})
        rec.iteration += 1
        if callback is not None:
            callback(rec)

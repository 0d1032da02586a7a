"""One iteration on several processes: each runs it on its own positions, then the ranks agree.

Every rank starts the iteration from the same state (object ``rho0``, probe ``P0``, background
``b0``), runs the updates of its mode (sequential ePIE, or batched) over its own positions, and
then all take the consensus

    rho = rho0 + sum_r W_r (rho_r - rho0) / sum_r W_r     where sum_r W_r > 0 (else rho0),
    P   = P0   + sum_r n_r (P_r - P0) / sum_r n_r,         b likewise,

with ``W_r = sum_{j of r} |P0_j|^2`` the rank's illumination (object-shaped) and ``n_r`` its
number of measured positions. A voxel lit by one rank keeps that rank's update whole; one lit by
several takes their mean, weighted by how strongly each lit it (the weights of the object step
itself). The probe and background, which every position sees, take the mean of the ranks' steps.
Each rank's updates are the single-process equations on its share, so ranks converge as ePIE does
within a block and by averaging across blocks; the result depends on the number of ranks (not
on their speed), and with one process this merge is not run at all.

Communication per iteration: two object-sized sums (complex64 and float32), the probe section
and the background, and the cost and data norm (:meth:`Reconstructor.step`).
"""
from __future__ import annotations

import numpy as np


class IterationStart:
    """The state a rank starts an iteration from, and the merge that ends it (module docstring)."""

    def __init__(self, rec):
        self.obj = rec.modulated.copy()                  # the updates work in place on views of it
        self.probe = rec.probe2d.copy()
        self.background = rec.background.copy()
        self.weight = rec.illumination(local=True)
        self.n = float(len(rec.active_positions()))

    def merge(self, rec) -> None:
        """Replace ``rec``'s object, probe and background by the ranks' consensus (collective: every
        rank calls it once per iteration)."""
        xp, comm = rec.backend.xp, rec.comm
        num = comm.sum(self.weight * (rec.modulated - self.obj))
        den = comm.sum(self.weight)
        lit = den > 0
        rec.modulated = (self.obj + xp.where(lit, num / xp.where(lit, den, 1), 0)).astype(np.complex64)
        n = comm.sum(self.n)
        if n > 0:
            rec.probe2d = (self.probe + comm.sum(self.n * (rec.probe2d - self.probe)) / n).astype(np.complex64)
            rec.background = (self.background
                              + comm.sum(self.n * (rec.background - self.background)) / n).astype(np.float32)

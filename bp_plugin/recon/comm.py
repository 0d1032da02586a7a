"""The engine's one seam for running on several processes: who holds which positions, and sums.

A reconstruction distributed over ``size`` processes (MPI ranks, :mod:`bp_plugin.recon.mpi`) gives
each its share of the scan positions (a contiguous block in scan order: neighbours on the raster
overlap, so most of a rank's overlaps stay within the rank) and the whole object. After each
iteration the ranks' changes are merged by sums across processes (:meth:`Reconstructor.step`).
The engine calls only :meth:`share` and :meth:`sum`; it never imports mpi4py. :data:`SERIAL`, one
process, is the default: its sum is the identity, so one process runs exactly as it always did.
"""
from __future__ import annotations

import numpy as np


class Serial:
    """One process: every position here, sums are the values themselves (no copy, no wait)."""

    rank = 0
    size = 1
    local_rank = 0

    def share(self, n_positions: int) -> np.ndarray:
        """Indices of the positions this process holds (all)."""
        return np.arange(n_positions)

    def sum(self, value):
        """The sum of ``value`` over the processes: ``value`` itself."""
        return value


SERIAL = Serial()


def block_share(n_positions: int, rank: int, size: int) -> np.ndarray:
    """Positions of ``rank`` among ``size``: contiguous blocks in scan order, sizes differing by one
    at most (``numpy.array_split``)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in 0..{size - 1}")
    return np.array_split(np.arange(n_positions), size)[rank]


def together(comm, fn):
    """``fn()`` on every process, which then agree on whether it failed before any goes on (one sum).

    A failure is raised on every process, marked ``every_rank = True``: on the one that failed as
    itself, on the others as a RuntimeError that says how many failed. So no process is left
    waiting in a sum the others will not make, and none needs to end them all (``MPI_Abort``
    races the processes' error lines to the launcher). ``fn`` must make no collective call.
    ``comm`` None or of one process: ``fn()`` as it is."""
    try:
        value, failed = fn(), None
    except Exception as exc:
        value, failed = None, exc
    if comm is not None and comm.size > 1:
        n_failed = int(comm.sum(failed is not None))
        if n_failed and failed is None:
            failed = RuntimeError(f"{n_failed} other process(es) failed (their lines say why)")
        if failed is not None:
            failed.every_rank = True
    if failed is not None:
        raise failed
    return value

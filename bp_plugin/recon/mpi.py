"""Reconstruction across MPI ranks (mpi4py, imported only here and only when asked for).

Start with ``mpirun -n N bp-plugin reconstruct scan.h5 --out r/result.h5`` (or ``srun``): the
command sees that it was launched by MPI (:func:`launched_by_mpi`) and builds an :class:`MPIComm`;
``--mpi`` forces it. Each rank holds its block of positions (:func:`bp_plugin.recon.comm.block_share`)
and the whole object; the engine merges the ranks' changes after every iteration by sums across
ranks (:meth:`MPIComm.sum`). Arrays are summed through host buffers, or on the device when
``BP_MPI_CUDA_AWARE=1`` says the MPI library reads CuPy's memory (a CUDA-aware build; mpi4py passes
CuPy arrays to it by ``__cuda_array_interface__``). One GPU per rank: :func:`use_local_gpu`
picks the rank's device from its rank on the node.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .comm import block_share

#: the number of processes, as MPI launchers tell each one: MPICH's Hydra, Intel MPI and Slurm's
#: srun with PMI (PMI_SIZE), Open MPI's mpirun (OMPI_COMM_WORLD_SIZE), MPICH on one node (MPI_LOCALNRANKS)
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    """True when this process was started by an MPI launcher with more than one process (a plain
    ``python`` or a one-process ``mpirun`` needs no MPI)."""
    for name in LAUNCHER_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 1:
            return True
    return False


class MPIComm:
    """A communicator of mpi4py as the engine's :class:`bp_plugin.recon.comm.Serial` interface."""

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError:
            raise RuntimeError("MPI asked for but mpi4py is not installed: pip install 'bp-plugin[mpi]' "
                               "(mpi4py and an MPI library), or run on one process") from None
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()
        self.cuda_aware = os.environ.get("BP_MPI_CUDA_AWARE") == "1"

    def share(self, n_positions: int, rank: int | None = None) -> np.ndarray:
        """The positions this rank holds (or ``rank`` does)."""
        return block_share(n_positions, self.rank if rank is None else rank, self.size)

    def sum(self, value):
        """The sum over the ranks of a Python / NumPy number (a float back) or of an array (a new
        array of the same kind and device; the argument is left alone)."""
        if np.ndim(value) == 0:                               # a device scalar too: read once here
            return self.comm.allreduce(float(value), op=self._mpi.SUM)
        if hasattr(value, "__cuda_array_interface__"):
            import cupy

            if self.cuda_aware:
                out = cupy.empty_like(value)
                cupy.cuda.get_current_stream().synchronize()      # MPI reads the memory, not the stream
                self.comm.Allreduce(cupy.ascontiguousarray(value), out, op=self._mpi.SUM)
                return out
            host = cupy.asnumpy(value)
            self.comm.Allreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM)
            return cupy.asarray(host)
        host = np.array(value, copy=True, order="C")
        self.comm.Allreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM)
        return host

    def scatter(self, objs, root: int = 0):
        """``objs[r]`` (a list of ``size`` picklable objects on ``root``, None elsewhere) to rank r."""
        return self.comm.scatter(objs, root=root)

    def bcast(self, obj, root: int = 0):
        """A picklable object from ``root`` to every rank."""
        return self.comm.bcast(obj, root=root)

    def abort(self, code: int = 1) -> None:
        """End every rank: one that failed must not leave the others waiting in a sum forever."""
        self.comm.Abort(code)


def mpiexec() -> str | None:
    """The launcher beside this Python (the ``mpi`` extra puts MPICH's in the venv), else on the PATH."""
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def world(requested: bool | None = None) -> MPIComm | None:
    """The processes of this run: an :class:`MPIComm` over ``MPI.COMM_WORLD`` when ``requested``
    (``--mpi``), or when ``None`` and :func:`launched_by_mpi`; None (one process) otherwise."""
    if requested or (requested is None and launched_by_mpi()):
        return MPIComm()
    return None


def use_local_gpu(comm) -> int | None:
    """Make the rank's GPU current: local rank modulo the GPUs of the node (one GPU per rank when
    there are as many; ranks share them round-robin otherwise). Returns the device id, or None
    where CuPy sees no GPU."""
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:             # no CuPy, or a CUDA driver error on a machine without a GPU
        return None
    if n < 1:
        return None
    device = comm.local_rank % n
    cupy.cuda.Device(device).use()
    return device

"""Run by ``tests/test_mpi.py`` under ``mpiexec -n 2``: a run whose engine cannot be opened on one
rank fails on both, which then open the next run's engine (the online service goes on).

Rank 1 is given a mask of the wrong shape (an engine that fails on that rank only), then both get
the good arguments. Prints one JSON line (rank 0): what each rank raised, and the second engine.
"""
import json
import sys

import numpy as np

from bp_plugin.dataset import read_dataset
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.mpi import MPIComm
from streaming.engine_ranks import open_engine


def main(path: str) -> None:
    comm = MPIComm()
    ds = read_dataset(path)
    args = dict(geometry=ds.geometry, translations_m=ds.translations_m, mask=ds.mask, shape=ds.frames.shape,
                config=ReconConfig(upsampling=2))
    bad = dict(args, mask=np.ones((3, 3), bool)) if comm.rank == 1 else args
    try:
        open_engine(bad, None, comm)
        first = "opened"
    except Exception as exc:
        first = f"{type(exc).__name__}: {exc} (every_rank={getattr(exc, 'every_rank', False)})"
    rec = open_engine(args, None, comm)
    report = comm.comm.gather({"first": first, "positions": int(rec.owned.sum())}, root=0)
    if comm.rank == 0:
        print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])

"""Run by ``tests/test_mpi.py`` under ``mpiexec -n 2``: the ML stage on two ranks against one process.

Rank 0 runs a few joint iterations on one process and hands the state to every rank; all ranks then
refine it together (maximum likelihood, whose sums are taken across the ranks), and rank 0 refines
the same state alone beside them. Prints one JSON line (rank 0) with the largest differences.
"""
import json
import sys

import numpy as np

from bp_plugin.dataset import read_dataset
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.engine import Reconstructor
from bp_plugin.recon.ml import ml_refine
from bp_plugin.recon.mpi import MPIComm


def main(path: str) -> None:
    comm = MPIComm()
    ds = read_dataset(path)
    cfg = ReconConfig(upsampling=2).scaled(20, 4)
    state = None
    if comm.rank == 0:
        alone = Reconstructor.from_scan(ds, config=cfg)
        for _ in range(6):
            alone.step()
        state = alone.state()
    state = comm.bcast(state)
    together = Reconstructor.from_scan(ds, config=cfg, comm=comm)
    together.load_state(state)
    ml_refine(together, 4)
    shares = comm.comm.gather(int(together.amp.shape[0]), root=0)
    if comm.rank == 0:
        ml_refine(alone, 4)
        a, b = np.asarray(alone.object), np.asarray(together.object)
        errors = [(h["error"], g["error"]) for h, g in zip(alone.history[-4:], together.history[-4:])]
        print(json.dumps({"object_rel_diff": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
                          "error_rel_diff": max(abs(x - y) / x for x, y in errors),
                          "ml_gain": errors[0][0] / errors[-1][0], "shares": shares,
                          "positions": int(len(ds.translations_m))}))


if __name__ == "__main__":
    main(sys.argv[1])

"""The online reconstructor's engine on several MPI ranks: rank 0 serves, the others follow it.

Start it as ``mpirun -n N bp-plugin reconstructor --listen ... --workdir ...`` (or ``srun``).
Rank 0 is the service exactly as on one process: the receiver, the spool (frames persisted first),
checkpoints, receipts and Tiled. A Bragg run's engine is spread over the N ranks
(:mod:`bp_plugin.recon.merge`): each rank holds its block of positions and the whole object.
Every engine call of :class:`streaming.live.LiveReconstruction` that changes the engine's state is
first told to the other ranks (:class:`Leader`), which make the same call (:func:`follow`):

- ``open``: a run's engine (geometry, translations, mask, shape, configuration);
- ``frames``: the frames placed since the last iteration, each sent only to the rank holding its
  position (a scatter from rank 0), the mask when it changed, the first probe scaling;
- ``load`` (a checkpoint), ``step`` (one live iteration), ``final`` (the final phase: every
  iteration ends with rank 0 saying whether to go on, so an interrupted run stops all ranks
  between iterations), ``finish`` (the sums of the summary), ``close``, ``end``.

DF-XRM runs stay on rank 0. A run whose engine cannot be opened on some rank fails on all of them
(they agree, :func:`open_engine`) and the service goes on with the next run. A failure inside a
spread engine once it runs ends every rank (MPI_Abort): the spool and the last checkpoint are on
disk, and the next start of the service resumes the run.
"""
from __future__ import annotations

import logging

import numpy as np

from bp_plugin.recon.comm import together
from bp_plugin.recon.engine import Reconstructor

log = logging.getLogger(__name__)


class StopFinal(Exception):
    """Rank 0 left the final phase between two iterations (the service is stopping)."""


def open_engine(args: dict, backend, comm) -> Reconstructor:
    """A run's engine with no frame measured; ``args``: ``geometry``, ``translations_m``, ``mask``,
    ``shape`` (n_angles, n_positions, N1, N2) and ``config``, as :class:`streaming.live.LiveReconstruction` sends.

    On several ranks every rank opens it and they agree first (:func:`bp_plugin.recon.comm.together`):
    a run whose engine cannot be opened on some rank fails on every rank, and the service goes on."""
    shape = tuple(args["shape"])
    rec = together(comm, lambda: Reconstructor(
        args["geometry"], np.zeros(shape, np.float32), args["translations_m"], args["mask"],
        np.zeros(shape[:2], bool), config=args["config"], backend=backend, comm=comm, scale_probe=False))
    rec.scale_probe_to_data()
    return rec


def place_frames(rec: Reconstructor, frames, mask=None, scale: bool = False) -> None:
    """Frames ``[(angle index, position index, frame or None), ...]`` into the engine (None: another
    rank's position, marked measured only), then the mask (when given) and the first probe scaling."""
    for ia, ip, frame in frames:
        rec.set_frame(ia, ip, frame)
    if mask is not None:
        rec.mask = rec.backend.xp.asarray(np.asarray(mask).astype(np.float32))
    if scale:
        rec.scale_probe_to_data()


class Leader:
    """Rank 0's side: tells the followers what the engine does, before doing it."""

    def __init__(self, comm):
        self.comm = comm

    def tell(self, command: str, arg=None) -> None:
        self.comm.bcast((command, arg))

    def place(self, rec: Reconstructor, frames, mask=None, scale: bool = False) -> None:
        """:func:`place_frames` on every rank, each frame shipped to its position's rank only."""
        self.tell("frames", (mask, scale))
        share = [[] for _ in range(self.comm.size)]
        for r in range(self.comm.size):
            mine = set(self.comm.share(rec.layout.n_positions, r).tolist())
            share[r] = [(ia, ip, f if ip in mine else None) for ia, ip, f in frames]
        place_frames(rec, self.comm.scatter(share), mask, scale)

    def lockstep(self, callback):
        """``callback`` for the final phase: after each iteration, the followers learn whether rank 0
        goes on (its own callback may stop the run)."""
        def tick(rec):
            ok = False
            try:
                if callback is not None:
                    callback(rec)
                ok = True
            finally:
                self.comm.bcast(ok)
        return tick

    def fail(self, uid: str, exc: BaseException) -> None:
        """A spread run failed on rank 0: the followers may be waiting in a sum that never comes."""
        log.error("run %s failed while %d ranks reconstruct it (%s: %s): ending every rank; the spool and the last "
                  "checkpoint are on disk, and the next start of the service resumes the run",
                  uid[:8], self.comm.size, type(exc).__name__, exc)
        self.comm.abort(3)

    def end(self) -> None:
        self.tell("end")


def follow(comm, backend) -> int:
    """A follower rank's loop (ranks 1..N-1): make rank 0's engine calls until it says ``end``."""
    from .live import final_schedule

    rec = None

    def tick(_rec):
        if not comm.bcast(None):
            raise StopFinal
    while True:
        command, arg = comm.bcast(None)
        try:
            if command == "end":
                return 0
            if command == "open":
                rec = None
                try:
                    rec = open_engine(arg, backend, comm)
                except Exception as exc:              # every rank knows (together): the run fails, we go on
                    log.error("rank %d: the run's engine could not be opened: %s", comm.rank, exc)
            elif command == "frames":
                place_frames(rec, comm.scatter(None), *arg)
            elif command == "load":
                rec.load_state(arg)
            elif command == "step":
                rec.step(hold_probe=arg, stage="live")
            elif command == "final":
                final_schedule(rec, *arg, callback=tick)
            elif command == "finish":
                rec.illumination()                    # the one sum of the summary
            elif command == "close":
                rec = None
        except StopFinal:
            pass                                      # the run was interrupted; the next command says what now
        except Exception:
            log.exception("rank %d: the engine failed (%s): ending every rank", comm.rank, command)
            comm.abort(3)

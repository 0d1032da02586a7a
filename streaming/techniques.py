"""The techniques the service reconstructs, each a small plug-in of its one run loop.

A technique says how a run is received (``open`` from a start message, ``resume`` from the
folder an earlier process left, both giving the run's *assembly*: what the receiver fills) and how
it is worked on (``work``: what the loop drives), and where its results go in Tiled. The loop
(:meth:`streaming.service.ReconstructorService._run`) is the same for all:

    work = technique.work(assembly, ...)
    publish work.first_snapshot()
    until the stop message (and nothing pending): work.ingest(); work.live_step() (None: idle for
        work.idle_s); every publish interval work.live_snapshot() (None: nothing new); every
        checkpoint interval work.checkpoint()
    assembly.recover(the stop message's sources); work.complete(publisher, tick)

and ends a run that is stopped (``work.checkpoint()``, published ``interrupted``),
abandoned or failed alike. A third technique is one module with its assembly (``uid``, ``folder``,
``stop``, ``set_stop``, ``recover``, ``place``, ``set_mask``, ``status``, ``t_created``,
``t_last_frame``, ``n_frames_expected``) and its work, plus one entry in :data:`TECHNIQUES`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import protocol
from .assembly import RunAssembly, check_resources
from .dfxrm_runs import dfxrm_work, open_dfxrm_run, resume_dfxrm_run
from .dfxrm_live import DIMS, ROOT, UNITS, DfxrmRun
from .live import LiveReconstruction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Technique:
    """One technique's plug-in.

    Attributes:
        name: the start message's ``technique`` (one of ``protocol.TECHNIQUES``; absent: the first,
            ``"bragg-ptychography"``).
        start_file: the file in a run's folder that says an earlier process started it.
        open: ``open(header, folder, workdir, backend)``: a new run's assembly from its start message
            (raises ValueError with the reason when the machine cannot take it).
        resume: ``resume(folder, backend)``: the assembly an earlier process spooled, or None.
        work: ``work(assembly, live_options, backend, pause_hook, ranks=None)``: what the loop drives
            (``ranks``: the MPI ranks an engine may be spread over, :mod:`streaming.engine_ranks`).
        publication: keyword arguments of :class:`streaming.publish.TiledPublisher` (where in
            Tiled, units, dims).
    """

    name: str
    start_file: str
    open: Callable
    resume: Callable
    work: Callable
    publication: dict = field(default_factory=dict)


def _bragg_open(header: dict, folder: Path, workdir: Path, backend) -> RunAssembly:
    if (folder / "start.json").exists():
        return RunAssembly.resume(folder)
    check_resources(header, workdir)
    return RunAssembly(header, folder)


def _bragg_work(asm: RunAssembly, opts, backend, pause_hook, ranks=None) -> LiveReconstruction:
    live = LiveReconstruction(asm, opts, backend, ranks=ranks)
    live.rec.pause_hook = pause_hook
    log.info("run %s: %s", asm.uid[:8], live.rec.layout.describe())
    return live


def _dfxrm_open(header: dict, folder: Path, workdir: Path, backend) -> DfxrmRun:
    return open_dfxrm_run(header, folder, xp=backend.xp)


TECHNIQUES = {t.name: t for t in (
    Technique("bragg-ptychography", "start.json", _bragg_open, lambda folder, backend: RunAssembly.resume(folder),
              _bragg_work),
    Technique("dfxrm", "dfxrm_start.json", _dfxrm_open, lambda folder, backend: resume_dfxrm_run(folder, xp=backend.xp),
              lambda run, opts, backend, pause_hook, ranks=None: dfxrm_work(run, figures=opts.figures),
              publication=dict(root=ROOT, units=UNITS, dims=DIMS,
                               description="DF-XRM maps, one container per raw run uid")),
)}


def technique_of(header_or_run) -> Technique:
    """The technique of a start message's header (a dict) or of an assembly."""
    name = (header_or_run.get("technique") if isinstance(header_or_run, dict)
            else getattr(header_or_run, "technique", None)) or protocol.TECHNIQUES[0]
    return TECHNIQUES[name]

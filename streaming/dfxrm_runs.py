"""Which DF-XRM run class takes a start header (2D maps, layer volumes, topo-tomography), and its worker."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .dfxrm_layers_live import DfxrmLayerLive, DfxrmLayerRun
from .dfxrm_live import VOLUME_KINDS, DfxrmLive, DfxrmRun
from .dfxrm_topo_live import DfxrmTopoLive, DfxrmTopoRun

_RUNS = {cls.volume_kind: (cls, live) for cls, live in ((DfxrmLayerRun, DfxrmLayerLive), (DfxrmTopoRun, DfxrmTopoLive))}
assert set(_RUNS) == set(VOLUME_KINDS), "every 3D scan kind needs its run class here"


def _classes(header: dict):
    return _RUNS.get((header.get("scan") or {}).get("kind"), (DfxrmRun, DfxrmLive))


def open_dfxrm_run(header: dict, folder, *, xp=np):
    """The run of a DF-XRM start header (resumed when ``folder`` holds one an earlier process started)."""
    cls = _classes(header)[0]
    return cls.resume(folder, xp=xp) or cls(header, folder, xp=xp)


def resume_dfxrm_run(folder, *, xp=np):
    """The run an earlier process started in ``folder``, of whichever kind (None if there is none)."""
    p = Path(folder) / "dfxrm_start.json"
    if not p.exists():
        return None
    return _classes(json.loads(p.read_text()))[0].resume(folder, xp=xp)


def dfxrm_work(run, *, figures: bool):
    """The worker's side of ``run``: volumes for a layer scan, projections and a shape for a
    topo-tomography, maps otherwise."""
    return _classes(run.start)[1](run, figures=figures)

"""The service's work folder, one sub-folder per run: what an earlier process left there.

A run's folder holds its spool and ``start.json`` (Bragg ptychography) or ``dfxrm_start.json``
(DF-XRM), then ``stop.json``, a checkpoint, and at the end ``result.h5`` / ``maps.h5`` (finished)
or ``failed.json`` (failed once: not tried again at every start, and says why).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .techniques import TECHNIQUES

log = logging.getLogger(__name__)


def done_on_disk(workdir: Path, uid: str) -> str | None:
    """"final" or "failed" when an earlier process finished run ``uid`` in ``workdir``, else None."""
    folder = Path(workdir) / uid
    if (folder / "failed.json").exists():
        return "failed"
    if (folder / "result.h5").exists() or (folder / "maps.h5").exists():
        return "final"
    return None


def resume_run(folder: Path, backend):
    """The run (any technique) an earlier process spooled in ``folder``, or None (logged when its
    spool cannot be read: the service starts all the same)."""
    folder = Path(folder)
    for tech in TECHNIQUES.values():
        if (folder / tech.start_file).exists():
            try:
                return tech.resume(folder, backend)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("%s run in %s cannot be resumed: %s", tech.name, folder, exc)
                return None
    return None


def unfinished_runs(workdir: Path, backend) -> list:
    """Runs an earlier process left unfinished in ``workdir``, in folder order: ended (a stop
    message) without a result, or orphaned (no stop: that process was killed, maybe its sender too)."""
    out = []
    for folder in sorted(p for p in Path(workdir).iterdir() if p.is_dir()):
        if not done_on_disk(workdir, folder.name):
            asm = resume_run(folder, backend)
            if asm is not None:
                out.append(asm)
    return out


def mark_failed(workdir: Path, uid: str, status: dict) -> None:
    """``failed.json`` in the run's folder: a restarted service does not try the run again."""
    try:
        (Path(workdir) / uid / "failed.json").write_text(json.dumps(
            {"state": "failed", "message": status.get("message", ""), "time": time.time()}))
    except OSError as exc:
        log.warning("run %s: could not mark it failed: %s", uid[:8], exc)

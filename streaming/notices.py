"""Statuses the service publishes for a run it is not reconstructing: a refused start, a run queued
behind another. Whoever watches Tiled sees them at once, not only whoever reads the log."""
from __future__ import annotations

import json
import threading
import time

from .protocol import check_run_uid


def start_uid(parts) -> str | None:
    """The run uid of a raw start message (a list of frames or bytes), or None when it is not a
    start message or its uid is unusable (then nothing can be published for it)."""
    try:
        h = json.loads(bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0])[:1 << 20])
        return check_run_uid(h.get("run_uid")) if h.get("kind") == "start" else None
    except (ValueError, TypeError, AttributeError):
        return None


def queued_message(behind: str, idle_timeout_s: float) -> str:
    """Why a run waits: the run ahead of it, and when that one ends at the latest."""
    return (f"queued behind run {behind[:8]}, which ends at its stop message or after {idle_timeout_s:.0f} s "
            "without a frame (--idle-timeout)")


def publish_notice(publisher, uid: str, state: str, message: str) -> threading.Thread:
    """Publish ``{state, message}`` as run ``uid``'s status through a fresh ``TiledPublisher``, in
    a daemon thread (the receiver that calls this must not wait for HTTP); returns the thread."""
    md = {"kind": "bp-reconstruction", "version": 1, "raw_uid": uid,
          "status": {"state": state, "message": message, "updated": time.time()}}
    t = threading.Thread(target=publisher.close, args=(md,), daemon=True, name=f"notice-{uid[:8]}")
    t.start()
    return t

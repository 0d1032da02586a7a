"""One recorded run, whatever the technique: the acquisition driver that ``plans.acquire``
(Bragg ptychography on the simulated beamline) and ``plans.dfxrm_acquire`` (DF-XRM on the
simulated microscope) share.

The real parts: the embedded Tiled server (``bp_plugin.tiled_server``, a child process on
127.0.0.1 with an API key) unless a server or URL is given; a bluesky RunEngine; bluesky's
``TiledWriter`` (documents into Tiled, the detectors' HDF5 files registered as external data) and
every other callback behind its own queue, so the scan never waits for them; Ctrl-C closes the run
properly (stop document, exit status "abort") so every frame taken so far stays recorded.

Why ``batch_size=10`` for the Tiled writer: on a 2-core machine a batch of 1 costs about 0.27 s per
event (several HTTP round trips), slower than the simulated detector; 10 drains 300 events in about
the time of the scan and still shows a live reader new frames every 10 points.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

TILED_BATCH = 10
#: the file in an acquisition's output folder that holds its run's uid (one line)
RUN_UID_FILE = "run_uid"


def make_run_engine():
    """A RunEngine with an empty metadata store (no persistent history file) and no event loop surprises."""
    from bluesky import RunEngine

    return RunEngine({}, call_returns_result=False)


def record_run(devices_for: Callable[[Path], object], plan_for: Callable[[object], object], *, out: Path,
               detector_dir: Path, server=None, tiled_url: str | None = None, api_key: str | None = None,
               batch_size: int = TILED_BATCH, callbacks=(), callbacks_for=None) -> tuple[dict, object]:
    """Build the devices, run their plan with a RunEngine and record it in Tiled.

    Args:
        devices_for: ``f(detector_dir) -> devices`` (the beamline, the microscope, EPICS devices);
            the detector writes its HDF5 files into ``detector_dir``.
        plan_for: ``f(devices) -> plan``.
        out: output folder (``tiled/``: the embedded server's home when one is started here).
        server: a running :class:`~bp_plugin.tiled_server.TiledServer` (tests, the demos).
        tiled_url, api_key: an existing Tiled server (without either server: the embedded one).
        callbacks: more callbacks, each behind its own queue.
        callbacks_for: ``f(devices) -> callbacks`` for callbacks that need the devices (the frame
            streamer taps the detector).

    Returns:
        ``(result, devices)``: ``uid`` (the first run's), ``uids`` (every run's, in order: a series),
        ``tiled_url``, ``api_key``, ``key_file``, ``n_events`` (of the last run),
        ``seconds``, ``frames_per_s``, ``detector_files``, ``exit_status``, ``server_dir``; and the
        devices. The run's uid is also written to ``out/run_uid`` (:data:`RUN_UID_FILE`), for
        scripts. Raises KeyboardInterrupt after closing the run when Ctrl-C stopped it.
    """
    from bluesky.utils import RunEngineInterrupted
    from bluesky_tiled_plugins import TiledWriter

    from bp_plugin.tiled_server import connect, start_tiled_server

    from .monitor import buffered

    out, detector_dir = Path(out), Path(detector_dir)
    (out / RUN_UID_FILE).unlink(missing_ok=True)      # a failed run must not leave the last one's uid
    own = None
    if server is None and tiled_url is None:
        own = server = start_tiled_server(out / "tiled", readable=[detector_dir], api_key=api_key)
    url = server.url if server else tiled_url
    key = server.api_key if server else api_key
    try:
        client = connect(url, key)                    # fails now, clearly, before any motion
        devices = devices_for(detector_dir)
        RE = make_run_engine()
        queued = [buffered(TiledWriter(client, batch_size=batch_size))]
        queued += [buffered(cb) for cb in (*callbacks, *(callbacks_for(devices) if callbacks_for else ()))]
        stop_doc: dict = {}
        for cb in (*queued, lambda name, doc: stop_doc.update(doc) if name == "stop" else None):
            RE.subscribe(cb)
        t0 = time.perf_counter()
        interrupted = False
        try:
            uids = RE(plan_for(devices))
        except RunEngineInterrupted:
            RE.abort(reason="interrupted by the user (Ctrl-C)")
            interrupted = True
        finally:
            seconds = time.perf_counter() - t0
            for cb in reversed(queued):               # the Tiled writer last: it has the most to drain
                cb.shutdown(wait=True)
        if interrupted:
            raise KeyboardInterrupt
        n = (stop_doc.get("num_events") or {}).get("primary", 0)
        det = getattr(devices, "detector", None)
        uid = uids[0] if uids else stop_doc.get("run_start")
        if uid:
            out.mkdir(parents=True, exist_ok=True)
            (out / RUN_UID_FILE).write_text(f"{uid}\n")     # for scripts: bp-plugin export $(cat out/run_uid)
        return {"uid": uid, "uids": list(uids or ()), "tiled_url": url, "api_key": key,
                "key_file": str(server.key_file) if own and server.key_file else None,
                "n_events": n, "seconds": seconds, "frames_per_s": n / seconds if seconds else 0.0,
                "detector_files": [str(p) for p in getattr(det, "file_history", [])],
                "exit_status": stop_doc.get("exit_status"),
                "server_dir": str(out / "tiled") if own else None}, devices
    finally:
        if own is not None:
            own.stop()

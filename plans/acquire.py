"""One acquisition on the simulated beamline, recorded in Tiled: what ``bp-plugin acquire`` runs.

The pieces, all real: the embedded Tiled server (``bp_plugin.tiled_server``, a child process on
127.0.0.1 with an API key) unless a URL is given; the simulated beamline of ``sim_devices``; a
bluesky RunEngine; bluesky's ``TiledWriter`` (documents into Tiled, the detector's HDF5 files
registered as external data) and the live monitor, both behind a queue so the scan never waits for
them.

Why ``batch_size=10`` for the Tiled writer: on a 2-core machine a batch of 1 costs about 0.27 s per
event (several HTTP round trips), slower than the simulated detector; 10 drains 300 events in about
the time of the scan and still shows a live reader new frames every 10 points.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AcquireOptions:
    """Settings of :func:`acquire`.

    Attributes:
        preset: simulated experiment (tiny, small, paper).
        out: output folder: ``detector/`` (HDF5 frames), ``tiled/`` (embedded server), ``monitor/`` (PNGs).
        tiled_url, api_key: an existing Tiled server (default: start the embedded one).
        seed: seed of the simulated noise.
        order, snake: scan order and raster path.
        realtime: real exposure times and motor speeds.
        batch_size: events per Tiled write.
        progress: progress bar.
        md: extra start-document metadata.
    """

    preset: str = "small"
    out: Path = Path("out/acquire")
    tiled_url: str | None = None
    api_key: str | None = field(default=None, repr=False)    # never in a log line
    seed: int = 0
    order: str = "angle-outer"
    snake: bool = False
    realtime: bool = False
    batch_size: int = 10
    progress: bool = True
    md: dict = field(default_factory=dict)


def make_run_engine():
    """A RunEngine with an empty metadata store (no persistent history file) and no event loop surprises."""
    from bluesky import RunEngine

    return RunEngine({}, call_returns_result=False)


def acquire(opts: AcquireOptions, *, server=None, extra_callbacks=(), callbacks_for=None) -> dict:
    """Run ``bragg_ptycho_scan`` on the simulated beamline, recorded in Tiled.

    Args:
        opts: :class:`AcquireOptions`.
        server: a running :class:`~bp_plugin.tiled_server.TiledServer` to use (tests, the demo).
        extra_callbacks: more callbacks (called in the RunEngine's thread: keep them fast).
        callbacks_for: ``f(beamline) -> callbacks`` for callbacks that need the devices (the frame
            streamer taps the detector); each is subscribed behind its own queue and drained at the end.

    Returns:
        dict: ``uid``, ``tiled_url``, ``api_key``, ``n_events``, ``seconds``, ``frames_per_s``,
        ``detector_files``, ``monitor_png``, ``exit_status``, ``server_dir``.
    """
    from bluesky.utils import RunEngineInterrupted
    from bluesky_tiled_plugins import TiledWriter

    from bp_plugin.tiled_server import connect, start_tiled_server
    from sim_devices.beamline import build_beamline

    from .bragg_ptycho import bragg_ptycho_scan
    from .monitor import LiveScanMonitor, buffered

    out = Path(opts.out)
    det_dir = out / "detector"
    own = None
    if server is None and opts.tiled_url is None:
        own = server = start_tiled_server(out / "tiled", readable=[det_dir], api_key=opts.api_key)
    url = server.url if server else opts.tiled_url
    key = server.api_key if server else opts.api_key
    try:
        client = connect(url, key)
        bl = build_beamline(opts.preset, write_dir=det_dir, seed=opts.seed, velocity=opts.realtime,
                            realtime=opts.realtime)
        RE = make_run_engine()
        writer = buffered(TiledWriter(client, batch_size=opts.batch_size))
        monitor = LiveScanMonitor(out / "monitor", progress=opts.progress)
        wmon = buffered(monitor)
        RE.subscribe(writer)
        RE.subscribe(wmon)
        for cb in extra_callbacks:
            RE.subscribe(cb)
        late = [buffered(cb) for cb in (callbacks_for(bl) if callbacks_for else [])]
        for cb in late:
            RE.subscribe(cb)
        stop_doc = {}
        RE.subscribe(lambda name, doc: stop_doc.update(doc) if name == "stop" else None)
        t0 = time.perf_counter()
        interrupted = False
        try:
            uids = RE(bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.preset.geometry,
                                        order=opts.order, snake=opts.snake, md=opts.md))
        except RunEngineInterrupted:
            # Ctrl-C paused the RunEngine: close the run properly (stop document, exit_status
            # "abort"), so every frame taken so far stays recorded and the stream ends cleanly
            RE.abort(reason="interrupted by the user (Ctrl-C)")
            interrupted = True
        finally:
            seconds = time.perf_counter() - t0
            wmon.shutdown(wait=True)
            for cb in late:
                cb.shutdown(wait=True)
            writer.shutdown(wait=True)
        if interrupted:
            raise KeyboardInterrupt
        n = (stop_doc.get("num_events") or {}).get("primary", 0)
        return {"uid": uids[0] if uids else stop_doc.get("run_start"), "tiled_url": url, "api_key": key,
                "key_file": str(server.key_file) if own and server.key_file else None,
                "n_events": n, "seconds": seconds, "frames_per_s": n / seconds if seconds else 0.0,
                "detector_files": [str(p) for p in bl.detector.file_history], "monitor_png": str(monitor.last_png),
                "exit_status": stop_doc.get("exit_status"), "server_dir": str(out / "tiled") if own else None}
    finally:
        if own is not None:
            own.stop()

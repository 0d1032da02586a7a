"""One acquisition on the simulated beamline, recorded in Tiled: what ``bp-plugin acquire`` runs.

The simulated beamline of ``sim_devices`` and ``bragg_ptycho_scan``, with the live scan monitor,
through the acquisition driver every technique shares (:mod:`plans.recording`: embedded Tiled
server unless one is given, a RunEngine, the Tiled writer and every callback behind a queue).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .recording import TILED_BATCH


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
    batch_size: int = TILED_BATCH
    progress: bool = True
    md: dict = field(default_factory=dict)


def acquire(opts: AcquireOptions, *, server=None, callbacks_for=None) -> dict:
    """Run ``bragg_ptycho_scan`` on the simulated beamline, recorded in Tiled (:func:`plans.recording.record_run`).

    Args:
        opts: :class:`AcquireOptions`.
        server: a running :class:`~bp_plugin.tiled_server.TiledServer` to use (tests, the demo).
        callbacks_for: ``f(beamline) -> callbacks`` for callbacks that need the devices (the frame
            streamer taps the detector); each is subscribed behind its own queue and drained at the end.

    Returns:
        dict: ``uid``, ``tiled_url``, ``api_key``, ``n_events``, ``seconds``, ``frames_per_s``,
        ``detector_files``, ``monitor_png``, ``exit_status``, ``server_dir``.
    """
    from sim_devices.beamline import build_beamline

    from .bragg_ptycho import bragg_ptycho_scan
    from .monitor import LiveScanMonitor
    from .recording import record_run

    out = Path(opts.out)
    monitor = LiveScanMonitor(out / "monitor", progress=opts.progress)
    result, _ = record_run(
        lambda det_dir: build_beamline(opts.preset, write_dir=det_dir, seed=opts.seed, velocity=opts.realtime,
                                       realtime=opts.realtime),
        lambda bl: bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.preset.geometry,
                                     order=opts.order, snake=opts.snake, md=opts.md),
        out=out, detector_dir=out / "detector", server=server, tiled_url=opts.tiled_url, api_key=opts.api_key,
        batch_size=opts.batch_size, callbacks=[monitor], callbacks_for=callbacks_for)
    return {**result, "monitor_png": str(monitor.last_png)}

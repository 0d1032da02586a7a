"""The main job (``make demo`` / ``bp-plugin demo``): a complete simulated experiment, streamed live;
and the one demo driver that the DF-XRM demo (:mod:`streaming.dfxrm_demo`) plugs into.

Starts the embedded Tiled server, the online reconstructor (its own process, ``bp-plugin
reconstructor``) and the viewer; runs ``bragg_ptycho_scan`` on the simulated beamline with a real
RunEngine (raw frames to the detector's HDF5 files first, documents to Tiled, frames over ZeroMQ on
loopback); prints the viewer URL, a progress bar during the scan and a status line while the final
schedule runs; ends with a summary (frames, seconds, errors against the ground truth, where the
results are). Ctrl-C stops everything cleanly: the reconstructor checkpoints, the raw data stay.
"""
from __future__ import annotations

import sys
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bp_plugin.defaults import DEMO

from .commands import status_line


@dataclass
class DemoOptions:
    """``preset``: tiny / small / paper; ``browser``: open the viewer; iterations of the final schedule."""

    preset: str = "small"
    out: Path = Path("out/demo")
    seed: int = 0
    browser: bool = True
    iterations: int = DEMO.iterations
    ml_iterations: int = DEMO.ml_iterations
    progress: bool = True


def _line(text: str) -> None:
    sys.stdout.write("\r" + text[:150].ljust(150))
    sys.stdout.flush()


@dataclass(frozen=True)
class DemoRun:
    """What one technique's demo plugs into :func:`run_streamed_demo`.

    Attributes:
        title: the line printed as the scan starts.
        acquire: ``f(acquire_dir, server, callbacks_for) -> result`` (``plans.acquire`` or
            ``plans.dfxrm_acquire``; ``result`` has ``uid``, ``n_events``, ``seconds``).
        streamer: ``f(sender, devices) -> callback``: the frame streamer tapping the devices' detector.
        reconstructor_args: extra ``bp-plugin reconstructor`` arguments (the final schedule).
        root: the Tiled container of the results (``reconstructions``, ``dfxrm``).
        status: one status line from a published status.
        summary: ``f(metadata, result, scan_s, total_s, out, viewer) -> dict`` (printed).
        timeout_s: longest wait for the final result.
        keep_viewer: wait for Enter before stopping the servers, when a browser shows the viewer.
    """

    title: str
    acquire: Callable
    streamer: Callable
    reconstructor_args: tuple = ()
    root: str = "reconstructions"
    status: Callable = status_line
    summary: Callable | None = None
    timeout_s: float = 3600.0
    keep_viewer: bool = False


def run_streamed_demo(run: DemoRun, out: Path, *, browser: bool = True, progress: bool = True) -> dict:
    """The one demo driver: Tiled server, reconstructor (its own process), viewer, a recorded
    acquisition whose frames stream to the reconstructor, the wait for the final result and its
    summary. Ctrl-C stops everything cleanly: the reconstructor checkpoints, the raw data stay."""
    from bp_plugin.tiled_server import start_tiled_server

    from .processes import start_reconstructor, wait_for_state
    from .sender import FrameSender

    out = Path(out)
    acq_dir = out / "acquire"
    server = start_tiled_server(out / "tiled", readable=[acq_dir / "detector"])
    rp = viewer = None
    senders = []
    try:
        print(f"Tiled server   {server.url}  (API key in {server.key_file})")
        rp = start_reconstructor(out / "reconstructor", tiled_url=server.url, api_key=server.api_key,
                                 extra_args=[*run.reconstructor_args, "--quiet"])
        print(f"reconstructor  {rp.address}  (log {rp.log_path})")
        viewer = start_viewer_if_installed(server)
        if viewer is not None:
            print(f"viewer         {viewer.url}")
            if browser:
                webbrowser.open(viewer.url)

        def streamer_for(devices):
            senders.append(FrameSender(rp.address))
            return [run.streamer(senders[-1], devices)]

        print(f"\n== {run.title}")
        t0 = time.perf_counter()
        r = run.acquire(acq_dir, server, streamer_for)
        for s in senders:
            s.close()
        t_scan = time.perf_counter() - t0
        print(f"scan done: {r['n_events']} frames in {r['seconds']:.1f} s ({r['frames_per_s']:.1f} frames/s); "
              "final phase running")
        md = wait_for_state(server.client(), r["uid"], timeout=run.timeout_s, process=rp, root=run.root,
                            on_status=lambda st: _line(run.status(st)) if progress else None)
        print()
        summary = run.summary(md, r, t_scan, time.perf_counter() - t0, out, viewer)
        if run.keep_viewer and viewer is not None and browser and sys.stdin.isatty():
            input("\nThe viewer stays up: press Enter to stop the servers. ")
        return summary
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the reconstructor (it checkpoints) and the servers; "
              f"raw frames are in {acq_dir / 'detector'}, the catalog in {out / 'tiled'}")
        return {"interrupted": True}
    finally:
        if rp is not None:
            rp.stop()
        if viewer is not None:
            viewer.stop()
        server.stop()


def run_demo(opts: DemoOptions) -> dict:
    """The Bragg ptychography demo; returns the summary (also printed)."""
    from plans.acquire import AcquireOptions, acquire

    from .sender import BlueskyFrameStreamer
    from .taps import DetectorFrameTap

    return run_streamed_demo(DemoRun(
        title=f"scanning the simulated '{opts.preset}' crystal; frames stream to the reconstructor",
        acquire=lambda acq_dir, server, callbacks_for: acquire(
            AcquireOptions(preset=opts.preset, out=acq_dir, seed=opts.seed, progress=opts.progress),
            server=server, callbacks_for=callbacks_for),
        streamer=lambda sender, bl: BlueskyFrameStreamer(sender, DetectorFrameTap(bl.detector)),
        reconstructor_args=("--iterations", str(opts.iterations), "--ml-iterations", str(opts.ml_iterations)),
        summary=_summary, keep_viewer=True), opts.out, browser=opts.browser, progress=opts.progress)


def start_viewer_if_installed(server):
    try:
        from .viewer_server import start_viewer
    except ImportError:
        return None
    return start_viewer(server.url, server.read_key or server.api_key)      # it only reads


def _summary(md: dict, r: dict, t_scan: float, t_total: float, out: Path, viewer) -> dict:
    st, m = md.get("status", {}), md.get("metrics", {})
    folder = out / "reconstructor" / r["uid"]
    summary = {"run_uid": r["uid"], "frames": r["n_events"], "scan_s": t_scan, "total_s": t_total,
               "placed": st.get("placed"), "duplicates": st.get("duplicates"), "rejected": st.get("rejected"),
               "missing": st.get("missing"), "recovered": st.get("recovered"), "state": st.get("state"),
               "iterations": st.get("iteration"),
               "latency_last_frame_to_result_s": m.get("latency_last_frame_to_result_s"),
               **{k: m.get(k) for k in ("object_error", "probe_error", "strain_rms_error", "tilt_rms_error_rad")},
               "result": str(folder / "result.h5"), "viewer": viewer.url if viewer else None}
    print("\n== summary")
    print(f"run {r['uid']}: {summary['frames']} frames, scan {t_scan:.1f} s, total {t_total:.1f} s, "
          f"state {summary['state']}")
    print(f"frames placed {summary['placed']}, duplicates {summary['duplicates']}, rejected {summary['rejected']}, "
          f"missing {summary['missing']}, recovered from files {summary['recovered']}")
    if summary["object_error"] is not None:
        print(f"errors against the ground truth: object {summary['object_error']:.3f}, probe "
              f"{summary['probe_error']:.3f}, eps_zz RMS {summary['strain_rms_error']:.2e}, tilts RMS "
              f"{summary['tilt_rms_error_rad']:.2e} rad")
    if summary["latency_last_frame_to_result_s"] is not None:
        print(f"last frame -> final result: {summary['latency_last_frame_to_result_s']:.1f} s "
              f"({summary['iterations']} iterations in all)")
    print(f"result: {folder / 'result.h5'}; figures: {folder}/result_maps.png, result_truth_maps.png, "
          f"result_probe.png; metrics: {folder / 'metrics.json'}")
    print(f"raw frames: {r['detector_files'][0] if r['detector_files'] else '-'}; scan monitor: {r['monitor_png']}")
    return summary

"""The main job (``make demo`` / ``bp-plugin demo``): a complete simulated experiment, streamed live.

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

from bp_plugin.defaults import DEMO


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


def run_demo(opts: DemoOptions) -> dict:
    """Run the streamed experiment; returns the summary (also printed)."""
    from bp_plugin.tiled_server import start_tiled_server
    from plans.acquire import AcquireOptions, acquire

    from .commands import status_line
    from .processes import start_reconstructor, wait_for_state
    from .sender import BlueskyFrameStreamer, DetectorFrameTap, FrameSender

    out = Path(opts.out)
    acq_dir = out / "acquire"
    server = start_tiled_server(out / "tiled", readable=[acq_dir / "detector"])
    rp = viewer = None
    senders = []
    try:
        print(f"Tiled server   {server.url}  (API key in {server.key_file})")
        rp = start_reconstructor(out / "reconstructor", tiled_url=server.url, api_key=server.api_key,
                                 extra_args=["--iterations", str(opts.iterations),
                                             "--ml-iterations", str(opts.ml_iterations), "--quiet"])
        print(f"reconstructor  {rp.address}  (log {rp.log_path})")
        viewer = start_viewer_if_installed(server)
        if viewer is not None:
            print(f"viewer         {viewer.url}")
            if opts.browser:
                webbrowser.open(viewer.url)

        def streamer_for(bl):
            s = FrameSender(rp.address)
            senders.append(s)
            return [BlueskyFrameStreamer(s, DetectorFrameTap(bl.detector))]

        print(f"\n== scanning the simulated '{opts.preset}' crystal; frames stream to the reconstructor")
        t0 = time.perf_counter()
        r = acquire(AcquireOptions(preset=opts.preset, out=acq_dir, seed=opts.seed, progress=opts.progress),
                    server=server, callbacks_for=streamer_for)
        for s in senders:
            s.close()
        t_scan = time.perf_counter() - t0
        print(f"scan done: {r['n_events']} frames in {t_scan:.1f} s ({r['frames_per_s']:.1f} frames/s); "
              "final schedule running")
        md = wait_for_state(server.client(), r["uid"], timeout=3600, process=rp,
                            on_status=lambda st: _line(status_line(st)) if opts.progress else None)
        print()
        summary = _summary(md, r, t_scan, time.perf_counter() - t0, out, viewer)
        if viewer is not None and opts.browser and sys.stdin.isatty():
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


def start_viewer_if_installed(server):
    try:
        from .viewer_server import start_viewer
    except ImportError:
        return None
    return start_viewer(server.url, server.api_key)


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

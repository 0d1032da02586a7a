"""Command line: ``bp-plugin geometry | simulate | show | reconstruct | demo | serve | acquire | export | replay``."""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from . import defaults
from .geometry_cli import add_geometry_parser, format_geometry
from .keys import ENV, add_key_args, resolve_key


def _simulate(out, preset: str, seed: int, *, device: str = "auto", progress: bool = True,
              max_positions: int | None = None, overwrite: bool = False) -> None:
    from sim_devices.experiment import simulate_to_file

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = simulate_to_file(out, preset=preset, seed=seed, device=device, progress=progress,
                            max_positions=max_positions, overwrite=overwrite)
    dt = time.perf_counter() - t0
    print(f"wrote {out}: {info['n_frames']} frames of {info['frame_shape'][0]} x {info['frame_shape'][1]} "
          f"in {dt:.1f} s ({info['n_frames'] / dt:.1f} frames/s, device {info['device']})")


def cmd_simulate(a: argparse.Namespace) -> int:
    _simulate(a.out, a.preset, a.seed, device=a.device, progress=not a.no_progress,
              max_positions=a.max_positions, overwrite=a.overwrite)
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from .dataset import read_dataset
    from .figures import overview_figure

    ds = read_dataset(a.scan, allow_partial=True)
    out = a.out or str(a.scan).rsplit(".", 1)[0] + "_overview.png"
    overview_figure(ds, out)
    print(f"wrote {out}")
    return 0


def _reconstruct(scan, out, opts) -> None:
    from .recon.run import reconstruct_file

    m = reconstruct_file(scan, out, opts)
    if m.get("rank", 0):
        return                                  # rank 0 speaks for an MPI run
    print(f"wrote {out}: {m['iterations']} iterations in {m['seconds']:.1f} s on {m['device']}, "
          f"final error {m['final_error']:.4g}")
    for w in m.get("warnings", []):
        print(f"warning: {w}")
    keys = ("object_error", "probe_error", "strain_rms_error", "tilt_rms_error_rad", "field_of_view_fraction")
    if "object_error" in m:
        print("against ground truth: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys if k in m))


def cmd_reconstruct(a: argparse.Namespace) -> int:
    from .recon.run import ReconstructOptions

    _reconstruct(a.scan, a.out, ReconstructOptions(
        schedule=a.schedule, iterations=a.iterations, ml_iterations=a.ml_iterations, upsampling=a.upsampling,
        fixed_probe=a.fixed_probe,
        probe_warmup=a.probe_warmup, angle_curriculum=a.angle_curriculum,
        sample_tilt_deg=tuple(a.sample_tilt) if a.sample_tilt else None, mode=a.mode, device=a.device, resume=a.resume, progress=not a.no_progress, figures=not a.no_figures,
        seed=a.seed, mpi=True if a.mpi else None))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """The main job: a simulated experiment streamed live (``streaming.demo``); ``--offline``: the
    file-based path (simulated scan file, overview, reconstruction)."""
    from pathlib import Path

    if not a.offline:
        from streaming.demo import DemoOptions, run_demo

        s = run_demo(DemoOptions(preset=a.preset, out=Path(a.out), seed=a.seed, browser=not a.no_browser,
                                 iterations=a.iterations, ml_iterations=a.ml_iterations))
        return 0 if s.get("state") == "final" else 1

    from sim_devices.presets import get_preset

    from .dataset import read_dataset
    from .figures import overview_figure
    from .recon.run import ReconstructOptions

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    preset = get_preset(a.preset)
    print(f"== {preset.name}: {preset.description}\n{format_geometry(preset.geometry)}\n")
    scan = out / "scan.h5"
    _simulate(scan, a.preset, a.seed, overwrite=True)     # the demo's own output folder
    overview_figure(read_dataset(scan), out / "overview.png")
    print(f"wrote {out / 'overview.png'}")
    if a.iterations > 0:
        print(f"\n== reconstruction ({a.iterations} joint + {a.ml_iterations} maximum-likelihood iterations)")
        _reconstruct(scan, out / "result.h5",
                     ReconstructOptions(iterations=a.iterations, ml_iterations=a.ml_iterations, seed=a.seed))
        print(f"figures: {out}/overview.png, {out}/result_maps.png, {out}/result_truth_maps.png, "
              f"{out}/result_probe.png; metrics: {out}/metrics.json")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .tiled_server import start_tiled_server

    server = start_tiled_server(a.dir, readable=a.read, port=a.port, api_key=resolve_key(a.api_key_file),
                                catalog=a.catalog)
    keys = (f"writer key in {server.key_file}, read-only key in {server.read_key_file}" if server.read_key
            else f"API key in {server.key_file}")
    print(f"Tiled server at {server.url}, catalog in {server.directory}; {keys} "
          f"(export {ENV}=$(cat {server.key_file})); Ctrl-C stops it", flush=True)

    def terminated(signum, frame):              # `kill`, a service manager: stop as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        while server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def cmd_acquire(a: argparse.Namespace) -> int:
    from pathlib import Path

    from plans.acquire import AcquireOptions, acquire

    opts = AcquireOptions(preset=a.preset, out=Path(a.out), tiled_url=a.tiled_url, api_key=resolve_key(a.api_key_file),
                          seed=a.seed,
                          order=a.order, snake=a.snake, realtime=a.realtime, progress=not a.no_progress)
    r = acquire(opts)
    print(f"run {r['uid']} ({r['exit_status']}): {r['n_events']} frames in {r['seconds']:.1f} s "
          f"({r['frames_per_s']:.1f} frames/s)")
    print(f"  Tiled: {r['tiled_url']}/api/v1/metadata/{r['uid']}" +
          (f"  (API key in {r['key_file']})" if r.get("key_file") else ""))
    if r["server_dir"]:
        print(f"  the embedded server has stopped; browse the run again with: bp-plugin serve --dir {r['server_dir']} "
              f"--read {Path(a.out) / 'detector'}")
    print(f"  detector files: {', '.join(r['detector_files'])}")
    print(f"  live monitor figure: {r['monitor_png']}")
    return 0 if r["exit_status"] == "success" else 1


def open_run(a: argparse.Namespace):
    """The Tiled run ``a.run`` of the server ``a.tiled_url`` (``export``, ``replay``, ``dfxrm maps``)."""
    from .tiled_server import open_run as _open

    return _open(a.tiled_url, resolve_key(a.api_key_file, wait_s=a.wait), a.run, wait_s=a.wait)


def cmd_export(a: argparse.Namespace) -> int:
    from .run_export import run_to_dataset

    r = run_to_dataset(open_run(a), a.out, overwrite=a.overwrite, progress=not a.no_progress)
    state = "complete" if r["complete"] else f"partial: {r['n_frames']} of {r['n_points']} frames"
    print(f"run {r['uid'][:8]} -> {r['path']} ({state}); reconstruct with: bp-plugin reconstruct {r['path']} --out ...")
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from pathlib import Path

    from plans.monitor import LiveScanMonitor
    from plans.replay import dataset_documents, replay, tiled_documents

    if Path(a.run).suffix in (".h5", ".hdf5", ".cxi") and Path(a.run).exists():
        docs = dataset_documents(a.run, rate=a.rate)
    else:
        docs = tiled_documents(open_run(a), rate=a.rate, original=a.original_rate)
    monitor = LiveScanMonitor(a.png_dir, progress=not a.no_progress)
    callbacks = [monitor]
    if a.stream:
        from streaming.commands import replay_streamer
        callbacks.append(replay_streamer(a.stream))
    n = replay(docs, callbacks)
    if a.stream:
        callbacks[-1].close()
    print(f"replayed {n} frames{f' (streamed to {a.stream})' if a.stream else ''}; monitor figure: {monitor.last_png}")
    return 0


def cmd_reconstructor(a: argparse.Namespace) -> int:
    from streaming.commands import run_reconstructor

    return run_reconstructor(a.listen, a.workdir, tiled_url=a.tiled_url,
                             api_key=resolve_key(a.api_key_file, wait_s=a.wait), tiled_wait_s=a.wait,
                             device=a.device,
                             max_runs=a.max_runs, final_iterations=a.iterations, ml_iterations=a.ml_iterations,
                             publish_interval_s=a.publish_interval, checkpoint_interval_s=a.checkpoint_interval,
                             catch_up_per_angle=a.catch_up_per_angle, quiet=a.quiet, idle_timeout_s=a.idle_timeout,
                             mpi=True if a.mpi else None)


def cmd_stream(a: argparse.Namespace) -> int:
    from streaming.commands import stream_dataset

    return stream_dataset(a.scan, a.to, rate=a.rate, progress=not a.no_progress, confirm_timeout_s=a.confirm_timeout)


def _add_tiled_args(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument("--tiled-url", default=os.environ.get("BP_TILED_URL", "http://127.0.0.1:8000"),
                   help="Tiled server (default $BP_TILED_URL or http://127.0.0.1:8000)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for the Tiled server to answer (one started a moment ago); "
                        "default: fail at once")
    add_key_args(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bp-plugin", description="3D Bragg ptychography beamline plugin")
    sub = p.add_subparsers(dest="command", required=True)

    add_geometry_parser(sub)

    ps = sub.add_parser("simulate", help="simulate a Bragg ptychography scan into a dataset file")
    ps.add_argument("--preset", default="small", help="tiny | small | paper")
    ps.add_argument("--out", required=True, help="output HDF5 dataset")
    ps.add_argument("--seed", type=int, default=0)
    ps.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ps.add_argument("--max-positions", type=int, default=None,
                    help="simulate only the first N positions (timing a fraction of a large preset)")
    ps.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ps.add_argument("--no-progress", action="store_true")
    ps.set_defaults(func=cmd_simulate)

    pw = sub.add_parser("show", help="draw an overview PNG of a dataset")
    pw.add_argument("scan", help="HDF5 dataset")
    pw.add_argument("--out", default=None, help="PNG path (default: <scan>_overview.png)")
    pw.set_defaults(func=cmd_show)
    pr = sub.add_parser("reconstruct", help="reconstruct a scan file (joint probe, object and background)")
    pr.add_argument("scan", help="HDF5 dataset (docs/dataset-format.md)")
    pr.add_argument("--out", required=True, help="result HDF5; metrics.json and PNGs go beside it")
    pr.add_argument("--schedule", default=defaults.PAPER.name, choices=list(defaults.SCHEDULES),
                    help="named schedule: " + ", ".join(f"{s.name} ({s.iterations} joint + {s.ml_iterations} ML)"
                                                        for s in defaults.SCHEDULES.values()) + "; default %(default)s")
    pr.add_argument("--iterations", type=int, default=None,
                    help="joint updates; the schedule is compressed to this many (ML in proportion)")
    pr.add_argument("--ml-iterations", type=int, default=None, help="maximum-likelihood iterations after them")
    pr.add_argument("--upsampling", type=int, default=None,
                    help="angular up-sampling ratio (default: what the geometry needs for a beam filling the "
                         "detector's window, never less than the scan's; a smaller ratio is warned about)")
    pr.add_argument("--sample-tilt", type=float, nargs=2, default=None, metavar=("TX", "TY"),
                    help="tilt (deg) of the sample's surface normal from Q, about x then about y, for the slab "
                         "supports (default: the scan file's sample_tilt_deg, else 0 0 with a warning)")
    pr.add_argument("--fixed-probe", action="store_true", help="keep the initial probe (the former approach)")
    pr.add_argument("--probe-warmup", type=int, default=None, metavar="N",
                    help="learn the probe for N joint iterations first, then restart the object with it "
                         "(for a poor initial probe; docs/validation.md)")
    pr.add_argument("--angle-curriculum", type=int, default=None, metavar="N",
                    help="add the rocking angles one by one, N iterations each, before the schedule (default: 5 "
                         "for scans of 8 or more angles, none for fewer or when resuming; 0: none; "
                         "bp_plugin/recon/run.py says what was measured)")
    pr.add_argument("--mode", default="sequential", choices=["sequential", "batched"])
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    pr.add_argument("--resume", action="store_true", help="continue from the state in --out")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--mpi", action="store_true",
                    help="run on the processes of an MPI launch (default when started by mpirun or srun with "
                         "more than one process): mpirun -n N bp-plugin reconstruct ...")
    pr.add_argument("--no-progress", action="store_true")
    pr.add_argument("--no-figures", action="store_true")
    pr.set_defaults(func=cmd_reconstruct)

    pd = sub.add_parser("demo", help="the main job: a complete simulated experiment, reconstructed live "
                                     "(Tiled server, reconstructor, RunEngine, viewer)")
    pd.add_argument("--preset", default="small", help="tiny | small | paper")
    pd.add_argument("--out", default="out/demo", help="output folder")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--iterations", type=int, default=defaults.DEMO.iterations,
                    help="joint updates of the reconstruction (0: none)")
    pd.add_argument("--ml-iterations", type=int, default=defaults.DEMO.ml_iterations)
    pd.add_argument("--no-browser", action="store_true", help="do not open the viewer in a browser")
    pd.add_argument("--offline", action="store_true",
                    help="no streaming: simulate a scan file, then reconstruct it (the file-based path)")
    pd.set_defaults(func=cmd_demo)

    pv = sub.add_parser("serve", help="run the Tiled server (catalog of runs and results) on 127.0.0.1")
    pv.add_argument("--dir", default="out/tiled", help="server home (catalog, data, log)")
    pv.add_argument("--read", action="append", default=[], help="extra readable folder (detector files); repeatable")
    pv.add_argument("--port", type=int, default=8000)
    pv.add_argument("--catalog", default=None,
                    help="catalog database, e.g. postgresql+asyncpg://tiled@db:5432/tiled (password from PGPASSWORD "
                         "or ~/.pgpass, never in the URI); default: SQLite in --dir")
    add_key_args(pv, "the key clients must give (default: $BP_TILED_API_KEY, else the home's api_key file, "
                     "else a new random key, written there)")
    pv.set_defaults(func=cmd_serve)

    pl = sub.add_parser("viewer", help="serve the live viewer (a browser page of the runs and results in Tiled)")
    from streaming.viewer_cli import add_viewer_args, run_viewer
    _add_tiled_args(pl)
    add_viewer_args(pl, tiled=False)
    pl.set_defaults(func=run_viewer)

    pa = sub.add_parser("acquire", help="run a Bragg ptychography scan on the simulated beamline, recorded in Tiled")
    pa.add_argument("--preset", default="small", help="tiny | small | paper")
    pa.add_argument("--out", default="out/acquire", help="folder for detector files, the Tiled catalog and PNGs")
    pa.add_argument("--tiled-url", default=None, help="use this Tiled server instead of starting the embedded one")
    add_key_args(pa, "the key of the --tiled-url server")
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--order", default="angle-outer", choices=["angle-outer", "position-outer"])
    pa.add_argument("--snake", action="store_true")
    pa.add_argument("--realtime", action="store_true", help="real exposure times and motor speeds")
    pa.add_argument("--no-progress", action="store_true")
    pa.set_defaults(func=cmd_acquire)

    pe = sub.add_parser("export", help="write a recorded run (Tiled) as a dataset file for `reconstruct`")
    pe.add_argument("run", help="run uid")
    pe.add_argument("--out", required=True, help="output dataset (HDF5)")
    pe.add_argument("--overwrite", action="store_true")
    pe.add_argument("--no-progress", action="store_true")
    _add_tiled_args(pe)
    pe.set_defaults(func=cmd_export)

    pp = sub.add_parser("replay", help="re-emit a recorded run (Tiled uid or dataset file) as documents and frames")
    pp.add_argument("run", help="run uid in Tiled, or a dataset file (.h5)")
    pp.add_argument("--rate", type=float, default=None, help="frames per second (default: as fast as possible)")
    pp.add_argument("--original-rate", action="store_true", help="keep the recorded time between frames")
    pp.add_argument("--png-dir", default="out/replay", help="where the live monitor writes its figure")
    pp.add_argument("--no-progress", action="store_true")
    pp.add_argument("--stream", default=None, metavar="ADDRESS",
                    help="also stream the frames to an online reconstructor (e.g. tcp://127.0.0.1:5577)")
    _add_tiled_args(pp)
    pp.set_defaults(func=cmd_replay)

    import os

    pc = sub.add_parser("reconstructor", help="the online reconstructor service: frames in over ZeroMQ, "
                                              "results out to Tiled, run after run")
    pc.add_argument("--listen", default=defaults.LISTEN, help="ZeroMQ address to bind (PULL)")
    pc.add_argument("--workdir", default="out/reconstructor", help="spool, checkpoints and results, per run")
    pc.add_argument("--tiled-url", default=os.environ.get("BP_TILED_URL"),
                    help="publish results there (default $BP_TILED_URL; none: not published)")
    add_key_args(pc)
    pc.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    pc.add_argument("--iterations", type=int, default=defaults.STREAM_FINAL.iterations,
                    help="joint iterations of the final schedule")
    pc.add_argument("--ml-iterations", type=int, default=defaults.STREAM_FINAL.ml_iterations,
                    help="ML iterations of the final schedule")
    pc.add_argument("--catch-up-per-angle", type=int, default=defaults.CATCH_UP_PER_ANGLE, metavar="N",
                    help="when the live phase ran fewer than N iterations per angle (frames came faster than it "
                         "iterated), restart the object and run the angle curriculum at N per angle before the "
                         "final schedule (0: never)")
    pc.add_argument("--publish-interval", type=float, default=defaults.PUBLISH_INTERVAL_S,
                    help="seconds between publications")
    pc.add_argument("--checkpoint-interval", type=float, default=defaults.CHECKPOINT_INTERVAL_S,
                    help="seconds between checkpoints of a run (what a restarted service continues from)")
    pc.add_argument("--max-runs", type=int, default=None, help="exit after this many runs (default: serve on)")
    pc.add_argument("--wait", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for the Tiled server (and its key file) at start: one started "
                         "beside the service; default: fail at once")
    pc.add_argument("--idle-timeout", type=float, default=defaults.IDLE_TIMEOUT_S, metavar="S",
                    help="a run without its stop message and without a frame for S seconds is finished with "
                         "the frames it has, once a newer run waits or when no sender is left (adopted at start-up)")
    pc.add_argument("--quiet", action="store_true", help="no status lines")
    pc.add_argument("--mpi", action="store_true",
                    help="spread each Bragg run's engine over the processes of an MPI launch (default when started "
                         "by mpirun or srun with more than one): mpirun -n N bp-plugin reconstructor ...")
    pc.set_defaults(func=cmd_reconstructor)

    pt = sub.add_parser("stream", help="stream a recorded dataset file to an online reconstructor")
    pt.add_argument("scan", help="dataset file (.h5)")
    pt.add_argument("--to", default=defaults.LISTEN, help="the reconstructor's address")
    pt.add_argument("--rate", type=float, default=None, help="frames per second (default: as fast as taken)")
    pt.add_argument("--no-progress", action="store_true")
    pt.add_argument("--confirm-timeout", type=float, default=30.0, metavar="S",
                    help="seconds to wait for the reconstructor's receipt of the whole run (exit 1 without it)")
    pt.set_defaults(func=cmd_stream)

    from .dfxrm_cli import add_dfxrm_parser
    add_dfxrm_parser(sub, _add_tiled_args)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # one write: ranks of an MPI run share the launcher's stderr, and print's two writes interleave
        sys.stderr.write(f"bp-plugin {args.command}: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``bp-plugin dfxrm ...``: the DF-XRM commands (demo, acquire, maps, export); parsing only."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .keys import add_key_args, resolve_key


def cmd_demo(a) -> int:
    from streaming.dfxrm_demo import DfxrmDemoOptions, run_dfxrm_demo

    s = run_dfxrm_demo(DfxrmDemoOptions(preset=a.preset, scan=a.scan, out=Path(a.out), seed=a.seed,
                                        order=a.order, browser=not a.no_browser))
    return 0 if s.get("state") == "final" else 1


def cmd_acquire(a) -> int:
    from plans.dfxrm_acquire import DfxrmAcquireOptions, acquire_dfxrm

    callbacks, senders = None, []
    if a.stream:
        from streaming.dfxrm_sender import DfxrmFrameStreamer
        from streaming.sender import FrameSender
        from streaming.taps import DetectorFrameTap

        def callbacks(mic):
            senders.append(FrameSender(a.stream))
            return [DfxrmFrameStreamer(senders[-1], DetectorFrameTap(mic.detector))]
    opts = DfxrmAcquireOptions(preset=a.preset, scan=a.scan, out=Path(a.out), tiled_url=a.tiled_url,
                               api_key=resolve_key(a.api_key_file), seed=a.seed, n_phi=a.n_phi, n_chi=a.n_chi,
                               n_tth=a.n_tth, count_time=a.count_time, realtime=a.realtime, order=a.order,
                               temperatures_K=tuple(a.temperatures) if a.temperatures else None)
    try:
        r = acquire_dfxrm(opts, callbacks_for=callbacks)
    finally:          # a failed plan still flushes and closes the sockets (the stop message goes out)
        for s in senders:
            s.close()
    if len(r["uids"]) > 1:
        for t, uid in zip(a.temperatures, r["uids"]):
            print(f"series run {uid} at {t:g} K")
        print(f"{len(r['uids'])} runs of the series in {r['seconds']:.1f} s ({r['exit_status']})")
        return 0 if r["exit_status"] == "success" and len(r["uids"]) == len(a.temperatures) else 1
    print(f"run {r['uid']}: {r['n_events']} frames in {r['seconds']:.1f} s ({r['exit_status']}); "
          f"camera files: {', '.join(r['detector_files'])}")
    return 0 if r["exit_status"] == "success" else 1


def _source(a):
    """A DfxrmScan from a scan file or a run uid in Tiled (and the file to close, if any)."""
    from .dfxrm_batch import scan_from_file, scan_from_run

    if Path(a.source).suffix in (".h5", ".hdf5"):
        if not Path(a.source).is_file():
            raise SystemExit(f"scan file not found: {a.source}; give an existing DF-XRM scan file "
                             "(bp-plugin dfxrm export) or a run uid")
        return scan_from_file(a.source)
    from .tiled_server import open_run
    a.run = a.source
    return scan_from_run(open_run(a.tiled_url, resolve_key(a.api_key_file, wait_s=a.wait), a.run, wait_s=a.wait)), None


def cmd_maps(a) -> int:
    from .backend import get_backend
    from .dfxrm.output import plot_maps, write_maps
    from .dfxrm.layers import fullest_layer
    from .dfxrm_batch import batch_maps, layer_volumes

    scan, f = _source(a)
    if scan.scan.get("kind") == "topotomo":
        return _topo_maps(a, scan, f)
    layered = scan.scan.get("kind") == "layers"
    xp = get_backend(a.device).xp
    try:
        maps = (layer_volumes(scan, xp=xp, progress=not a.no_progress) if layered else
                batch_maps(scan, xp=xp, progress=not a.no_progress, order=a.order))
    finally:
        if f is not None:
            f.close()
    out = Path(a.out)
    title = f"DF-XRM {scan.scan.get('kind', '')} scan {scan.run_uid or a.source}"
    if layered:      # volumes (h, y, x) in the file; the figure: the layer with the most crystal
        vols = {k: v for k, v in maps.items() if isinstance(v, np.ndarray) and v.ndim == 3}
        write_maps(out, vols, geometry=scan.geometry.to_dict(), scan=scan.scan, source=str(a.source))
        per = maps["layer_maps"]
        k = fullest_layer(per)
        png = plot_maps(out.with_suffix(".png"), {n: v for n, v in per[k].items() if not n.startswith("nye_")},
                        scan.geometry.pixel_size_m, title=f"{title}, layer {k}")   # Nye: in the volumes
        print(f"{len(scan.angles_deg)} frames -> {out}: volumes {vols['tilt_phi'].shape} (layers, y, x) of "
              f"{', '.join(k for k in vols if k != 'intensity')}, voxel (h, y, x) "
              f"{', '.join(f'{v * 1e6:.3g}' for v in maps['voxel_m'] if v)} um"
              + (f"; incomplete layers {maps['incomplete']}" if maps["incomplete"] else "") + f"; figure {png}")
        return 0
    write_maps(out, maps, geometry=scan.geometry.to_dict(), scan=scan.scan, source=str(a.source))
    png = plot_maps(out.with_suffix(".png"), maps, scan.geometry.pixel_size_m, title=title)
    print(f"{len(scan.angles_deg)} frames -> {out} ({', '.join(k for k in maps if k != 'intensity')}); figure {png}")
    return 0


def _topo_maps(a, scan, f) -> int:
    """``dfxrm maps`` of a topo-tomography scan: the grain's volume and shape, and their figure."""
    from .dfxrm.output import plot_topo, write_maps
    from .dfxrm_batch import topo_shape

    try:
        r = topo_shape(scan, progress=not a.no_progress)
    finally:
        if f is not None:
            f.close()
    out = Path(a.out)
    arrays = {"volume": r["volume"], "shape": r["shape"], "projections": r["projections"],
              **{f"{k}_m": v for k, v in r["axes_m"].items()}}
    write_maps(out, arrays, geometry=scan.geometry.to_dict(), scan=scan.scan, source=str(a.source),
               metrics={"grain_volume_m3": r["grain_volume_m3"], "threshold": r["threshold"],
                        "n_projections": r["n_projections"], "incomplete": r["incomplete"]})
    png = plot_topo(out.with_suffix(".png"), r, title=f"DF-XRM topo-tomography {scan.run_uid or a.source}")
    print(f"{len(scan.angles_deg)} frames -> {out}: grain shape {r['shape'].shape} (w, b, a) of "
          f"{r['grain_volume_m3'] * 1e18:.3g} um^3 from {r['n_projections']} projections, voxel "
          f"{r['voxel_m'][0] * 1e6:.3g} um" + (f"; left out (rocking incomplete): {r['incomplete']}"
                                              if r["incomplete"] else "") + f"; figure {png}")
    return 0


def cmd_export(a) -> int:
    from .dfxrm_batch import scan_from_run, write_scan_file
    from .tiled_server import open_run

    a.run = a.source
    scan = scan_from_run(open_run(a.tiled_url, resolve_key(a.api_key_file, wait_s=a.wait), a.run, wait_s=a.wait))
    path = write_scan_file(a.out, scan, progress=not a.no_progress)
    print(f"run {scan.run_uid[:8]}: {len(scan.angles_deg)} frames -> {path}; maps with: bp-plugin dfxrm maps {path} --out ...")
    return 0


def add_dfxrm_parser(sub, add_tiled_args) -> None:
    """Register ``dfxrm`` and its sub-commands on the main parser's subparsers."""
    from plans.dfxrm_acquire import SCAN_KINDS

    p = sub.add_parser("dfxrm", help="dark-field x-ray microscopy: demo, acquire, maps, export")
    dsub = p.add_subparsers(dest="dfxrm_command", required=True)

    d = dsub.add_parser("demo", help="simulated DF-XRM experiment with live maps (Tiled, service, viewer, RunEngine)")
    d.add_argument("--preset", default="small", help="tiny | small | full")
    d.add_argument("--scan", default="mosaicity", choices=SCAN_KINDS)
    d.add_argument("--out", default="out/dfxrm-demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--order", type=int, default=2, choices=[2, 4], help="4: skewness and kurtosis maps too")
    d.add_argument("--no-browser", action="store_true")
    d.set_defaults(func=cmd_demo)

    q = dsub.add_parser("acquire", help="run a DF-XRM plan on the simulated microscope, recorded in Tiled")
    q.add_argument("--preset", default="tiny")
    q.add_argument("--scan", default="mosaicity", choices=SCAN_KINDS)
    q.add_argument("--out", default="out/dfxrm")
    q.add_argument("--tiled-url", default=None, help="use this Tiled server instead of starting the embedded one")
    add_key_args(q, "the key of the --tiled-url server")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--n-phi", type=int, default=None, help="phi points (default: the preset's)")
    q.add_argument("--n-chi", type=int, default=None, help="chi points (default: the preset's)")
    q.add_argument("--n-tth", type=int, default=None,
                   help="2theta points (default: the preset's for a strain scan, 7 for a combined one; "
                        "a layer scan with it is a combined scan per layer: strain volumes)")
    q.add_argument("--count-time", type=float, default=None, help="exposure per frame, s (default: the preset's)")
    q.add_argument("--realtime", action="store_true", help="exposures last count-time, as on a real camera")
    q.add_argument("--order", type=int, default=2, choices=[2, 4], help="4: skewness and kurtosis maps too")
    q.add_argument("--stream", default=None, metavar="ADDRESS", help="also stream the frames to the service")
    q.add_argument("--temperatures", type=float, nargs="+", default=None, metavar="K",
                   help="an in-situ series: the scan repeated at each sample temperature (K), one linked run each")
    q.set_defaults(func=cmd_acquire)

    m = dsub.add_parser("maps", help="maps of a recorded scan (DF-XRM scan file or run uid in Tiled)")
    m.add_argument("source", help="scan file (.h5) or run uid")
    m.add_argument("--out", required=True, help="maps file (.h5); a PNG is written beside it")
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    m.add_argument("--order", type=int, default=None, choices=[2, 4],
                   help="moments to compute (default: the order the scan was recorded with)")
    m.add_argument("--no-progress", action="store_true")
    add_tiled_args(m)
    m.set_defaults(func=cmd_maps)

    e = dsub.add_parser("export", help="write a recorded DF-XRM run (Tiled) as a scan file")
    e.add_argument("source", help="run uid")
    e.add_argument("--out", required=True)
    e.add_argument("--no-progress", action="store_true")
    add_tiled_args(e)
    e.set_defaults(func=cmd_export)

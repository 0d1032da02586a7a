"""``bp-plugin dfxrm demo``: a simulated DF-XRM experiment with live maps, end to end.

Embedded Tiled server, the reconstructor service (its own process, the same one that takes Bragg
ptychography runs), the viewer, a RunEngine running a DF-XRM plan on the simulated microscope with
the camera's frames streamed over ZeroMQ; ends with a summary (frames, seconds, errors against the
ground truth, where the maps are). Ctrl-C stops cleanly; the raw frames stay on disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DfxrmDemoOptions:
    """``preset``: tiny / small / full; ``scan``: mosaicity / strain / combined / weak_beam / layers / topotomo;
    ``order``: moments kept (2, or 4 for skewness and kurtosis)."""

    preset: str = "small"
    scan: str = "mosaicity"
    out: Path = Path("out/dfxrm-demo")
    seed: int = 0
    order: int = 2
    browser: bool = True
    progress: bool = True


def _status(st: dict) -> str:
    return (f"[{st.get('state', '?'):>7}] frames {st.get('frames_measured', 0)}/{st.get('frames_expected', '?')} "
            f"(placed {st.get('placed', 0)}, dup {st.get('duplicates', 0)}, rejected {st.get('rejected', 0)}, "
            f"recovered {st.get('recovered', 0)})")


def run_dfxrm_demo(opts: DfxrmDemoOptions) -> dict:
    """Run the streamed DF-XRM experiment through the one demo driver; returns the summary (also printed)."""
    from plans.dfxrm_acquire import DfxrmAcquireOptions, acquire_dfxrm

    from .demo import DemoRun, run_streamed_demo
    from .dfxrm_sender import DfxrmFrameStreamer
    from .taps import DetectorFrameTap

    return run_streamed_demo(DemoRun(
        title=f"DF-XRM {opts.scan} scan of the simulated '{opts.preset}' grain; frames stream to the service",
        acquire=lambda acq_dir, server, callbacks_for: acquire_dfxrm(
            DfxrmAcquireOptions(preset=opts.preset, scan=opts.scan, out=acq_dir, seed=opts.seed, order=opts.order),
            server=server, callbacks_for=callbacks_for),
        streamer=lambda sender, mic: DfxrmFrameStreamer(sender, DetectorFrameTap(mic.detector)),
        root="dfxrm", status=_status, summary=_summary, timeout_s=600.0), opts.out, browser=opts.browser,
        progress=opts.progress)


def _summary(md: dict, r: dict, t_scan: float, total_s: float, out: Path, viewer) -> dict:
    st, m = md.get("status", {}), md.get("metrics", {})
    folder = out / "reconstructor" / r["uid"]
    s = {"run_uid": r["uid"], "frames": r["n_events"], "scan_s": r["seconds"], "total_s": total_s,
         "state": st.get("state"), **{k: st.get(k) for k in ("placed", "duplicates", "rejected", "recovered")},
         **{k: m.get(k) for k in ("tilt_phi_rms_error_deg", "tilt_chi_rms_error_deg", "strain_rms_error",
                                  "boundary_recall", "boundary_precision", "burgers_relative_error",
                                  "latency_last_frame_to_published_s")},
         "maps": str(folder / "maps.h5"), "figure": str(folder / "maps.png"), "viewer": viewer.url if viewer else None}
    print("\n== summary")
    print(f"run {r['uid']}: {s['frames']} frames, scan {r['seconds']:.1f} s, total {total_s:.1f} s, state {s['state']}")
    print(f"frames placed {s['placed']}, duplicates {s['duplicates']}, rejected {s['rejected']}, "
          f"recovered from files {s['recovered']}")
    errs = [f"{k} {v:.2g}" for k, v in s.items() if k.endswith(("error_deg", "strain_rms_error")) and v is not None]
    if errs:
        print("errors against the ground truth: " + ", ".join(errs))
    if s["burgers_relative_error"]:
        print("dislocations: Burgers vector from the Nye map within "
              f"{100 * max(s['burgers_relative_error']):.0f} % (worst of {len(s['burgers_relative_error'])})")
    layers = md.get("layers")
    if layers:
        s["layers_finished"] = layers.get("finished")
        print(f"volumes: {len(layers.get('heights_m', []))} layers (finished {len(layers.get('finished', []))}), "
              f"voxel (h, y, x) {', '.join(f'{v * 1e6:.3g}' for v in layers.get('voxel_m', []) if v)} um")
    topo = md.get("topotomo")
    if topo:
        s.update({k: m.get(k) for k in ("grain_volume_m3", "shape_dice", "shape_volume_error")})
        s["projections_finished"] = len(topo.get("finished", []))
        line = (f"topo-tomography: {s['projections_finished']}/{len(topo.get('omegas_deg', []))} projections; "
                + (f"grain {s['grain_volume_m3'] * 1e18:.3g} um^3" if s["grain_volume_m3"] else "no shape"))
        if s["shape_dice"] is not None:
            line += (f"; against the simulated grain: overlap (Dice) {s['shape_dice']:.3f}, volume error "
                     f"{100 * s['shape_volume_error']:+.1f} %")
        print(line)
    print(f"maps: {s['maps']}; figure: {s['figure']}")
    return s

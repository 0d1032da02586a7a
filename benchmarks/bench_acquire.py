"""Acquisition rate of the simulated beamline (frames/s), and what bounds it; a table and JSON.

Three measurements per preset, each a whole ``bragg_ptycho_scan`` in a real RunEngine:

- ``frame only``: the detector's frame computation alone (simulator + noise), per frame;
- ``RunEngine``: the scan with the detector writing HDF5, no Tiled;
- ``RunEngine + Tiled``: what ``bp-plugin acquire`` does (embedded Tiled server, buffered
  TiledWriter with batches of 10, live monitor), scan time and time until Tiled holds everything.

    .venv/bin/python benchmarks/bench_acquire.py --presets tiny small
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def frame_only(preset: str, tmp: Path, n: int = 40) -> float:
    from sim_devices.beamline import build_beamline

    bl = build_beamline(preset, write_dir=tmp / f"fo_{preset}")
    geo = bl.geometry
    bl.expected_frame(0.2)   # simulator set-up and the scale calibration are not per frame
    t = []
    for k in range(n):       # angle-outer order: a new position each frame, exit waves cached after one pass
        i = k % int(np.prod(geo.raster_shape))
        bl.piezo_x.set((i % geo.raster_shape[1]) * geo.raster_step_m[0] * 1e6).wait()
        t0 = time.perf_counter()
        bl._frame(0.2)
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def run_engine_only(preset: str, tmp: Path) -> tuple[int, float]:
    from plans.recording import make_run_engine
    from plans.bragg_ptycho import bragg_ptycho_scan
    from sim_devices.beamline import build_beamline

    bl = build_beamline(preset, write_dir=tmp / f"re_{preset}")
    RE = make_run_engine()
    n = []
    RE.subscribe(lambda name, doc: n.append(1), "event")
    t0 = time.perf_counter()
    RE(bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.preset.geometry))
    return len(n), time.perf_counter() - t0


def with_tiled(preset: str, tmp: Path) -> dict:
    from plans.acquire import AcquireOptions, acquire

    t0 = time.perf_counter()
    r = acquire(AcquireOptions(preset=preset, out=tmp / f"acq_{preset}", progress=False))
    r["total_s"] = time.perf_counter() - t0
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--json", default="benchmarks/results/bench_acquire.json")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for p in a.presets:
            fo = frame_only(p, tmp)
            n, t_re = run_engine_only(p, tmp)
            r = with_tiled(p, tmp)
            rows.append({"preset": p, "frames": n, "frame_only_s": fo, "run_engine_s": t_re,
                         "run_engine_fps": n / t_re, "tiled_scan_s": r["seconds"], "tiled_fps": r["frames_per_s"],
                         "tiled_total_s_incl_server_start": r["total_s"]})
    print(f"{'preset':8}{'frames':>8}{'frame only (ms)':>17}{'RE (frames/s)':>15}{'RE+Tiled (frames/s)':>22}")
    for r in rows:
        print(f"{r['preset']:8}{r['frames']:>8}{r['frame_only_s'] * 1e3:>17.1f}{r['run_engine_fps']:>15.1f}"
              f"{r['tiled_fps']:>22.1f}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=1))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

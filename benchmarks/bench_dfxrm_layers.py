"""DF-XRM layer scans: frames/s of the service's live layer accumulator, last frame -> volume, darling beside.

For each of ``--sizes`` (square frames), a layer scan of ``--layers`` layers of ``--points``^2 (phi,
chi) frames is folded into the service's own run object (``streaming.dfxrm_layers_live.
DfxrmLayerRun``, what the receiver thread calls for every frame; no network, no Tiled):

- ``frames/s``: all frames over the wall time of their ``_add`` (the receiver thread's work);
- ``layer maps s``: the median time of the worker's once-per-layer step, the finished layer's
  maps (``DfxrmLayerRun.layer_maps()`` right after its last frame);
- ``last frame -> volume s``: from the last frame's arrival to the stacked volumes (the last
  layer's maps, then ``DfxrmLayerRun.maps()``: every layer resampled onto the volume's grid),
  what the service publishes at the stop; publication itself is not included.

Beside it, when darling (``pip install -e '.[bench]'``) is installed, the same per-layer moments with
``darling.properties.moments`` on each layer's stack (rearranged to (rows, cols, n_phi, n_chi)),
then the same stacking: the batch way, all frames of a layer held in memory. Frames are a few
distinct uint16 images of the simulated grain at the scan's angles (generated before any clock),
reused cyclically. Medians of ``--repeats``.

    .venv/bin/python benchmarks/bench_dfxrm_layers.py            # 512 and 2048, 5 layers of 15 x 15
    .venv/bin/python benchmarks/bench_dfxrm_layers.py --quick    # 128 and 256, 3 layers of 9 x 9
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bp_plugin.dfxrm import DfxrmGeometry
from bp_plugin.dfxrm.layers import LayerGeometry, stack_layer_maps
from sim_devices.dfxrm_sample import DfxrmSampleConfig, build_sample
from streaming import protocol
from streaming.dfxrm_layers_live import DfxrmLayerRun

HALF = 0.07            # plans/dfxrm.py's default half range (deg)
N_DISTINCT = 8         # distinct frames generated per size


def _header(size: int, layers: int, points: int, geo: DfxrmGeometry) -> dict:
    heights = list(np.linspace(-1e-6, 1e-6, layers))
    scan = {"kind": "layers", "axes": ["phi", "chi"], "centre_deg": [geo.phi0_deg, geo.chi0_deg],
            "shape": [points, points], "frame_shape": [size, size], "layer_points": points * points,
            "heights_m": heights, "n_layers": layers, "n_points": layers * points * points,
            "tth_deg": geo.tth_ref_deg, "order": 2, "background_counts": 0.5, "noise_floor_counts": 5.0,
            "resolution_deg": {"phi": 0.004, "chi": 0.008}, "motors": {"phi": "phi", "chi": "chi"}}
    return protocol.decode(protocol.encode_dfxrm_start(f"bench-{size}", 0, geo.to_dict(), scan,
                                                       scan["n_points"])).header


def _frames(size: int, points: int, geo: DfxrmGeometry, rng):
    sample = build_sample(DfxrmSampleConfig(shape=(size, size)), geo)
    grid = np.stack(np.meshgrid(*[np.linspace(-HALF, HALF, points)] * 2, indexing="ij"), -1).reshape(-1, 2)
    pick = grid[np.linspace(0, len(grid) - 1, N_DISTINCT).astype(int)]
    return [sample.frame(p, c, geo.tth_ref_deg, 0.1, rng) for p, c in pick], grid


def ours(size, layers, points, geo, frames, grid) -> dict:
    """One live pass: every frame placed as the receiver places it, then the volumes."""
    n_per = points * points
    with tempfile.TemporaryDirectory() as tmp:
        run = DfxrmLayerRun(_header(size, layers, points, geo), Path(tmp) / "run")
        finish = []
        t0 = time.perf_counter()
        for k in range(layers * n_per):
            run._add(k, frames[k % len(frames)], grid[k % n_per])
            if k % n_per == n_per - 1:                          # this frame finished its layer: the
                t = time.perf_counter()                         # worker computes its maps, once
                run.layer_maps()
                finish.append(time.perf_counter() - t)
        t_frames = time.perf_counter() - t0 - sum(finish)
        t1 = time.perf_counter()
        vols = run.maps()
        t_stack = time.perf_counter() - t1
    return {"frames_per_s": layers * n_per / t_frames, "layer_maps_s": statistics.median(finish),
            "last_frame_to_volume_s": finish[-1] + t_stack, "shape": list(vols["tilt_phi"].shape)}


def with_darling(size, layers, points, geo, frames, grid, darling) -> dict:
    """The batch way with darling: each layer's stack in memory, its moments, the same stacking."""
    n_per = points * points
    lg = LayerGeometry(tth_deg=geo.tth_ref_deg, pixel_size_m=geo.pixel_size_m, frame_shape=(size, size))
    axis = np.linspace(-HALF, HALF, points)
    coords = np.array(np.meshgrid(axis, axis, indexing="ij"))
    t_mom, per = [], []
    t0 = time.perf_counter()
    for layer in range(layers):
        stack = np.empty((size, size, points, points), np.uint16)
        for k in range(n_per):
            stack[:, :, k // points, k % points] = frames[(layer * n_per + k) % len(frames)]
        t = time.perf_counter()
        mean, _ = darling.properties.moments(stack, coords)
        t_mom.append(time.perf_counter() - t)
        intensity = stack.sum(axis=(2, 3), dtype=np.float64)
        mask = intensity > 0.1 * intensity.max()
        per.append({"mask": mask, "intensity": intensity, "tilt_phi": mean[..., 0], "tilt_chi": mean[..., 1]})
    t_all = time.perf_counter() - t0
    t1 = time.perf_counter()
    stack_layer_maps(per, np.linspace(-1e-6, 1e-6, layers), lg)
    t_stack = time.perf_counter() - t1
    return {"frames_per_s": layers * n_per / t_all, "layer_moments_s": statistics.median(t_mom),
            "last_frame_to_volume_s": t_mom[-1] + t_stack}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--points", type=int, default=15, help="points per axis of each layer's (phi, chi) grid")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="128 and 256 px, 3 layers of 9 x 9, 1 repeat")
    ap.add_argument("--out", default="benchmarks/results/bench_dfxrm_layers.json")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.layers, a.points, a.repeats = [128, 256], 3, 9, 1
    try:
        import darling.properties          # numba compiles at import: not in the timings
    except ImportError:
        darling = None
        print("darling is not installed (pip install -e '.[bench]'): the comparison is skipped", file=sys.stderr)
    geo, rng, rows = DfxrmGeometry(), np.random.default_rng(0), []
    for size in a.sizes:
        frames, grid = _frames(size, a.points, geo, rng)
        ours(size, 1, 3, geo, frames, grid[:9])          # warm-up: first calls, pages of the sums
        o = [ours(size, a.layers, a.points, geo, frames, grid) for _ in range(a.repeats)]
        row = {"size": size, "layers": a.layers, "points": a.points, "frames": a.layers * a.points ** 2,
               "ours": {k: statistics.median(r[k] for r in o) for k in ("frames_per_s", "layer_maps_s",
                                                                         "last_frame_to_volume_s")},
               "volume_shape": o[0]["shape"], "darling": None}
        if darling is not None:
            if size == a.sizes[0]:                        # darling's first call (numba) outside the medians
                with_darling(8, 1, 3, geo, [f[:8, :8] for f in frames], grid[:9], darling)
            d = [with_darling(size, a.layers, a.points, geo, frames, grid, darling) for _ in range(a.repeats)]
            row["darling"] = {k: statistics.median(r[k] for r in d) for k in d[0]}
        rows.append(row)
    print(f"\nLayer scan, live accumulator ({a.layers} layers of {a.points} x {a.points} frames; median of {a.repeats})")
    hdr = (f"{'frame':>10} {'frames':>7} {'volume':>16} {'ours fr/s':>10} {'layer maps s':>13} {'last->vol s':>12}"
           f" {'darling fr/s':>13} {'darling last->vol s':>20}")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        o, d = r["ours"], r["darling"]
        print(f"{r['size']:>4}x{r['size']:<5} {r['frames']:>7} {'x'.join(map(str, r['volume_shape'])):>16} "
              f"{o['frames_per_s']:>10.1f} {o['layer_maps_s']:>13.3f} {o['last_frame_to_volume_s']:>12.3f} "
              + (f"{d['frames_per_s']:>13.1f} {d['last_frame_to_volume_s']:>20.3f}" if d else f"{'-':>13} {'-':>20}"))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "quick": a.quick, "repeats": a.repeats}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

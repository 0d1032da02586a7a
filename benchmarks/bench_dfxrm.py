"""DF-XRM moments: per-frame cost of the live accumulator, a full mosaicity scan beside darling, agreement.

Medians of ``--repeats`` runs (the 2-core machine is noisy). Frames are uint16 images of the simulated
grain (sim_devices/dfxrm_sample.py), generated before any clock starts.

1. ``live``: ``MomentAccumulator.add`` per frame, the amortised ``flush`` included (N frames + the
   final flush, divided by N; the accumulator is warmed up first, so the sums are paged in), for each
   of ``--sizes`` (a few distinct frames reused cyclically with the angles of a 31 x 31 grid):
   (phi, chi) at order 2 with batch 32 at every size; at the smallest size also batch 8 and 64, order 4
   and a (phi, chi, tth) scan. Beside it the floor: one uint16 -> float32 copy of the frame into a row
   of a preallocated 32-row buffer (one pass over the frame, as ``add`` does first), and the ratio to it.
2. ``scan``: a full ``--scan-points``^2 mosaicity scan of ``--scan-size``^2 frames (default 31 x 31 of
   512 x 512), written once to HDF5 in /tmp (/entry/data/data uint16 (n, rows, cols), one chunk per
   frame, bitshuffle-LZ4; /entry/data/phi, /entry/data/chi). Ours: read frame by frame + add, then
   ``compute_maps``; darling: read the stack, rearrange to (rows, cols, n_phi, n_chi) uint16,
   ``darling.properties.moments``. Reading is timed apart from computing (the file is in the page
   cache: reading = HDF5 + LZ4 decompression). darling's numba compile happens when
   ``darling.properties`` is imported; that import and the first call are timed once, apart.
3. ``agreement`` of the two on that scan, inside our crystal mask: max / RMS |ours - darling| of the
   centre of mass in phi and chi (deg) and of var_phi, var_chi, cov_phi_chi (deg^2), also relative to
   the scan step (step^2). Ours runs with background=0 and no noise floor here, because darling
   computes plain moments of the raw counts.

    .venv/bin/python benchmarks/bench_dfxrm.py                  # full run (about 1.5 min here)
    .venv/bin/python benchmarks/bench_dfxrm.py --quick          # smoke run (small sizes, seconds)
    .venv/bin/python benchmarks/bench_dfxrm.py --device gpu     # accumulator on CuPy (darling stays on CPU)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
from tqdm import tqdm

from bp_plugin.backend import get_backend
from bp_plugin.dfxrm import DfxrmGeometry, MapOptions, MomentAccumulator, compute_maps
from bp_plugin.dfxrm.maps import FWHM_PER_SIGMA
from sim_devices.dfxrm_sample import DfxrmSampleConfig, build_sample

HALF_RANGE = {"phi": 0.07, "chi": 0.07, "tth": 0.02}     # plans/dfxrm.py defaults (offsets, deg)
COUNT_TIME_S = 0.1                                       # sim_devices/dfxrm_microscope.py default


def _sync(xp) -> None:
    if xp is not np:
        xp.cuda.Device().synchronize()


def scan_grid(geo: DfxrmGeometry, axes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Angles (n^len(axes), len(axes)) of a grid scan, first axis outermost, and the centre (deg)."""
    ref = {"phi": geo.phi0_deg, "chi": geo.chi0_deg, "tth": geo.tth_ref_deg}
    n_ax = {"phi": n, "chi": n, "tth": 11}
    lines = [ref[a] + np.linspace(-HALF_RANGE[a], HALF_RANGE[a], n_ax[a]) for a in axes]
    grid = np.stack(np.meshgrid(*lines, indexing="ij"), -1).reshape(-1, len(axes))
    return grid, np.array([ref[a] for a in axes])


def frames_at(sample, angles: np.ndarray, axes, rng) -> list[np.ndarray]:
    geo = sample.geometry
    out = []
    for a in angles:
        d = dict(zip(axes, a))
        out.append(sample.frame(d.get("phi", geo.phi0_deg), d.get("chi", geo.chi0_deg),
                                d.get("tth", geo.tth_ref_deg), COUNT_TIME_S, rng))
    return out


def time_floor(frames, n: int, batch: int, xp, repeats: int) -> float:
    """Median ms/frame of the one-pass floor: uint16 frame -> float32 row of a preallocated batch buffer."""
    npix = frames[0].size
    buf = xp.empty((batch, npix), np.float32)
    buf[...] = 0                                        # page the buffer in
    times = []
    for _ in range(repeats):
        _sync(xp)
        t0 = time.perf_counter()
        for k in range(n):
            buf[k % batch][...] = xp.asarray(frames[k % len(frames)]).reshape(-1)
        _sync(xp)
        times.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(times)


SERVICE_BG = 5.0                           # a dark level (counts); the floor is its 1e-4 Poisson quantile


def time_accumulator(frames, angles, centre, axes, n: int, batch: int, order: int, xp, repeats: int,
                     service: bool = False) -> list[float]:
    """ms/frame of ``add`` over ``n`` frames plus the final ``flush``, per repeat (steady state).
    ``service``: with the background subtraction and noise floor (and the per-pixel maximum it
    keeps) that the live service always applies."""
    from plans.dfxrm import noise_floor

    kw = {"background": SERVICE_BG, "floor": noise_floor(SERVICE_BG)} if service else {}
    acc = MomentAccumulator(frames[0].shape, axes, centre, order=order, batch=batch, xp=xp, **kw)
    for k in range(batch):                              # warm-up: page in the buffer and the sums
        acc.add(frames[k % len(frames)], angles[k % len(angles)])
    acc.flush()
    times = []
    for r in range(repeats):
        off = (r + 1) * n
        _sync(xp)
        t0 = time.perf_counter()
        for k in range(n):
            acc.add(frames[k % len(frames)], angles[(off + k) % len(angles)])
        acc.flush()
        _sync(xp)
        times.append((time.perf_counter() - t0) / n * 1e3)
    return times


def live_part(sizes, repeats: int, xp, rng) -> list[dict]:
    geo = DfxrmGeometry()
    rows, small = [], min(sizes)
    for size in sizes:
        sample = build_sample(DfxrmSampleConfig(shape=(size, size)), geo)
        n = 256 if size <= 1024 else 64                 # a multiple of every batch tried: flushes amortise evenly
        n_distinct = 16 if size <= 1024 else 4
        cases = [(("phi", "chi"), 2, 32, False), (("phi", "chi"), 2, 32, True)]
        if size == small:
            cases = [(("phi", "chi"), 2, 8, False), (("phi", "chi"), 2, 32, False), (("phi", "chi"), 2, 64, False),
                     (("phi", "chi"), 4, 32, False), (("phi", "chi", "tth"), 2, 32, False),
                     (("phi", "chi"), 2, 32, True)]
        cache, floor = {}, None
        for axes, order, batch, service in tqdm(cases, desc=f"live {size}x{size}", file=sys.stderr, leave=False):
            if axes not in cache:
                grid, centre = scan_grid(geo, axes, 31)
                pick = grid[rng.choice(len(grid), n_distinct, replace=False)]
                cache[axes] = (frames_at(sample, pick, axes, rng), grid[rng.permutation(len(grid))], centre)
            frames, angles, centre = cache[axes]
            floor = floor or time_floor(frames, n, 32, xp, repeats)
            ts = time_accumulator(frames, angles, centre, axes, n, batch, order, xp, repeats, service)
            ms = statistics.median(ts)
            rows.append({"size": size, "axes": list(axes), "order": order, "batch": batch, "service": service,
                         "frames_per_repeat": n,
                         "ms_per_frame_runs": ts, "ms_per_frame": ms, "frames_per_s": 1e3 / ms,
                         "floor_ms_per_frame": floor, "x_floor": ms / floor,
                         "bandwidth_GBps_floor": size * size * 6 / floor / 1e6})
        del cache, sample
    return rows


def write_scan(path: Path, size: int, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the n x n (phi, chi) scan (phi outermost) to HDF5 once; return the grid and the centre."""
    geo = DfxrmGeometry()
    sample = build_sample(DfxrmSampleConfig(shape=(size, size)), geo)
    grid, centre = scan_grid(geo, ("phi", "chi"), n)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("/entry/data/data", (len(grid), size, size), np.uint16, chunks=(1, size, size),
                              **hdf5plugin.Bitshuffle(cname="lz4"))
        f["/entry/data/phi"], f["/entry/data/chi"] = grid[:, 0], grid[:, 1]
        for k, a in enumerate(tqdm(grid, desc=f"writing {n}x{n} scan", file=sys.stderr, leave=False)):
            ds[k] = frames_at(sample, [a], ("phi", "chi"), rng)[0]
    return grid, centre


def ours(path: Path, centre, xp):
    """One pass of ours: (read s, accumulate s, maps s, maps)."""
    with h5py.File(path, "r") as f:
        ds = f["/entry/data/data"]
        ang = np.column_stack([f["/entry/data/phi"][()], f["/entry/data/chi"][()]])
        acc = MomentAccumulator(ds.shape[1:], ("phi", "chi"), centre, order=2, background=0.0, xp=xp)
        t_read = 0.0
        _sync(xp)
        t0 = time.perf_counter()
        for k in range(len(ang)):
            t1 = time.perf_counter()
            frame = ds[k]
            t_read += time.perf_counter() - t1
            acc.add(frame, ang[k])
        acc.flush()
        _sync(xp)
        t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps = compute_maps(acc, DfxrmGeometry(), MapOptions())
    t_maps = time.perf_counter() - t0
    return t_read, t_loop - t_read, t_maps, maps


def darling_pass(path: Path, n: int, darling):
    """One pass of darling: (read s, rearrange s, moments s, mean, covariance)."""
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        stack = f["/entry/data/data"][()]
        phi = np.unique(f["/entry/data/phi"][()])
        chi = np.unique(f["/entry/data/chi"][()])
    t1 = time.perf_counter()
    data = np.ascontiguousarray(stack.reshape(n, n, *stack.shape[1:]).transpose(2, 3, 0, 1))
    del stack
    t2 = time.perf_counter()
    coords = np.meshgrid(phi.astype(np.float32), chi.astype(np.float32), indexing="ij")
    mean, cov = darling.properties.moments(data, coords)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, mean, cov


def agreement(maps: dict, mean, cov, step: float) -> list[dict]:
    m = maps["mask"].astype(bool)
    var = {a: (maps[f"fwhm_{a}"].astype(np.float64) / FWHM_PER_SIGMA) ** 2 for a in ("phi", "chi")}
    pairs = [("com_phi", "deg", maps["com_phi"], mean[..., 0], step), ("com_chi", "deg", maps["com_chi"], mean[..., 1], step),
             ("var_phi", "deg^2", var["phi"], cov[..., 0, 0], step ** 2),
             ("var_chi", "deg^2", var["chi"], cov[..., 1, 1], step ** 2),
             ("cov_phi_chi", "deg^2", maps["cov_phi_chi"], cov[..., 0, 1], step ** 2)]
    out = []
    for name, unit, a, b, ref in pairs:
        d = np.abs(np.asarray(a, np.float64)[m] - np.asarray(b, np.float64)[m])
        out.append({"quantity": name, "unit": unit, "max_abs": float(d.max()), "rms_abs": float(np.sqrt((d ** 2).mean())),
                    "max_rel_step": float(d.max() / ref), "rms_rel_step": float(np.sqrt((d ** 2).mean()) / ref),
                    "relative_to": "step" if ref == step else "step^2"})
    return out


def scan_part(size: int, n: int, repeats: int, xp, rng) -> dict:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp, "dfxrm_scan.h5")
        grid, centre = write_scan(path, size, n, rng)
        file_mb = path.stat().st_size / 1e6
        # ours first: darling's numba (OpenMP) threads stay busy-waiting for a while after each call
        o = [ours(path, centre, xp) for _ in tqdm(range(repeats), desc="full scan: ours", file=sys.stderr, leave=False)]
        step = float(grid[n, 0] - grid[0, 0])
        med = lambda runs, i: statistics.median(r[i] for r in runs)  # noqa: E731
        res = {"size": size, "points": [n, n], "frames": n * n, "step_deg": step, "file_MB": file_mb,
               "mask_pixels": int(o[-1][3]["mask"].sum()),
               "ours": {"read_s": med(o, 0), "accumulate_s": med(o, 1), "maps_s": med(o, 2),
                        "runs": [r[:3] for r in o]}, "darling": None, "agreement": None}
        res["ours"]["compute_s"] = res["ours"]["accumulate_s"] + res["ours"]["maps_s"]
        t0 = time.perf_counter()
        try:
            import darling.properties                   # numba compiles (or loads its cache) at import
        except ImportError:
            print("darling is not installed (pip install -e '.[bench]'): the comparison is skipped", file=sys.stderr)
            return res
        t_import = time.perf_counter() - t0
        tiny = np.ones((2, 2, n, n), np.uint16)
        c = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32),) * 2, indexing="ij")
        t0 = time.perf_counter()
        darling.properties.moments(tiny, c)
        t_first = time.perf_counter() - t0
        d = [darling_pass(path, n, darling) for _ in tqdm(range(repeats), desc="full scan: darling", file=sys.stderr,
                                                            leave=False)]
        res["agreement"] = agreement(o[-1][3], d[-1][3], d[-1][4], step)
    res["darling"] = {"read_s": med(d, 0), "rearrange_s": med(d, 1), "moments_s": med(d, 2),
                      "import_compile_s": t_import, "first_call_s": t_first, "runs": [r[:3] for r in d]}
    res["darling"]["compute_s"] = res["darling"]["rearrange_s"] + res["darling"]["moments_s"]
    return res


def environment(backend) -> dict:
    env = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "device": backend.device}
    try:
        import numba
        env["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    for p in ("numpy", "numba", "darling-pypi", "h5py", "hdf5plugin"):
        try:
            env[p] = version(p)
        except Exception:           # not installed: recorded as such
            env[p] = None
    if backend.device == "gpu":
        env["gpu"] = backend.xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="frame sizes (square) for the live part")
    ap.add_argument("--scan-size", type=int, default=512, help="frame size of the full scan")
    ap.add_argument("--scan-points", type=int, default=31, help="points per axis of the full (phi, chi) scan")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke run: 128 and 256 px, an 11 x 11 scan of 128 px, 2 repeats")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--out", default="benchmarks/results/bench_dfxrm.json")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.scan_size, a.scan_points, a.repeats = [128, 256], 128, 11, 2
    backend = get_backend(a.device)
    xp, rng = backend.xp, np.random.default_rng(0)
    live = live_part(sorted(a.sizes), a.repeats, xp, rng)
    scan = scan_part(a.scan_size, a.scan_points, a.repeats, xp, rng)

    print(f"\nLive moments per frame ({backend.device}, median of {a.repeats} repeats; floor = one uint16 -> float32 pass)")
    print("(bg+floor: with the dark subtraction, noise floor and per-pixel maximum the service applies)")
    hdr = f"{'frame':>10} {'axes':<21} {'order':>5} {'batch':>5} {'ms/frame':>9} {'frames/s':>9} {'floor ms':>9} {'x floor':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in live:
        print(f"{r['size']:>4}x{r['size']:<5} {','.join(r['axes']) + (' bg+floor' if r['service'] else ''):<21} {r['order']:>5} {r['batch']:>5} "
              f"{r['ms_per_frame']:>9.3f} {r['frames_per_s']:>9.0f} {r['floor_ms_per_frame']:>9.3f} {r['x_floor']:>8.1f}")
    o, d, n = scan["ours"], scan["darling"], scan["size"]
    print(f"\nFull {a.scan_points}x{a.scan_points} scan of {n}x{n} frames ({scan['frames']} frames, HDF5 bitshuffle-LZ4, "
          f"{scan['file_MB']:.0f} MB), median s of {a.repeats}")
    hdr = f"{'':<44} {'read':>7} {'compute':>8} {'total':>7}"
    print(hdr + "\n" + "-" * len(hdr))
    print(f"{'ours: frame by frame + add + compute_maps':<44} {o['read_s']:>7.2f} {o['compute_s']:>8.2f} "
          f"{o['read_s'] + o['compute_s']:>7.2f}   (add {o['accumulate_s']:.2f} + maps {o['maps_s']:.2f})")
    if d is None:
        print("darling: not installed (pip install -e '.[bench]'), no comparison")
    else:
        print(f"{'darling: read stack + rearrange + moments':<44} {d['read_s']:>7.2f} {d['compute_s']:>8.2f} "
              f"{d['read_s'] + d['compute_s']:>7.2f}   (rearrange {d['rearrange_s']:.2f} + moments {d['moments_s']:.2f})")
        print(f"darling one-off: import darling.properties (numba compile / cache load) {d['import_compile_s']:.1f} s, "
              f"first call {d['first_call_s'] * 1e3:.0f} ms (not in the medians)")
        print(f"\nAgreement ours (background 0, no floor) vs darling, {scan['mask_pixels']} mask pixels, "
              f"step {scan['step_deg']:.5f} deg")
        hdr = f"{'quantity':<12} {'unit':<6} {'max |diff|':>11} {'rms |diff|':>11} {'max/step':>10} {'rms/step':>10}"
        print(hdr + "\n" + "-" * len(hdr))
        for r in scan["agreement"]:
            print(f"{r['quantity']:<12} {r['unit']:<6} {r['max_abs']:>11.2e} {r['rms_abs']:>11.2e} "
                  f"{r['max_rel_step']:>10.1e} {r['rms_rel_step']:>10.1e}"
                  + ("  (/step^2)" if r["relative_to"] == "step^2" else ""))
    out = {"environment": environment(backend), "repeats": a.repeats, "quick": a.quick, "live": live, "scan": scan}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

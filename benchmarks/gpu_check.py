"""The project's device check: one call on the GPU machine, a table on stdout and JSON under $OUT.

What it measures, in order (each section times itself and records its failure instead of stopping):

1. ``tests``: ``pytest -m gpu tests/test_device.py`` (CPU and device agree to float32 precision on
   the sheared FFT, iterations and ML; the engine waits for the device once per iteration);
2. ``engine``: seconds per position and per iteration (reference and fast kernels, sequential;
   fast batched) beside the FFT
   floor (one forward and one adjoint sheared transform per position), at the ``small`` preset and
   at the paper's box (126 x 200 x 160 at x3, synthetic frames on a subset of the positions);
3. ``schedule``: the paper's scan (400 positions x 42 angles x 200 x 160, synthetic frames) for
   ``--paper-iterations`` joint + ML iterations within ``--budget-s``, extrapolated to 1000 + 500
   (said so in the table);
4. ``quality``: the ``small`` preset simulated and reconstructed on the device with the tests'
   schedule, its errors against the ground truth;
   ``paper_quality``: the ``paper`` preset simulated on the device (400 positions) and reconstructed
   with the paper's schedule compressed to what ``--budget-s`` allows (measured from the first
   iteration; the table says how many iterations ran), its errors against the ground truth;
5. ``dfxrm``: the DF-XRM moment accumulator on the device at 2048 x 2048 (ms per frame, frames
   uploaded from the host as the service receives them) and its agreement with the CPU;
6. ``mpi``: strong scaling over 1, 2 and 4 CPU ranks (``benchmarks/bench_mpi.py``, ``small``, 6
   iterations, speed only), where an MPI runtime is (skipped, with the reason, where not).
7. ``memory``: the device memory pool's size after each section (its peak, as CuPy keeps blocks).

Needs only numpy, scipy, h5py and (for the GPU) CuPy on ``PYTHONPATH=.``; ``--device cpu --quick``
runs the same sections at tiny sizes here, to check the script before the device call:

    PYTHONPATH=. python3 benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_engine import fft_floor, iteration_time, sync  # noqa: E402
from bp_plugin.backend import get_backend  # noqa: E402
from bp_plugin.defaults import PAPER, SHORT  # noqa: E402
from bp_plugin.recon.config import ReconConfig  # noqa: E402
from bp_plugin.recon.engine import Reconstructor  # noqa: E402

PAPER_SCHEDULE = (PAPER.iterations, PAPER.ml_iterations)


def synthetic_scan(preset: str, n_positions: int | None, seed: int = 0):
    """``(geometry, frames (n_a, n_p, N1, N2) float32, translations, mask)`` of a preset's geometry
    with uniform random frames (mean 2 counts): what timing needs, in seconds rather than the simulator's
    minutes (the cost of an iteration does not depend on what the frames hold)."""
    from sim_devices.diffraction import raster_translations
    from sim_devices.presets import get_preset

    geo = get_preset(preset).geometry
    t = raster_translations(geo)
    if n_positions is not None:
        t = t[:n_positions]
    rng = np.random.default_rng(seed)
    frames = rng.random((geo.n_angles, len(t)) + tuple(geo.crop), dtype=np.float32) * np.float32(4)
    return geo, frames, t, np.ones(geo.crop, bool)


class Check:
    def __init__(self, backend, out: Path):
        self.backend, self.out = backend, out
        self.result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections": {}}
        self.pool_peak = 0

    def memory(self) -> int:
        if self.backend.device != "gpu":
            return 0
        pool = self.backend.xp.get_default_memory_pool()
        self.pool_peak = max(self.pool_peak, int(pool.total_bytes()))
        return self.pool_peak

    def section(self, name, fn, *args):
        t0 = time.perf_counter()
        print(f"--- {name}", flush=True)
        try:
            res = fn(*args)
            res.setdefault("status", "ok")
        except Exception as err:  # a failed section is a finding: record it and go on
            res = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(res["traceback"], flush=True)
        res["seconds"] = time.perf_counter() - t0
        res["memory_pool_peak_bytes"] = self.memory()
        self.result["sections"][name] = res
        self.save()
        return res

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=2, default=float))


def environment(backend) -> dict:
    env = {"machine": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
           "numpy": np.__version__, "device": backend.device}
    import scipy
    env["scipy"] = scipy.__version__
    if backend.device == "gpu":
        cp = backend.xp
        props = cp.cuda.runtime.getDeviceProperties(0)
        env.update(cupy=cp.__version__, gpu=props["name"].decode(), gpu_memory_bytes=int(props["totalGlobalMem"]),
                   cuda_runtime=cp.cuda.runtime.runtimeGetVersion())
    return env


def run_tests(quick: bool) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_device.py", "-p", "no:cacheprovider"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    tail = (p.stdout + p.stderr).strip().splitlines()[-15:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", "\n".join(tail))}
    return {"returncode": p.returncode, **counts, "tail": tail}


def engine_rows(backend, quick: bool, repeats: int) -> dict:
    rows = []
    cases = [("tiny" if quick else "small", "simulated"), ("paper", 2 if quick else 16)]
    with tempfile.TemporaryDirectory() as tmp:
        for preset, source in cases:
            if source == "simulated":
                from bp_plugin.dataset import read_dataset
                from sim_devices.experiment import simulate_to_file

                path = Path(tmp, f"{preset}.h5")
                simulate_to_file(path, preset, progress=False)
                ds = read_dataset(path)
                geo, frames, t, mask = ds.geometry, ds.frames, ds.translations_m, ds.mask
            else:
                geo, frames, t, mask = synthetic_scan(preset, source)
            for kernels, mode in (("reference", "sequential"), ("fast", "sequential"), ("fast", "batched")):
                cfg = ReconConfig(mode=mode, kernels=kernels, upsampling=geo.upsampling).scaled(100)
                rec = Reconstructor(geo, frames, t, mask, config=cfg, backend=backend)
                rec.step()                                    # warm-up: FFT plans, kernels, caches
                s_it = iteration_time(rec, repeats)
                batch = rec.config.batch_size if mode == "batched" else 1
                floor = fft_floor(rec, batch, repeats)
                n = len(rec.active_positions())
                rows.append({"case": preset, "frames": "simulated" if source == "simulated" else "synthetic",
                             "mode": mode, "kernels": kernels, "box": list(rec.layout.box_shape), "positions": n,
                             "s_per_iteration": s_it, "s_per_position": s_it / n, "fft_floor_s": floor,
                             "ratio": s_it / floor})
                print(json.dumps(rows[-1]), flush=True)
                del rec
    return {"rows": rows}


def paper_schedule(backend, quick: bool, iterations, budget_s: float) -> dict:
    geo, frames, t, mask = synthetic_scan("paper", 4 if quick else None)
    joint, ml = iterations
    cfg = ReconConfig(upsampling=geo.upsampling).scaled(joint, ml)
    t0 = time.perf_counter()
    rec = Reconstructor(geo, frames, t, mask, config=cfg, backend=backend)
    sync(backend)
    setup = time.perf_counter() - t0
    del frames
    times = {"joint": [], "ml": []}

    def ticker(stage: str, limit_s: float):
        start = time.perf_counter()

        def tick(r):
            sync(backend)
            times[stage].append(r.history[-1]["seconds"])
            if time.perf_counter() - start > limit_s:
                raise TimeoutError
        return tick

    from bp_plugin.recon.ml import ml_refine
    tick = ticker("joint", budget_s * 2 / 3)          # two thirds of the budget for the joint part
    try:
        for _ in range(joint):
            rec.step()
            tick(rec)
    except TimeoutError:
        pass
    try:
        ml_refine(rec, ml, ticker("ml", budget_s / 3))
    except TimeoutError:
        pass
    med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
    full = PAPER_SCHEDULE[0] * med["joint"] + PAPER_SCHEDULE[1] * med["ml"]
    return {"positions": len(t), "box": list(rec.layout.box_shape), "setup_s": setup,
            "joint_done": len(times["joint"]), "ml_done": len(times["ml"]),
            "s_per_joint_iteration": med["joint"], "s_per_ml_iteration": med["ml"],
            "full_schedule_s_extrapolated": full, "extrapolated": True,
            "note": f"medians of the iterations run, times {PAPER_SCHEDULE[0]} + {PAPER_SCHEDULE[1]}"}


def quality(backend, quick: bool) -> dict:
    from bp_plugin.dataset import read_dataset
    from bp_plugin.recon.curriculum import angle_curriculum
    from sim_devices.experiment import simulate_to_file

    preset = "tiny" if quick else "small"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, f"{preset}.h5")
        sim = simulate_to_file(path, preset, progress=False, device=backend.device)
        ds = read_dataset(path)
    cfg = ReconConfig().with_schedule(SHORT)
    t0 = time.perf_counter()
    rec = Reconstructor.from_scan(ds, config=cfg, backend=backend)
    angle_curriculum(rec, 5 if quick else 10)
    seconds, q = _run_and_evaluate(rec, ds, t0)
    return {"preset": preset, "simulate_s": sim["seconds"], "reconstruct_s": seconds, "iterations": rec.iteration, **q}


def _run_and_evaluate(rec, ds, t0: float):
    """``(seconds since t0 once rec's schedule has run, its quality against the scan's truth)``."""
    from bp_plugin.recon.results import evaluate

    rec.run()
    sync(rec.backend)
    seconds = time.perf_counter() - t0
    a = rec.backend.asnumpy
    q = evaluate(a(rec.object), a(rec.probe2d), a(rec.illumination()), rec.layout,
                 rec.probe_op, ds.ground_truth, ds.ground_truth_attrs)
    return seconds, {k: q[k] for k in QUALITY if k in q}


QUALITY = ("object_error", "probe_error", "strain_rms_error", "strain_rms_error_analytic", "tilt_rms_error_rad")


def paper_quality(backend, quick: bool, budget_s: float) -> dict:
    """The paper preset simulated on the device and reconstructed within ``budget_s`` (the CPU
    rehearsal uses ``tiny``: the paper preset takes the CPU simulator about 3 s per position)."""
    from bp_plugin.dataset import read_dataset
    from sim_devices.experiment import simulate_to_file

    preset = "tiny" if quick else "paper"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, f"{preset}.h5")
        sim = simulate_to_file(path, preset, progress=False, device=backend.device)
        ds = read_dataset(path)
    probe = Reconstructor(ds.geometry, ds.frames, ds.translations_m, ds.mask,
                          config=ReconConfig().scaled(100), backend=backend)
    probe.step()
    sync(backend)
    t_iter = probe.history[-1]["seconds"]
    del probe
    joint = int(max(10, min(PAPER_SCHEDULE[0], 0.6 * budget_s / max(t_iter, 1e-9))))
    cfg = ReconConfig().scaled(joint)                    # ML scaled alike: half the joint count
    t0 = time.perf_counter()
    rec = Reconstructor.from_scan(ds, config=cfg, backend=backend)
    seconds, q = _run_and_evaluate(rec, ds, t0)
    return {"preset": preset, "simulate_s": sim["seconds"], "simulate_device": sim["device"],
            "joint": cfg.iterations, "ml": cfg.ml_iterations, "reconstruct_s": seconds, "first_iteration_s": t_iter, **q}


def dfxrm(backend, quick: bool, repeats: int) -> dict:
    from bp_plugin.dfxrm.moments import MomentAccumulator

    size, n = (256, 32) if quick else (2048, 64)
    rng = np.random.default_rng(0)
    frames = rng.poisson(20, size=(n, size, size)).astype(np.uint16)
    angles = np.stack(np.meshgrid(np.linspace(-0.1, 0.1, 8), np.linspace(-0.1, 0.1, n // 8)), -1).reshape(-1, 2)
    times = []
    for _ in range(repeats):
        acc = MomentAccumulator((size, size), ("phi", "chi"), background=1.0, floor=3.0, xp=backend.xp)
        sync(backend)
        t0 = time.perf_counter()
        acc.add_many(frames, angles)
        acc.flush()
        sync(backend)
        times.append(time.perf_counter() - t0)
    ref = MomentAccumulator((size, size), ("phi", "chi"), background=1.0, floor=3.0)
    ref.add_many(frames[:16], angles[:16])
    dev = MomentAccumulator((size, size), ("phi", "chi"), background=1.0, floor=3.0, xp=backend.xp)
    dev.add_many(frames[:16], angles[:16])
    worst = 0.0
    for r in ref.rows:
        diff = np.abs(backend.asnumpy(dev.moment(r)) - ref.moment(r)).max()
        worst = max(worst, float(diff / max(np.abs(ref.moment(r)).max(), 1e-30)))
    ms = statistics.median(times) / n * 1e3
    return {"frame": [size, size], "frames": n, "ms_per_frame": ms, "frames_per_s": 1e3 / ms,
            "max_rel_diff_vs_cpu": worst}


def mpi_scaling(quick: bool) -> dict:
    """Strong scaling over CPU ranks (benchmarks/bench_mpi.py, speed only), where an MPI runtime is."""
    from bp_plugin.recon.mpi import mpiexec

    if not mpiexec():
        return {"status": "skipped", "error": "no mpiexec on this machine"}
    root = Path(__file__).resolve().parent
    out = Path(tempfile.mkdtemp()) / "bench_mpi.json"
    cmd = [sys.executable, str(root / "bench_mpi.py"), "--preset", "tiny" if quick else "small",
           "--iterations", "3" if quick else "6", "--ranks", *(["2"] if quick else ["2", "4"]), "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=80)
    if p.returncode:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}")
    return json.loads(out.read_text())


SUMMARY = {   # one line per section of the table, from its JSON
    "schedule": lambda p: (f"paper schedule ({p['positions']} positions, box {tuple(p['box'])}): {p['joint_done']} joint "
                           f"x {p['s_per_joint_iteration']:.3f} s + {p['ml_done']} ML x {p['s_per_ml_iteration']:.3f} s; "
                           f"1000 + 500 extrapolated: {p['full_schedule_s_extrapolated'] / 60:.1f} min"),
    "quality": lambda q: (f"quality ({q['preset']}, {q['iterations']} iterations, {q['reconstruct_s']:.1f} s): object "
                          f"{q['object_error']:.3f}, probe {q['probe_error']:.3f}, eps_zz rms {q['strain_rms_error']:.2e}"),
    "paper_quality": lambda q: (f"{q['preset']} preset: simulated in {q['simulate_s']:.0f} s on the {q['simulate_device']}; "
                                f"{q['joint']} + {q['ml']} iterations in {q['reconstruct_s']:.0f} s: object "
                                f"{q['object_error']:.3f}, probe {q['probe_error']:.3f}, eps_zz rms {q['strain_rms_error']:.2e}"),
    "mpi": lambda m: (f"MPI strong scaling ({m['preset']}, {m['iterations']} iterations, CPU): " + ", ".join(
        f"{r['ranks']}x{r['threads']} {r['s_per_iteration']:.2f} s/it (x{r['speedup']:.2f}, merge "
        f"{r['merge_s_per_iteration']:.2f} s)" for r in m["rows"])),
    "dfxrm": lambda d: (f"DF-XRM accumulator {d['frame'][0]} x {d['frame'][1]}: {d['ms_per_frame']:.3f} ms/frame "
                        f"({d['frames_per_s']:.0f} frames/s), max rel diff vs CPU {d['max_rel_diff_vs_cpu']:.1e}"),
}


def table(res: dict) -> str:
    s, lines = res["sections"], []
    env = res.get("environment", {})
    lines.append(f"device check on {env.get('gpu', env.get('device'))} ({env.get('machine')}), "
                 f"numpy {env.get('numpy')}, cupy {env.get('cupy', '-')}")
    t = s.get("tests", {})
    lines.append(f"tests (pytest -m gpu): {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                 f"{t.get('skipped', 0)} skipped  [{t.get('status')}]")
    lines.append(f"{'case':<7} {'frames':<9} {'kernels':<9} {'mode':<10} {'box':>15} {'pos':>4} {'ms/pos':>8} {'s/iter':>8} "
                 f"{'FFT floor':>9} {'x floor':>7}")
    for r in s.get("engine", {}).get("rows", []):
        lines.append(f"{r['case']:<7} {r['frames']:<9} {r['kernels']:<9} {r['mode']:<10} {str(tuple(r['box'])):>15} "
                     f"{r['positions']:>4} "
                     f"{r['s_per_position'] * 1e3:>8.3f} {r['s_per_iteration']:>8.3f} {r['fft_floor_s']:>9.4f} "
                     f"{r['ratio']:>7.1f}")
    if s.get("engine", {}).get("status") == "failed":
        lines.append(f"engine: FAILED {s['engine']['error']}")
    for name, line in SUMMARY.items():
        sec = s.get(name, {})
        lines.append(line(sec) if sec.get("status") == "ok" else f"{name}: {sec.get('status')} {sec.get('error', '')}")
    lines.append(f"device memory pool peak: {res.get('memory_pool_peak_bytes', 0) / 2 ** 30:.2f} GiB; "
                 f"total {res.get('seconds', 0):.0f} s")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="gpu", choices=["cpu", "gpu"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU rehearsal of the device call)")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"), help="folder for gpu_check.json")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--paper-iterations", type=int, nargs=2, default=None, metavar=("JOINT", "ML"))
    ap.add_argument("--budget-s", type=float, default=None,
                    help="seconds for each of the paper schedule and paper quality sections")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["tests", "engine", "schedule", "quality", "dfxrm", "paper_quality"])
    a = ap.parse_args()
    repeats = a.repeats or (2 if a.quick else 5)
    iterations = a.paper_iterations or ((2, 1) if a.quick else (100, 50))
    budget = a.budget_s or (20.0 if a.quick else 100.0)
    t0 = time.perf_counter()
    backend = get_backend(a.device)
    check = Check(backend, Path(a.out))
    check.result["environment"] = environment(backend)
    check.result["arguments"] = {"device": a.device, "quick": a.quick, "repeats": repeats,
                                 "paper_iterations": iterations, "budget_s": budget}
    sections = {"tests": (run_tests, a.quick), "engine": (engine_rows, backend, a.quick, repeats),
                "schedule": (paper_schedule, backend, a.quick, iterations, budget),
                "quality": (quality, backend, a.quick), "dfxrm": (dfxrm, backend, a.quick, repeats),
                "paper_quality": (paper_quality, backend, a.quick, budget), "mpi": (mpi_scaling, a.quick)}
    for name, (fn, *args) in sections.items():
        if name in a.skip:
            check.result["sections"][name] = {"status": "skipped"}
        else:
            check.section(name, fn, *args)
    check.result["memory_pool_peak_bytes"] = check.pool_peak
    check.result["seconds"] = time.perf_counter() - t0
    check.save()
    text = table(check.result)
    (Path(a.out) / "gpu_check.txt").write_text(text + "\n")
    print("\n" + text)
    failed = [k for k, v in check.result["sections"].items() if v["status"] == "failed"]
    return 1 if failed or check.result["sections"].get("tests", {}).get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())

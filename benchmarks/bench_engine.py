"""Engine speed: time per position beside the FFT floor of the best FFT library, before and after.

For each case (a preset simulated, or ``paper``: the paper's geometry with synthetic frames on a
few positions, since the cost of a position does not depend on what its frames hold):

- ``ms/pos``: median wall time of one joint iteration divided by its positions, for the engine's
  ``reference`` kernels (the equations as NumPy / CuPy expressions on whole boxes: the "before")
  and its ``fast`` ones (far fields on the frames' planes, fused CPU kernels), sequential and batched;
- ``floor``: median time of one forward + adjoint sheared transform of a whole box (the work a
  position cannot do without, done the plain way), for each FFT library installed (scipy.fft,
  mkl_fft, pyFFTW), and the best of them; ``x best``: ms/pos over the best floor;
- ``converged`` (``--converge``): the angle curriculum and the tests' schedule (60 + 20), with the
  quality reached against the ground truth, ``fast`` against ``reference``.

    .venv/bin/python benchmarks/bench_engine.py --cases small paper --device cpu
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bp_plugin.backend import FFT_LIBRARIES, cpu_fft, get_backend  # noqa: E402
from bp_plugin.defaults import SHORT  # noqa: E402
from bp_plugin.recon.config import ReconConfig  # noqa: E402
from bp_plugin.recon.engine import Reconstructor  # noqa: E402
from bp_plugin.sheared_fft import ShearedFFT  # noqa: E402

# iterations per angle of the angle curriculum before the schedule (bp_plugin/recon/curriculum.py)
CURRICULUM = {"tiny": 5, "small": 10}


def sync(backend):
    """Wait for the device (a no-op on the CPU) so wall times cover the work."""
    if backend.device == "gpu":
        backend.xp.cuda.Device().synchronize()


def fft_floor(rec, batch: int, repeats: int, backend=None) -> float:
    """Median seconds of the whole-box sheared FFT pairs of one iteration (positions x (forward +
    adjoint)) on ``backend`` (default: the reconstructor's)."""
    backend = backend or rec.backend
    xp = backend.xp
    fft = ShearedFFT(rec.layout.box_shape, rec.fft.shear, backend, layout="modulated")
    n_p = len(rec.active_positions())
    box = xp.ones((batch,) + rec.layout.box_shape, np.complex64)
    fft.adjoint(fft.forward(box))                          # plans
    times = []
    for _ in range(repeats):
        sync(backend)
        t0 = time.perf_counter()
        for _ in range(0, n_p, batch):
            fft.adjoint(fft.forward(box))
        sync(backend)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def iteration_time(rec, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(rec.backend)
        t0 = time.perf_counter()
        rec.step()
        sync(rec.backend)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_floors(rec, repeats: int) -> dict:
    """Per-position floor (s) of each FFT library installed, on the CPU, each measured in a fresh
    process (mkl_fft exports FFTW's symbols, so pyFFTW after it in one process fails, and a library's
    threads should not compete with another's)."""
    import subprocess

    out = {}
    for name in FFT_LIBRARIES:
        cmd = [sys.executable, __file__, "--floor-only", name, *map(str, rec.layout.box_shape), repr(rec.fft.shear),
               str(repeats)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode == 0:
            out[name] = float(p.stdout.strip().splitlines()[-1])
        else:
            print(f"{name} floor: {(p.stderr.strip().splitlines() or ['failed'])[-1]}", file=sys.stderr)
    return out


def floor_only(lib: str, shape, shear: float, repeats: int) -> float:
    """Seconds of one whole-box sheared FFT pair with FFT library ``lib`` (median)."""
    from dataclasses import replace

    backend = replace(get_backend("cpu"), fft=cpu_fft(lib))
    fft = ShearedFFT(shape, shear, backend, layout="modulated")
    box = np.ones((1, *shape), np.complex64)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        fft.adjoint(fft.forward(box))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def load_case(case: str, tmp: str, scan_dir, paper_positions: int):
    """``(geometry, frames, translations, mask, dataset or None)`` of a case."""
    if case == "paper":
        from gpu_check import synthetic_scan

        return (*synthetic_scan("paper", paper_positions), None)
    from bp_plugin.dataset import read_dataset
    from sim_devices.experiment import simulate_to_file

    path = Path(scan_dir, f"{case}.h5") if scan_dir else Path(tmp, f"{case}.h5")
    if not path.exists():
        simulate_to_file(path, case, progress=False)
    ds = read_dataset(path)
    return ds.geometry, ds.frames, ds.translations_m, ds.mask, ds


def converge(ds, backend, kernels: str) -> dict:
    from bp_plugin.recon.curriculum import angle_curriculum
    from bp_plugin.recon.results import evaluate

    cfg = ReconConfig(kernels=kernels).with_schedule(SHORT)
    rec = Reconstructor.from_scan(ds, config=cfg, backend=backend)
    t0 = time.perf_counter()
    n_curr = angle_curriculum(rec, CURRICULUM.get(ds.metadata.get("preset"), 5))
    rec.run()
    sync(backend)
    out = {"kernels": kernels, "converged_s": time.perf_counter() - t0, "iterations": n_curr + rec.iteration}
    a = backend.asnumpy
    q = evaluate(a(rec.object), a(rec.probe2d), a(rec.illumination()), rec.layout,
                 rec.probe_op, ds.ground_truth, ds.ground_truth_attrs)
    out.update({k: q[k] for k in ("object_error", "probe_error", "strain_rms_error")})
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--floor-only":         # cpu_floors' child process
        lib, n3, n1, n2, shear, repeats = sys.argv[2:8]
        print(floor_only(lib, (int(n3), int(n1), int(n2)), float(shear), int(repeats)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["small", "paper"], help="presets to simulate, or 'paper'")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--paper-positions", type=int, default=4, help="positions timed at the paper's box")
    ap.add_argument("--scan-dir", default=None, help="read PRESET.h5 from here instead of simulating")
    ap.add_argument("--converge", action="store_true", help="also time a converged run (simulated cases)")
    ap.add_argument("--json", default="benchmarks/results/bench_engine.json")
    a = ap.parse_args()
    backend = get_backend(a.device)
    rows, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases:
            geo, frames, t, mask, ds = load_case(case, tmp, a.scan_dir, a.paper_positions)
            row = {"case": case, "device": backend.device}
            for kernels in ("reference", "fast"):
                for mode in ("sequential", "batched"):
                    cfg = ReconConfig(mode=mode, kernels=kernels, upsampling=geo.upsampling).scaled(100)
                    rec = Reconstructor(geo, frames, t, mask, config=cfg, backend=backend)
                    rec.step()                                # warm-up (plans, compiled kernels, caches)
                    n = len(rec.active_positions())
                    row[f"ms_{kernels}_{mode}"] = iteration_time(rec, a.repeats) / n * 1e3
            row.update(box=list(rec.layout.box_shape), positions=n)
            if backend.device == "cpu":
                floors = cpu_floors(rec, a.repeats)
            else:
                floors = {"cufft": fft_floor(rec, 1, a.repeats) / n}
            row["floor_ms"] = {k: v * 1e3 for k, v in floors.items()}
            row["best_floor"] = min(floors, key=floors.get)
            best = row["floor_ms"][row["best_floor"]]
            for k in ("reference", "fast"):
                row[f"x_best_{k}"] = row[f"ms_{k}_sequential"] / best
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if a.converge and ds is not None and "density" in ds.ground_truth:
                for kernels in ("reference", "fast"):
                    runs.append({"case": case, **converge(ds, backend, kernels)})
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    libs = [lib for lib in FFT_LIBRARIES if any(lib in r["floor_ms"] for r in rows)] or ["cufft"]
    hdr = (f"{'case':<6} {'box':>15} {'pos':>4} | {'reference ms/pos':>16} {'fast ms/pos':>12} | "
           + " ".join(f"{lib + ' floor':>12}" for lib in libs) + f" | {'x best: ref':>11} {'fast':>6}")
    print(f"\nms per position (median of {a.repeats} iterations, sequential; batched in the JSON), {backend.device}, "
          f"{os.cpu_count()} CPUs")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['case']:<6} {str(tuple(r['box'])):>15} {r['positions']:>4} | {r['ms_reference_sequential']:>16.2f} "
              f"{r['ms_fast_sequential']:>12.2f} | "
              + " ".join(f"{r['floor_ms'].get(lib, float('nan')):>12.2f}" for lib in libs)
              + f" | {r['x_best_reference']:>11.2f} {r['x_best_fast']:>6.2f}")
    if runs:
        print(f"\n{'case':<6} {'kernels':<10} {'iterations':>10} {'seconds':>8} {'object':>7} {'probe':>7} {'eps rms':>9}")
        for r in runs:
            print(f"{r['case']:<6} {r['kernels']:<10} {r['iterations']:>10} {r['converged_s']:>8.1f} "
                  f"{r['object_error']:>7.4f} {r['probe_error']:>7.4f} {r['strain_rms_error']:>9.3e}")
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"machine": platform.node(), "cpus": os.cpu_count(), "rows": rows, "converged": runs}, f, indent=2)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

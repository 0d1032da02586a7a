"""Engine speed: seconds per iteration beside the FFT-only floor, and time to a converged result.

For each preset, a scan is simulated (or read from ``--scan-dir``), then:
- ``s/iter``: median wall time of one joint iteration (every position once), sequential and batched;
- ``FFT floor``: median time of the FFTs alone for the same work (one forward and one adjoint
  sheared transform of the box per position, the same backend and batching);
- ``converged``: wall time of the angle curriculum and the compressed schedule (``SCHEDULE``
  joint + ML iterations), with the quality reached against the ground truth.

    .venv/bin/python benchmarks/bench_engine.py --presets tiny small --device cpu
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

from bp_plugin.backend import get_backend
from bp_plugin.dataset import read_dataset
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.curriculum import angle_curriculum
from bp_plugin.recon.engine import Reconstructor
from bp_plugin.recon.results import evaluate
from sim_devices.experiment import simulate_to_file

SCHEDULE = {"tiny": (60, 20), "small": (60, 20), "paper": (1000, 500)}
# iterations per angle of the angle curriculum before the schedule (bp_plugin/recon/curriculum.py):
# the schedule alone leaves `small` at object error 0.71; 0 = none (the paper's schedule as is)
CURRICULUM = {"tiny": 5, "small": 10, "paper": 0}


def _sync(backend):
    if backend.device == "gpu":
        backend.xp.cuda.Device().synchronize()


def fft_floor(rec, batch: int, repeats: int) -> float:
    """Median seconds of the sheared FFT pairs of one iteration (positions x (forward + adjoint))."""
    xp, backend = rec.backend.xp, rec.backend
    n_p = int(rec.measured.any(0).sum())
    box = xp.ones((batch,) + rec.layout.box_shape, np.complex64)
    times = []
    for _ in range(repeats):
        _sync(backend)
        t0 = time.perf_counter()
        for _ in range(0, n_p, batch):
            rec.fft.adjoint(rec.fft.forward(box))
        _sync(backend)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def iteration_time(rec, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(rec.backend)
        t0 = time.perf_counter()
        rec.step()
        _sync(rec.backend)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan-dir", default=None, help="read PRESET.h5 from here instead of simulating")
    ap.add_argument("--no-converge", action="store_true", help="skip the time-to-converged run")
    ap.add_argument("--angle-curriculum", type=int, default=None, metavar="N",
                    help="iterations per angle before the schedule (default: per preset, %s)" % CURRICULUM)
    ap.add_argument("--json", default="benchmarks/results/bench_engine.json")
    a = ap.parse_args()
    backend = get_backend(a.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in a.presets:
            path = Path(a.scan_dir, f"{preset}.h5") if a.scan_dir else Path(tmp, f"{preset}.h5")
            if not path.exists():
                simulate_to_file(path, preset, progress=False)
            ds = read_dataset(path)
            row = {"preset": preset, "device": backend.device}
            for mode in ("sequential", "batched"):
                rec = Reconstructor(ds.geometry, ds.frames, ds.translations_m, ds.mask,
                                    config=ReconConfig(mode=mode).scaled(100), backend=backend)
                rec.step()                                    # warm-up (FFT plans, caches)
                row[f"s_per_iter_{mode}"] = iteration_time(rec, a.repeats)
                batch = rec.config.batch_size if mode == "batched" else 1
                row[f"fft_floor_{mode}"] = fft_floor(rec, batch, a.repeats)
                row[f"ratio_{mode}"] = row[f"s_per_iter_{mode}"] / row[f"fft_floor_{mode}"]
            row["box"] = list(rec.layout.box_shape)
            row["positions"] = rec.layout.n_positions
            if not a.no_converge:
                joint, ml = SCHEDULE[preset]
                cfg = ReconConfig().scaled(joint)
                cfg.ml_iterations = ml
                rec = Reconstructor(ds.geometry, ds.frames, ds.translations_m, ds.mask, config=cfg, backend=backend)
                per_angle = CURRICULUM[preset] if a.angle_curriculum is None else a.angle_curriculum
                t0 = time.perf_counter()
                row["curriculum_iterations"] = angle_curriculum(rec, per_angle) if per_angle else 0
                rec.run()
                _sync(backend)
                row["converged_s"] = time.perf_counter() - t0
                row["iterations"] = rec.iteration
                if "density" in ds.ground_truth:
                    a_ = backend.asnumpy
                    q = evaluate(a_(rec.object), a_(rec.probe2d), a_(rec.illumination()), rec.layout,
                                 (rec.probe_op.p1_m, rec.probe_op.r2_m), ds.ground_truth, ds.ground_truth_attrs)
                    row.update({k: q[k] for k in ("object_error", "probe_error", "strain_rms_error",
                                                   "tilt_rms_error_rad")})
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    hdr = (f"{'preset':<6} {'dev':<4} {'box':>14} {'pos':>4} {'seq s/it':>9} {'FFT floor':>9} {'x':>5} "
           f"{'bat s/it':>9} {'FFT floor':>9} {'x':>5} {'iterations':>10} {'converged s':>11} {'obj err':>8} {'eps rms':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['preset']:<6} {r['device']:<4} {str(tuple(r['box'])):>14} {r['positions']:>4} "
              f"{r['s_per_iter_sequential']:>9.3f} {r['fft_floor_sequential']:>9.3f} {r['ratio_sequential']:>5.1f} "
              f"{r['s_per_iter_batched']:>9.3f} {r['fft_floor_batched']:>9.3f} {r['ratio_batched']:>5.1f} "
              f"{str(r.get('curriculum_iterations', '-')) + '+' + str(r.get('iterations', '-')):>10} "
              f"{r.get('converged_s', float('nan')):>11.1f} {r.get('object_error', float('nan')):>8.3f} "
              f"{r.get('strain_rms_error', float('nan')):>8.2e}")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"machine": platform.node(), "cpus": os.cpu_count(), "results": rows}, f, indent=2)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

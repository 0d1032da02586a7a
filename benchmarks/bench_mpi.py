"""Strong scaling of ``bp-plugin reconstruct`` over MPI ranks on this machine's CPU (issue 19).

For each case, the same scan file (a preset simulated once) is reconstructed by the command line
as a user runs it (default up-sampling, angle curriculum and the ``short`` schedule), with the cores
shared among the ranks (``NUMBA_NUM_THREADS`` and ``BP_FFT_WORKERS`` = cores / ranks):

- ``ranks x threads``: 1 x all cores (one process, as by default), 1 x 1 (the serial yardstick),
  and N x cores / N for each N of ``--ranks`` above 1;
- ``s/it``: median seconds of a joint iteration; ``merge``: of it, the ranks' merge (snapshot,
  local illumination, the sums across ranks: where the communication goes);
- ``speed-up`` against 1 x 1, ``efficiency`` = speed-up / (ranks x threads);
- the quality reached against the ground truth (object, probe, eps_zz errors).

    .venv/bin/python benchmarks/bench_mpi.py --preset small --ranks 2
Writes the table as JSON (``--json``, default ``out/bench_mpi.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bp_plugin.recon.mpi import mpiexec  # noqa: E402


def run(scan: Path, out: Path, ranks: int, threads: int, schedule: str, device: str, iterations=None) -> dict:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "BP_FFT_WORKERS": str(threads),
           "PYTHONPATH": str(ROOT)}
    # the module, not the entry point: the GPU machine runs the project from its tree (PYTHONPATH)
    cmd = [sys.executable, "-m", "bp_plugin.cli", "reconstruct", str(scan), "--out", str(out / "result.h5"),
           "--schedule", schedule, "--device", device, "--no-figures", "--no-progress"]
    if iterations:                              # speed only: no curriculum, no ML
        cmd += ["--iterations", str(iterations), "--ml-iterations", "0", "--angle-curriculum", "0"]
    if ranks > 1:
        launcher = mpiexec()
        if not launcher:
            raise SystemExit("mpiexec not found: pip install -e '.[mpi]' (make install does)")
        cmd = [launcher, "-n", str(ranks)] + cmd
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--scan", type=Path, default=None, help="a scan file instead of simulating --preset")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2])
    ap.add_argument("--schedule", default="short")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--iterations", type=int, default=None,
                    help="speed only: this many joint iterations, no curriculum and no ML (quality not comparable)")
    ap.add_argument("--json", type=Path, default=ROOT / "out" / "bench_mpi.json")
    a = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = a.scan
        if scan is None:
            from sim_devices.experiment import simulate_to_file

            scan = tmp / f"{a.preset}.h5"
            simulate_to_file(scan, a.preset, seed=0, progress=False, device=a.device)
        cases = [(1, cores), (1, 1)] + [(n, max(1, cores // n)) for n in a.ranks if n > 1]
        rows = []
        for ranks, threads in dict.fromkeys(cases):
            m = run(scan, tmp / f"r{ranks}x{threads}", ranks, threads, a.schedule, a.device, a.iterations)
            rows.append({"ranks": ranks, "threads": threads, "seconds": m["seconds"],
                         "s_per_iteration": m["seconds_per_iteration"],
                         "merge_s_per_iteration": m.get("merge_seconds_per_iteration", 0.0),
                         **{k: m.get(k) for k in ("object_error", "probe_error", "strain_rms_error", "iterations")}})
            print(f"  {ranks} x {threads}: {m['seconds']:.1f} s", flush=True)
    base = next(r for r in rows if r["ranks"] == 1 and r["threads"] == 1)["s_per_iteration"]
    print(f"\n{a.preset}, {a.schedule} schedule, {cores} cores ({platform.processor() or platform.machine()})")
    print(f"{'ranks x threads':>16} {'s/it':>7} {'merge':>7} {'speed-up':>9} {'efficiency':>10} "
          f"{'object':>7} {'probe':>7} {'eps_zz':>8}")
    for r in rows:
        r["speedup"] = base / r["s_per_iteration"]
        r["efficiency"] = r["speedup"] / (r["ranks"] * r["threads"])
        print(f"{r['ranks']:>8} x {r['threads']:<5} {r['s_per_iteration']:7.3f} {r['merge_s_per_iteration']:7.3f} "
              f"{r['speedup']:9.2f} {r['efficiency']:10.2f} {r['object_error'] or float('nan'):7.3f} "
              f"{r['probe_error'] or float('nan'):7.3f} {r['strain_rms_error'] or float('nan'):8.2e}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"preset": a.preset, "schedule": a.schedule, "iterations": a.iterations,
                                  "cores": cores, "rows": rows}, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

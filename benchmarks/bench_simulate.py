"""Time and peak memory of `bp-plugin simulate` per preset; a table on stdout and JSON on disk.

Each preset runs in its own process (so peak RSS is that preset's). A preset too slow for this
machine can be timed on its first N positions (``--positions paper=4``) and extrapolated: the
cost per position is flat across the raster (the box and the sample evaluation do not change).

    .venv/bin/python benchmarks/bench_simulate.py --presets tiny small paper --positions paper=4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, resource, time
from sim_devices.experiment import simulate_to_file
preset, path, n = sys.argv[1], sys.argv[2], (None if sys.argv[3] == "all" else int(sys.argv[3]))
info = simulate_to_file(path, preset, progress=False, max_positions=n, overwrite=True)
info["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(info, default=list))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--positions", nargs="*", default=[], help="PRESET=N: time only the first N positions")
    ap.add_argument("--repeat", type=int, default=1, help="runs per preset (the median is reported)")
    ap.add_argument("--json", default="benchmarks/results/bench_simulate.json")
    a = ap.parse_args()
    limit = dict(p.split("=") for p in a.positions)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in a.presets:
            runs = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", CHILD, preset, os.path.join(tmp, f"{preset}.h5"),
                                      limit.get(preset, "all")], check=True, capture_output=True, text=True)
                info = json.loads(out.stdout.strip().splitlines()[-1])
                info["wall_s"] = time.perf_counter() - t0
                runs.append(info)
            runs.sort(key=lambda r: r["seconds_per_position"])
            r = runs[len(runs) // 2]
            full = r["seconds_per_position"] * r["n_positions_total"]
            rows.append({"preset": preset, "positions_timed": int(limit.get(preset, r["n_positions_total"])),
                         "positions_total": r["n_positions_total"], "frames": r["n_frames"],
                         "box_shape": r["box_shape"], "s_per_position": r["seconds_per_position"],
                         "seconds_measured": r["seconds"], "seconds_full_scan_est": full,
                         "peak_rss_MiB": r["peak_rss_bytes"] / 2 ** 20, "device": r["device"]})
    hdr = f"{'preset':<7} {'timed/total pos':>15} {'fine box (n3,n1,n2)':>21} {'s/pos':>7} {'run s':>7} {'full scan s':>11} {'peak RSS MiB':>12}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['preset']:<7} {str(r['positions_timed']) + '/' + str(r['positions_total']):>15} "
              f"{str(tuple(r['box_shape'])):>21} {r['s_per_position']:>7.3f} {r['seconds_measured']:>7.1f} "
              f"{r['seconds_full_scan_est']:>11.0f} {r['peak_rss_MiB']:>12.0f}")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                   "results": rows}, f, indent=2)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

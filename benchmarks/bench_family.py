"""Reconstruction quality over a family of simulated experiments, with the defaults.

Each member (``sim_devices/family.py``: reflection, energy, crop parity, foil tilt and thickness,
probe aberrations and tails, frames integrated over the rocking step, flux, background, file axis
orientation, all drawn from documented ranges) is simulated to a scan file holding only what a
user knows, then reconstructed by ``bp-plugin reconstruct``'s code path with its defaults and
``--iterations 60 --ml-iterations 20`` (the tests' schedule). The table gives, per member, the
object, probe and strain errors, the strain floor (a perfect reconstruction at that voxel size,
see ``bp_plugin/recon/results.py``), the truth's strain RMS, and what the defaults chose
(up-sampling, slab tilt); then the spread. The ``tiny`` preset is the first row, for reference.

    .venv/bin/python benchmarks/bench_family.py --members 6 --json out/bench_family.json
    .venv/bin/python benchmarks/bench_family.py --members 6 --state-tilt   # the user states the tilt
    .venv/bin/python benchmarks/bench_family.py --seeds 4,5,6 --follow-advice   # warned members, more angles

``--follow-advice`` does what the set-up's thin-foil warning says: a member whose foil spans under
2 voxels along the normal the run knows (the stated tilt's with ``--state-tilt``, else the file's, else Q) is
measured at the warning's number of angles, same rocking step (docs/family.md).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bp_plugin.recon.layout import angles_for_voxels_across, slab_orientation, voxels_across
from bp_plugin.recon.run import ReconstructOptions, reconstruct_file
from sim_devices.experiment import simulate_to_file
from sim_devices.family import draw_member, member_truth
from sim_devices.presets import get_preset

COLUMNS = ("object_error", "probe_error", "probe_error_section", "probe_lit_fraction", "strain_rms_error_analytic", "strain_floor_rms", "strain_truth_rms",
           "tilt_rms_error_rad", "field_of_view_fraction")


def run_member(preset, folder: Path, iterations: int, ml: int, state_tilt: bool = False) -> dict:
    scan = folder / f"{preset.name}.h5"
    t0 = time.perf_counter()
    simulate_to_file(scan, preset, seed=0, progress=False, overwrite=True)
    t_sim = time.perf_counter() - t0
    m = reconstruct_file(scan, folder / preset.name / "result.h5",
                         ReconstructOptions(iterations=iterations, ml_iterations=ml, progress=False, figures=False,
                                            sample_tilt_deg=tuple(preset.sample_tilt_deg) if state_tilt else None))
    return {**{k: m.get(k, float("nan")) for k in COLUMNS}, "upsampling_used": m.get("upsampling"),
            "slab_tilt_used_deg": m.get("slab_tilt_deg"), "slab_tilt_source": m.get("slab_tilt_source"),
            "seconds_simulate": t_sim, "seconds_reconstruct": m["seconds"], "warnings": m.get("warnings", []),
            "voxels_across": voxels_across(preset.geometry, preset.sample_tilt_deg),
            "n_angles": preset.geometry.n_angles, **member_truth(preset)}


def follow_advice(preset, state_tilt: bool):
    """The member measured at the thin-foil warning's number of angles when it is warned, else as it
    is: the normal is the one the run will know (``slab_orientation``, as the engine chooses it), and
    a foil already 2 voxels across needs no more angles than it has."""
    geo = preset.geometry
    tilt, _, _ = slab_orientation(tuple(preset.sample_tilt_deg) if state_tilt else None, geo.sample_tilt_deg)
    need = angles_for_voxels_across(geo, tilt)
    return preset if need is None else replace(preset, geometry=replace(geo, n_angles=max(need, geo.n_angles)))


def fmt(v, spec):
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=6, help="family members (seeds 0..N-1)")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--ml-iterations", type=int, default=20)
    ap.add_argument("--state-tilt", action="store_true",
                    help="pass each member's true foil tilt as the user's --sample-tilt (default: unknown)")
    ap.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")],
                    help="comma-separated member seeds instead of 0..members-1 (e.g. 4,5,6)")
    ap.add_argument("--follow-advice", action="store_true",
                    help="measure each member the thin-foil warning names at the angles it advises")
    ap.add_argument("--json", type=Path, default=Path("out/bench_family.json"))
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        presets = [get_preset("tiny")] + [draw_member(s) for s in (a.seeds or range(a.members))]
        if a.follow_advice:
            presets = [follow_advice(p, a.state_tilt) for p in presets]
        for p in presets:
            print(f"{p.name}: {p.description}", file=sys.stderr, flush=True)
            rows.append(run_member(p, Path(tmp), a.iterations, a.ml_iterations, a.state_tilt))
    head = (f"{'member':<10} {'obj err':>8} {'probe err':>9} {'section':>7} {'lit':>4} {'eps err*':>8} {'eps floor':>9} {'eps truth':>9} "
            f"{'tilt err':>8} {'fov':>5} {'up x':>4} {'need':>4} {'tilt used (true)':>24} {'across':>6} {'ang':>3} {'s':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        used = r["slab_tilt_used_deg"] or [float("nan")] * 2
        true = r["sample_tilt_deg"]
        tilts = f"({used[0]:.1f}, {used[1]:.1f}) ({true[0]:.1f}, {true[1]:.1f})"
        print(f"{r['name']:<10} {fmt(r['object_error'], '8.3f')} {fmt(r['probe_error'], '9.3f')} "
              f"{fmt(r['probe_error_section'], '7.3f')} {fmt(r['probe_lit_fraction'], '4.2f')} "
              f"{fmt(r['strain_rms_error_analytic'], '8.2e')} {fmt(r['strain_floor_rms'], '9.2e')} "
              f"{fmt(r['strain_truth_rms'], '9.2e')} {fmt(r['tilt_rms_error_rad'], '8.2e')} "
              f"{fmt(r['field_of_view_fraction'], '5.2f')} {str(r['upsampling_used']):>4} "
              f"{r['upsampling_needed_for_extent']:>4} "
              f"{tilts:>24} {r['voxels_across']:6.2f} {r['n_angles']:3d} "
              f"{r['seconds_reconstruct']:5.1f}")
    fam = rows[1:]
    if fam:
        print("-" * len(head))
        for key in ("object_error", "probe_error", "probe_error_section", "strain_rms_error_analytic"):
            vals = [r[key] for r in fam if not math.isnan(r[key])]
            if vals:
                print(f"{key:<18} median {statistics.median(vals):.3g}  min {min(vals):.3g}  max {max(vals):.3g}  "
                      f"(tiny {rows[0][key]:.3g}; {len(fam) - len(vals)} NaN)")
        half = sum(1 for r in fam if r["strain_rms_error_analytic"] <= 0.5 * r["strain_truth_rms"])
        print(f"members with eps_zz error <= half the truth's RMS: {half} of {len(fam)}")
    print("probe err: where the beam meets the crystal (weighted by the true object's coverage of each beam line); "
          "section: the whole section, parts the data never see included; lit: share of the probe's energy on lines "
          "that meet the crystal")
    print("across: reconstruction voxels across the foil along its true normal (under 2: warned at set-up); "
          "ang: rocking angles measured")
    print("* eps_zz against the analytic strain, one reconstruction voxel away from surfaces and cores; floor: "
          "the truth averaged over the reconstruction's voxels, same mask; truth: the analytic strain's RMS")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"iterations": a.iterations, "ml_iterations": a.ml_iterations,
                                 "follow_advice": a.follow_advice, "state_tilt": a.state_tilt, "rows": rows},
                                 indent=2, default=str))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

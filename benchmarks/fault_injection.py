"""Fault injection against real processes: kill -9 the reconstructor at every stage of a run, with
and without its sender, lose a stop message, stream to nobody, send unsafe run uids; a table of
case, expected, observed and frames lost, repeated ``--repeats`` times (tests/test_receipts.py
runs each case once).

    .venv/bin/python benchmarks/fault_injection.py --repeats 10

Every case uses the ``tiny`` preset streamed by ``send_dataset`` (or a hand-driven
:class:`~streaming.sender.FrameSender`) to ``bp-plugin reconstructor`` child processes on loopback.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bp_plugin.dataset import read_dataset  # noqa: E402
from streaming import protocol  # noqa: E402
from streaming.processes import free_tcp_address, start_reconstructor  # noqa: E402
from streaming.sender import FrameSender, send_dataset  # noqa: E402

QUICK = ["--iterations", "6", "--ml-iterations", "2", "--publish-interval", "0.5", "--checkpoint-interval", "1"]


def _kill(rp) -> None:
    os.kill(rp.process.pid, signal.SIGKILL)
    rp.process.wait(10)


def _finish(work: Path, address: str, args, uid: str) -> dict:
    """A successor on the same address and work folder; waits for its one run."""
    rp2 = start_reconstructor(work, address=address, extra_args=args, max_runs=1)
    try:
        rp2.process.wait(300)
    finally:
        rp2.stop()
    out = {"log": rp2.log_tail(20000), "result": (work / uid / "result.h5").exists()}
    metrics = work / uid / "metrics.json"
    out["counters"] = json.loads(metrics.read_text())["counters"] if metrics.exists() else {}
    return out


def _outcome(expected_frames: int, fin: dict, receipt: dict | None = None) -> dict:
    measured = fin["counters"].get("frames_measured", 0)
    ok = fin["result"] and (receipt is None or receipt["confirmed"])
    return {"ok": bool(ok), "observed": ("final" if fin["result"] else "no result")
            + ("" if receipt is None else ", confirmed" if receipt["confirmed"] else ", unconfirmed"),
            "frames_lost": expected_frames - measured, "resent": (receipt or {}).get("resent", 0)}


def kill_mid_run(scan, work: Path, fraction: float, rate: float = 60.0) -> dict:
    """kill -9 at ``fraction`` of the frames while ``send_dataset`` keeps streaming; a successor."""
    rp = start_reconstructor(work, extra_args=QUICK)
    n = int(read_dataset(scan).measured.sum())
    result: dict = {}
    th = threading.Thread(target=lambda: result.update(
        send_dataset(scan, rp.address, rate=rate, progress=False, confirm_timeout_s=120)), daemon=True)
    th.start()
    time.sleep(fraction * n / rate)
    _kill(rp)
    time.sleep(1.0)
    # the successor runs while the sender finishes and asks for its receipt
    rp2 = start_reconstructor(work, address=rp.address, extra_args=QUICK, max_runs=1)
    try:
        th.join(300)
        rp2.process.wait(300)
    finally:
        rp2.stop()
    uid = result["run_uid"]
    metrics = work / uid / "metrics.json"
    fin = {"result": (work / uid / "result.h5").exists(),
           "counters": json.loads(metrics.read_text())["counters"] if metrics.exists() else {}}
    return _outcome(n, fin, result["receipt"])


def _spool_then(scan, work: Path, n_first: int, uid: str, args=QUICK):
    """A reconstructor that has spooled the start and ``n_first`` frames; returns (process, sender, points)."""
    rp = start_reconstructor(work, extra_args=args)
    ds = read_dataset(scan)
    pts = [tuple(int(v) for v in p) for p in np.argwhere(ds.measured)]
    s = FrameSender(rp.address, timeout_s=5.0)
    s.send(protocol.encode_start(uid, s.next_seq(uid), ds.geometry.to_dict(), ds.translations_m, len(pts)))
    s.send(protocol.encode_mask(uid, s.next_seq(uid), ds.mask))
    frames = [protocol.encode_frame(uid, 0, np.asarray(ds.frames[ia, ip], np.uint32), frame_index=k,
                                    angle_index=ia, position_index=ip) for k, (ia, ip) in enumerate(pts)]
    for k in range(n_first):
        s.send(_reseq(frames[k], s.next_seq(uid)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (work / uid / "checkpoint.npz").exists():
        time.sleep(0.1)
    return rp, s, pts, frames


def _reseq(parts, seq):
    h = json.loads(parts[0])
    h["seq"] = seq
    return [json.dumps(h, separators=(",", ":")).encode(), parts[1]]


def lost_stop(scan, work: Path) -> dict:
    """The last frames and the stop sit in a frozen (SIGSTOP) process that is then killed."""
    uid = "lost-stop"
    rp, s, pts, frames = _spool_then(scan, work, 100, uid)
    os.kill(rp.process.pid, signal.SIGSTOP)
    for k in range(100, len(pts)):
        s.send(_reseq(frames[k], s.next_seq(uid)))
    s.send(protocol.encode_stop(uid, s.next_seq(uid), exit_status="success", n_frames=len(pts),
                                sources=[{"format": "bp-dataset", "file": str(scan), "frames": [list(p) for p in pts]}]))
    time.sleep(0.5)
    _kill(rp)
    rp2 = start_reconstructor(work, address=rp.address, extra_args=QUICK, max_runs=1)
    try:
        receipt = s.confirm(uid, 120)
        rp2.process.wait(300)
    finally:
        s.close(0)
        rp2.stop()
    metrics = work / uid / "metrics.json"
    fin = {"result": (work / uid / "result.h5").exists(),
           "counters": json.loads(metrics.read_text())["counters"] if metrics.exists() else {}}
    return _outcome(len(pts), fin, receipt)


def orphaned(scan, work: Path) -> dict:
    """Reconstructor and sender both gone after 120 frames: the successor adopts the spool."""
    uid = "orphan-run"
    rp, s, pts, _ = _spool_then(scan, work, 120, uid)
    s.close(0)
    _kill(rp)
    fin = _finish(work, rp.address, QUICK + ["--idle-timeout", "3"], uid)
    out = _outcome(120, fin)              # only 120 were ever sent: those must all be there
    out["observed"] += " (adopted)" if "adopted" in fin["log"] else " (not adopted)"
    return out


def final_phase(scan, work: Path) -> dict:
    """kill -9 during the final schedule (the stop came, the result not yet written)."""
    rp = start_reconstructor(work, extra_args=["--iterations", "400", "--ml-iterations", "50"])
    r = send_dataset(scan, rp.address, progress=False, confirm_timeout_s=60)
    time.sleep(2.0)
    _kill(rp)
    fin = _finish(work, rp.address, QUICK, r["run_uid"])
    return _outcome(int(read_dataset(scan).measured.sum()), fin, r["receipt"])


def abandoned_then_newer(scan, work: Path) -> dict:
    """A sender dies after 40 frames of run A (no stop); run B follows at once: B is confirmed, A ends
    after the idle timeout with its 40 frames, then B is reconstructed whole."""
    rp, s, _, _ = _spool_then(scan, work, 40, "abandoned-run", QUICK + ["--idle-timeout", "5"])
    s.close(0)
    try:
        r = send_dataset(scan, rp.address, progress=False, confirm_timeout_s=60)
        uids = ("abandoned-run", r["run_uid"])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not all((work / u / "metrics.json").exists() for u in uids):
            time.sleep(0.5)
    finally:
        rp.stop()
    got = [json.loads((work / u / "metrics.json").read_text())["counters"]["frames_measured"]
           if (work / u / "metrics.json").exists() else 0 for u in uids]
    n_b = int(read_dataset(scan).measured.sum())
    ok = r["receipt"]["confirmed"] and got == [40, n_b]
    return {"ok": bool(ok), "observed": f"A final {got[0]}/40, B final {got[1]}/{n_b}"
            + (", confirmed" if r["receipt"]["confirmed"] else ", unconfirmed"),
            "frames_lost": (40 - got[0]) + (n_b - got[1]), "resent": r["receipt"].get("resent", 0)}


def nobody_listens(scan, work: Path) -> dict:
    r = send_dataset(scan, free_tcp_address(), progress=False, confirm_timeout_s=2.0)
    ok = not r["receipt"]["confirmed"] and "no reconstructor answered" in r["receipt"]["reason"]
    return {"ok": ok, "observed": "refused: " + r["receipt"]["reason"][:60] + "...", "frames_lost": 0, "resent": 0}


CASES = {
    "kill -9 at 20 %, sender on": ("final, confirmed", lambda scan, w: kill_mid_run(scan, w, 0.2)),
    "kill -9 at 50 %, sender on": ("final, confirmed", lambda scan, w: kill_mid_run(scan, w, 0.5)),
    "kill -9 at 90 %, sender on": ("final, confirmed", lambda scan, w: kill_mid_run(scan, w, 0.9)),
    "stop lost in a killed process": ("final, confirmed (stop re-sent)", lost_stop),
    "kill -9 mid-run, sender gone": ("final (adopted)", orphaned),
    "kill -9 in the final phase": ("final, confirmed", final_phase),
    "stream with nobody listening": ("refused, exit 1", nobody_listens),
    "sender dies, a newer run follows": ("both final, newer confirmed", abandoned_then_newer),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES), metavar="CASE")
    ap.add_argument("--json", default="benchmarks/results/fault_injection.json")
    a = ap.parse_args()
    from sim_devices.experiment import simulate_to_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scan = Path(tmp, "tiny.h5")
        simulate_to_file(scan, "tiny", progress=False)
        for name in a.cases:
            expected, fn = CASES[name]
            tries = []
            for i in range(a.repeats):
                try:
                    tries.append(fn(scan, Path(tmp, f"{len(rows)}-{i}")))
                except Exception as exc:            # a case that breaks is a finding, in the table
                    tries.append({"ok": False, "observed": f"{type(exc).__name__}: {exc}"[:80], "frames_lost": -1,
                                  "resent": 0})
                print(json.dumps({"case": name, **tries[-1]}), file=sys.stderr, flush=True)
            rows.append({"case": name, "expected": expected, "tries": tries,
                         "passed": sum(t["ok"] for t in tries), "frames_lost": sum(max(t["frames_lost"], 0) for t in tries)})
    hdr = f"{'case':<32} {'expected':<32} {'observed (last try)':<34} {'passed':>7} {'lost':>5}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['case']:<32} {r['expected']:<32} {r['tries'][-1]['observed'][:34]:<34} "
              f"{r['passed']:>3}/{len(r['tries']):<3} {r['frames_lost']:>5}")
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    Path(a.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {a.json}")
    return 0 if all(r["passed"] == len(r["tries"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection against real processes: kill -9 the reconstructor at every stage of a run, with
and without its sender, lose a stop message, stream to nobody, abandon a run, send garbage,
duplicates, reordered and bad frames, unsafe run uids and absurd starts, a finished run again, take
Tiled away at a run's end; a table of
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


def _push(address: str):
    import zmq

    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(address)
    return sock


def _wait_final(rp, uid: str, timeout: float = 300.0) -> bool:
    """Until the reconstructor logs run ``uid`` final (result, figures and publication attempt done:
    metrics.json is written before the figures, so its presence says less)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"run {uid[:8]}: final" in rp.log_tail(200000):
            return True
        time.sleep(0.5)
    return False


def hostile_stream(scan, work: Path) -> dict:
    """One run through a raw PUSH socket: duplicates, garbage, ten frames reversed, three never sent
    (recovered from the scan file at the stop), a frame of the wrong shape and one of NaN."""
    ds = read_dataset(scan)
    rp = start_reconstructor(work, extra_args=QUICK, max_runs=1)
    uid, push = "hostile-run", _push(rp.address)
    pts = [(ia, ip) for ia in range(ds.measured.shape[0]) for ip in range(ds.measured.shape[1])]
    n = len(pts)
    try:
        push.send_multipart(protocol.encode_start(uid, 0, ds.geometry.to_dict(), ds.translations_m, n))
        skipped = {7, 8, n // 3}
        order = [k for k in range(n) if k not in skipped]
        order[10:20] = order[10:20][::-1]
        garbage = [[b"not json at all"], [b'{"protocol": "bp-stream", "version": 1, "kind": "frame"}'], [b"\0" * 64]]
        for m, k in enumerate(order):
            ia, ip = pts[k]
            msg = protocol.encode_frame(uid, k + 1, np.asarray(ds.frames[ia, ip], np.uint32), frame_index=k,
                                        angle_index=ia, position_index=ip)
            push.send_multipart(msg)
            if m % 50 == 0:
                push.send_multipart(msg)                                    # duplicate
                push.send_multipart(garbage[(m // 50) % len(garbage)])
        push.send_multipart(protocol.encode_frame(uid, n + 1, np.zeros((5, 5), np.uint32), frame_index=n,
                                                  angle_index=0, position_index=0))
        push.send_multipart(protocol.encode_frame(uid, n + 2, np.full(ds.geometry.crop, np.nan, np.float32),
                                                  frame_index=n + 1, angle_index=0, position_index=1))
        push.send_multipart(protocol.encode_stop(uid, n + 3, exit_status="success", n_frames=n + 2, sources=[
            {"format": "bp-dataset", "file": str(scan), "frames": [list(p) for p in pts]}]))
        rp.process.wait(300)
    finally:
        push.close()
        rp.stop()
    metrics = work / uid / "metrics.json"
    c = json.loads(metrics.read_text())["counters"] if metrics.exists() else {}
    ok = (c.get("frames_measured") == n and c.get("recovered") == len(skipped) and c.get("rejected") == 2
          and c.get("duplicates", 0) > 0 and c.get("out_of_order", 0) > 0)
    return {"ok": bool(ok), "observed": (f"final {c.get('frames_measured')}/{n}, dup {c.get('duplicates')}, rej "
                                         f"{c.get('rejected')}, rec {c.get('recovered')}") if c else "no result",
            "frames_lost": n - int(c.get("frames_measured", 0)), "resent": 0}


def refused_starts(scan, work: Path) -> dict:
    """Run uids that would name folders outside the work folder, and starts beyond reason (a crop of
    20000 x 20000, NaN positions, a detector at infinity); then an honest run."""
    ds = read_dataset(scan)
    geo, t = ds.geometry.to_dict(), ds.translations_m
    rp = start_reconstructor(work, extra_args=QUICK)
    push = _push(rp.address)
    try:
        base = json.loads(protocol.encode_start("ok", 0, geo, t, 1)[0])
        bad = [{"run_uid": ""}, {"run_uid": "../escaped"}, {"run_uid": "huge", "geometry": {**geo, "crop": [20000, 20000]}},
               {"run_uid": "nan", "translations_m": np.where(np.arange(t.size).reshape(t.shape) == 4, np.nan, t).tolist()},
               {"run_uid": "far", "geometry": {**geo, "distance_m": float("inf")}}]
        for b in bad:
            push.send(json.dumps({**base, **b}, separators=(",", ":")).encode())
        r = send_dataset(scan, rp.address, progress=False, confirm_timeout_s=120)
        deadline = time.monotonic() + 300
        while not (work / r["run_uid"] / "metrics.json").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        push.close()
        rp.stop()
    outside = (work.parent / "escaped").exists() or (work / "start.json").exists()
    spooled = [u for u in ("huge", "nan", "far") if (work / u / "frames.npy").exists()]
    log = rp.log_tail(200000)
    refused = log.count("malformed message skipped")
    ok = (r["receipt"]["confirmed"] and (work / r["run_uid"] / "result.h5").exists() and not outside and not spooled
          and refused == len(bad))
    return {"ok": bool(ok), "observed": f"{refused} of {len(bad)} refused in the log, nothing spooled"
            + (", honest run final" if ok else f"; outside={outside} spooled={spooled}"), "frames_lost": 0, "resent": 0}


def finished_run_again(scan, work: Path) -> dict:
    """A whole run streamed twice under the same uid (a sender's retry after its result came): the
    second is ignored, counted late and logged; the first result stays."""
    rp = start_reconstructor(work, extra_args=QUICK)
    try:
        r1 = send_dataset(scan, rp.address, run_uid="twice-run", progress=False, confirm_timeout_s=120)
        _wait_final(rp, "twice-run")
        before = (work / "twice-run" / "result.h5").stat().st_mtime_ns
        r2 = send_dataset(scan, rp.address, run_uid="twice-run", progress=False, confirm_timeout_s=30)
        time.sleep(2.0)
    finally:
        rp.stop()
    log = rp.log_tail(200000)
    kept = (work / "twice-run" / "result.h5").stat().st_mtime_ns == before
    logged = "a start message for a run already final; ignored" in log and "already finished, ignored" in log
    ok = r1["receipt"]["confirmed"] and kept and logged
    return {"ok": bool(ok), "observed": ("ignored, logged, first result kept" if ok else
                                         f"kept={kept}, logged={logged}")
            + (", 2nd confirmed" if r2["receipt"]["confirmed"] else ", 2nd unconfirmed"), "frames_lost": 0, "resent": 0}


def tiled_outage(scan, work: Path) -> dict:
    """Tiled stops between the run's stop message and its final publication, and comes back 20 s
    later on the same port: the final waits on disk and is published then."""
    from bp_plugin.tiled_server import start_tiled_server
    from streaming.processes import wait_for_state

    home = work / "tiled"
    server = start_tiled_server(home)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    rp = start_reconstructor(work / "w", tiled_url=server.url, api_key=server.api_key,
                             extra_args=["--iterations", "40", "--ml-iterations", "10", "--publish-interval", "0.5"])
    md = {}
    try:
        r = send_dataset(scan, rp.address, progress=False, confirm_timeout_s=120)
        server.stop()
        uid = r["run_uid"]
        _wait_final(rp, uid)
        waiting = (work / "w" / uid / "unpublished_final.json").exists()
        time.sleep(20)
        server = start_tiled_server(home, port=port, api_key=server.api_key)
        md = wait_for_state(server.client(), uid, states=("final",), timeout=300)
    finally:
        rp.stop()
        server.stop()
    ok = waiting and md.get("status", {}).get("state") == "final"
    c = md.get("status", {})
    return {"ok": bool(ok), "observed": (f"kept on disk, then final in Tiled ({c.get('frames_measured')}/"
                                         f"{c.get('frames_expected')})") if ok else f"waiting={waiting}, {c.get('state')}",
            "frames_lost": int(c.get("frames_expected", 0)) - int(c.get("frames_measured", 0)), "resent": 0}


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
    "garbage, dups, reorder, gaps, bad frames": ("final, all frames, each counted", hostile_stream),
    "unsafe uids and absurd starts": ("refused, nothing written", refused_starts),
    "a finished run sent again": ("ignored, logged, result kept", finished_run_again),
    "Tiled down at the run's end": ("final in Tiled once it is back", tiled_outage),
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
    hdr = f"{'case':<40} {'expected':<32} {'observed (last try)':<50} {'passed':>7} {'lost':>5}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['case']:<40} {r['expected']:<32} {r['tries'][-1]['observed'][:50]:<50} "
              f"{r['passed']:>3}/{len(r['tries']):<3} {r['frames_lost']:>5}")
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    Path(a.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {a.json}")
    return 0 if all(r["passed"] == len(r["tries"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Streaming throughput: the raw pyzmq ceiling beside the reconstructor's sustained ingest, and latency.

All in one run, same frame size (516 x 516 uint32, a whole Maxipix frame, 1.07 MB):

- ``pyzmq ceiling``: PUSH -> PULL over tcp loopback between two processes, zero-copy sends, the
  service's receive loop with nothing else in it, first to last frame received (median of 5 runs);
- ``reconstructor ingest``: ``bp-plugin reconstructor`` (its own process, publishing to an embedded
  Tiled server) receives ``--runs`` simulated scans of ``--preset`` sent back to back as fast as it
  takes them; whole detector frames, cropped to the ROI on receipt. The rate is frames placed /
  (last placed - first placed), from the receiver's own clock, while it reconstructs (live
  iterations, then each run's final schedule while the next run arrives); loss = sent - placed;
- ``latency`` (first run): from its last frame sent to (a) the first map in Tiled holding every
  frame, seen by a separate client, (b) its final result published.

    .venv/bin/python benchmarks/bench_streaming.py --preset small --runs 2
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (516, 516)


def _pull(address: str, n: int, q) -> None:
    """The bare receiver: the same receive loop as the service (poll, then drain without blocking)."""
    import zmq

    s = zmq.Context().socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 10000)
    s.bind(address)
    q.put("ready")
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    t_first, got = None, 0
    while got < n:
        poller.poll(100)
        while got < n:
            try:
                s.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            got += 1
            t_first = t_first or time.time()
    q.put((t_first, time.time()))


def ceiling(n: int = 3000) -> float:
    """Frames/s of a bare PUSH/PULL pair (receiver in another process), first to last frame received."""
    import zmq

    from streaming.processes import free_tcp_address

    addr = free_tcp_address()
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_pull, args=(addr, n, q))
    p.start()
    q.get(timeout=30)
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 1000)
    s.connect(addr)
    frame = np.random.default_rng(0).integers(0, 50, SHAPE, dtype=np.uint32)
    header = b'{"k": 1}'
    for _ in range(n):
        s.send_multipart([header, frame], copy=False)
    t_first, t_last = q.get(timeout=120)
    p.join()
    s.close()
    return (n - 1) / (t_last - t_first)


def full_frames(preset: str, tmp: Path):
    """A simulated scan of ``preset`` as whole 516 x 516 frames (ROI centred), with its dataset."""
    from bp_plugin.dataset import read_dataset
    from sim_devices.experiment import simulate_to_file

    path = tmp / f"{preset}.h5"
    simulate_to_file(path, preset, seed=0, progress=False)
    ds = read_dataset(path)
    n1, n2 = ds.geometry.crop
    r0, c0 = (SHAPE[0] - n1) // 2, (SHAPE[1] - n2) // 2
    return ds, (r0, c0)


def ingest(preset: str, runs: int, tmp: Path, iterations: int, ml: int) -> dict:
    from bp_plugin.tiled_server import start_tiled_server
    from streaming import protocol
    from streaming.processes import start_reconstructor, wait_for_state
    from streaming.sender import FrameSender

    ds, (r0, c0) = full_frames(preset, tmp)
    n1, n2 = ds.geometry.crop
    pts = [(ia, ip) for ia in range(ds.measured.shape[0]) for ip in range(ds.measured.shape[1])]
    full = np.zeros((len(pts),) + SHAPE, np.uint32)                 # built before the clock starts
    for k, (ia, ip) in enumerate(pts):
        full[k, r0:r0 + n1, c0:c0 + n2] = ds.frames[ia, ip]
    mask = np.ones(SHAPE, bool)
    mask[r0:r0 + n1, c0:c0 + n2] = ds.mask
    server = start_tiled_server(tmp / "tiled")
    rp = start_reconstructor(tmp / "rec", tiled_url=server.url, api_key=server.api_key, max_runs=runs,
                             extra_args=["--iterations", str(iterations), "--ml-iterations", str(ml), "--quiet"])
    sender = FrameSender(rp.address, hwm=1000)
    uids, t_last_sent, t_live = [], [], []
    client = server.client()

    def watch_first_run():                         # a separate client: when does run 0's full map land?
        while not t_live:
            try:
                if client["reconstructions"][uids[0]].metadata["status"]["frames_in_engine"] == len(pts):
                    t_live.append(time.time())
            except (KeyError, IndexError):
                pass
            time.sleep(0.05)

    import threading
    watcher = threading.Thread(target=watch_first_run, daemon=True)
    try:
        for r in range(runs):
            uid = f"bench-{os.getpid()}-{r}"
            uids.append(uid)
            if r == 0:
                watcher.start()
            sender.send(protocol.encode_start(uid, sender.next_seq(uid), ds.geometry.to_dict(), ds.translations_m,
                                              len(pts), sim={"preset": preset, "seed": 0}, roi_origin=(r0, c0)))
            sender.send(protocol.encode_mask(uid, sender.next_seq(uid), mask))
            for k, (ia, ip) in enumerate(pts):
                sender.send(protocol.encode_frame(uid, sender.next_seq(uid), full[k], frame_index=k, angle_index=ia,
                                                  position_index=ip))
            t_last_sent.append(time.time())
            sender.send(protocol.encode_stop(uid, sender.next_seq(uid), exit_status="success", n_frames=len(pts)))
        mds = [wait_for_state(client, u, timeout=3600) for u in uids]
        watcher.join(60)
    finally:
        sender.close()
        rp.stop()
        server.stop()
    sts = [md["status"] for md in mds]
    first = min(s["first_frame_time"] for s in sts)
    last = max(s["last_frame_time"] for s in sts)
    placed = sum(s["placed"] for s in sts)
    m = mds[-1].get("metrics", {})
    return {"preset": preset, "runs": runs, "frames_sent": runs * len(pts), "frames_placed": placed,
            "lost": runs * len(pts) - placed, "ingest_fps": placed / (last - first), "ingest_window_s": last - first,
            "latency_live_map_s": t_live[0] - t_last_sent[0] if t_live else None,
            "latency_final_published_s": mds[0]["status"]["updated"] - t_last_sent[0],
            "final_iterations": iterations, "ml_iterations": ml, "object_error": m.get("object_error"),
            "catch_up_iterations": m.get("curriculum_iterations"),
            "strain_rms_error": m.get("strain_rms_error")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=60,
                    help="final-schedule joint iterations per run (the service's default)")
    ap.add_argument("--ml-iterations", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/bench_streaming.json")
    a = ap.parse_args()
    ceil = [ceiling() for _ in range(5)]
    with tempfile.TemporaryDirectory() as d:
        r = ingest(a.preset, a.runs, Path(d), a.iterations, a.ml_iterations)
    out = {"machine": platform.node(), "cpus": os.cpu_count(), "frame_shape": list(SHAPE), "frame_dtype": "uint32",
           "ceiling_fps_runs": ceil, "ceiling_fps_median": float(np.median(ceil)), **r,
           "ingest_fraction_of_ceiling": r["ingest_fps"] / float(np.median(ceil))}
    print(f"\n{'measurement':<44}{'value':>14}")
    rows = [("pyzmq ceiling (median of 5), frames/s", f"{out['ceiling_fps_median']:.0f}"),
            (f"reconstructor ingest ({a.preset}, {a.runs} runs), frames/s", f"{r['ingest_fps']:.0f}"),
            ("  fraction of the ceiling", f"{out['ingest_fraction_of_ceiling']:.0%}"),
            ("  frames sent / placed / lost", f"{r['frames_sent']}/{r['frames_placed']}/{r['lost']}"),
            ("latency last frame -> live map in Tiled, s", f"{r['latency_live_map_s']:.2f}"),
            ("latency last frame -> final result published, s", f"{r['latency_final_published_s']:.1f}"),
            ("catch-up curriculum iterations (last run)", f"{r.get('catch_up_iterations')}"),
            ("final object error / eps_zz RMS error", f"{r['object_error']:.3f} / {r['strain_rms_error']:.1e}")]
    for k, v in rows:
        print(f"{k:<50}{v:>14}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""Runs do not block each other: a newer run is shown in Tiled at once as waiting, and a run whose
sender died (no stop message, no frame) ends after the idle timeout the CLI sets."""
from __future__ import annotations

import time

import numpy as np

from streaming import protocol
from streaming.live import LiveOptions
from streaming.processes import wait_for_state
from streaming.sender import FrameSender, send_dataset
from streaming.service import ReconstructorService, ServiceOptions


def test_a_newer_run_waits_visibly_and_an_abandoned_one_ends_after_its_idle_timeout(tiled_server, tiny_dataset,
                                                                                    tmp_path):
    ds, path = tiny_dataset
    opts = ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "work", tiled_url=tiled_server.url,
                          api_key=tiled_server.api_key, max_runs=2, device="cpu", idle_timeout_s=10.0,
                          live=LiveOptions(final_iterations=4, ml_iterations=0, figures=False, catch_up_per_angle=0))
    svc = ReconstructorService(opts)
    th = svc.start()
    client = tiled_server.client()
    # run A: a sender that dies after 40 of its 300 frames (no stop message ever comes)
    a, pts = "abandoned-run", [tuple(int(v) for v in p) for p in np.argwhere(ds.measured)]
    s = FrameSender(svc.address, timeout_s=5.0)
    s.send(protocol.encode_start(a, s.next_seq(a), ds.geometry.to_dict(), ds.translations_m, len(pts)))
    s.send(protocol.encode_mask(a, s.next_seq(a), ds.mask))
    for k, (ia, ip) in enumerate(pts[:40]):
        s.send(protocol.encode_frame(a, s.next_seq(a), np.asarray(ds.frames[ia, ip], np.uint32), frame_index=k,
                                     angle_index=ia, position_index=ip))
    s.close()
    wait_for_state(client, a, states=("live",), timeout=60)
    # run B, whole, while the worker is on A: taken (its receipt) and shown as waiting behind A
    t0 = time.monotonic()
    r = send_dataset(path, svc.address, run_uid="newer-run", progress=False, confirm_timeout_s=60)
    assert r["receipt"]["confirmed"], r
    md = wait_for_state(client, "newer-run", states=("waiting", "live", "final"), timeout=30)
    assert time.monotonic() - t0 < 10                    # before A's idle timeout has run out
    assert md["status"]["state"] == "waiting" and "queued behind run abandone" in md["status"]["message"], md
    assert "--idle-timeout" in md["status"]["message"]
    fa = wait_for_state(client, a, timeout=300)["status"]
    fb = wait_for_state(client, "newer-run", timeout=300)["status"]
    th.join(60)
    assert fa["state"] == "final" and fb["state"] == "final", (fa, fb)
    assert svc.finished[a]["received"] == 40 and svc.finished["newer-run"]["received"] == 300
    # the shortened run says so where it is browsed, not only in the log
    assert "no stop message" in fa["message"] and "40 of 300 frames" in fa["message"], fa
    assert not fb.get("message"), fb                    # the queue notice went with the wait

"""Streaming online reconstruction: real ZeroMQ sockets, a real RunEngine, a real Tiled server,
the reconstructor started through its own CLI in a child process.

Quality thresholds of the final streamed result are the engine's (tests/test_engine.py: object
error 0.22, eps_zz RMS 4.6e-5, tilts 4.5e-5 rad on ``tiny`` after 60 joint + 20 ML iterations): the
streamed run ends with the same schedule, started from the live state, so it must be at least as good.
"""
import dataclasses
import json
import time

import numpy as np
import pytest
import zmq

from bp_plugin.dataset import read_dataset, write_dataset
from streaming import protocol
from streaming.processes import start_reconstructor, wait_for_state
from streaming.sender import FrameSender, send_dataset
from streaming.service import ReconstructorService, ServiceOptions
from streaming.live import LiveOptions

from gates import FrameGate, Watcher

OBJ, STRAIN, TILT = 0.22, 4.6e-5, 4.5e-5


@pytest.fixture(scope="module")
def tiny_file(tiny_dataset):
    return tiny_dataset[1]                   # the session's tiny scan (tests/conftest.py)


def test_protocol_round_trip_and_clear_refusals():
    f = np.arange(12, dtype=np.uint32).reshape(3, 4)
    parts = protocol.encode_frame("r1", 5, f, frame_index=2, angle_index=1, position_index=3, motors={"eta_deg": 1.5})
    m = protocol.decode([bytes(p) if isinstance(p, bytes) else p.tobytes() for p in parts])
    assert (m.kind, m.run_uid, m.seq, m.header["angle_index"]) == ("frame", "r1", 5, 1)
    assert np.array_equal(m.array, f)
    bad = [
        ([b"\xff\xfe"], "not JSON"),
        ([json.dumps({"protocol": "other"}).encode()], "not a bp-stream"),
        ([json.dumps({"protocol": "bp-stream", "version": 99, "kind": "frame"}).encode()], "version 99"),
        ([parts[0]], "2 parts"),
        ([parts[0], b"\0" * 7], "payload bytes"),
        ([parts[0].replace(b'"angle_index":1', b'"angle_index":-1'), f.tobytes()], "negative"),
    ]
    for p, text in bad:
        with pytest.raises(protocol.ProtocolError, match=text):
            protocol.decode(p)


def _service(tmp_path, **live):
    opts = ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "work", max_runs=1, device="cpu",
                          live=LiveOptions(**{"final_iterations": 6, "ml_iterations": 0, "figures": False,
                                              "catch_up_per_angle": 0, **live}))
    return ReconstructorService(opts)


def test_duplicates_out_of_order_gaps_and_garbage_are_counted_never_fatal(tiny_file, tmp_path):
    svc = _service(tmp_path)
    th = svc.start()
    ds = read_dataset(tiny_file)
    uid = "fault-run"
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(svc.address)
    pts = [(ia, ip) for ia in range(ds.measured.shape[0]) for ip in range(ds.measured.shape[1])]
    roi, big = (5, 9), (48, 50)                            # whole "detector" frames: the receiver crops

    def whole(a, dtype):
        out = np.zeros(big, dtype)
        protocol.crop_roi(out, roi, a.shape)[:] = a
        return out

    msgs = [protocol.encode_frame(uid, k + 2, whole(ds.frames[ia, ip], np.uint32), frame_index=k,
                                  angle_index=ia, position_index=ip) for k, (ia, ip) in enumerate(pts)]
    push.send_multipart(protocol.encode_start(uid, 0, ds.geometry.to_dict(), ds.translations_m, len(pts),
                                              roi_origin=roi))
    push.send_multipart(protocol.encode_mask(uid, 1, whole(ds.mask, bool)))
    skipped = {7, 8, 100}                                  # gaps: never sent, recovered from the file at stop
    order = [k for k in range(len(msgs)) if k not in skipped]
    order[10:20] = order[10:20][::-1]                      # out of order
    garbage = [[b"not json at all"], [b'{"protocol": "bp-stream", "version": 1, "kind": "frame"}'],
               [msgs[0][0]], [msgs[0][0], b"\1\2\3"]]
    for n, k in enumerate(order):
        push.send_multipart(msgs[k], copy=False)
        if n % 50 == 0:
            push.send_multipart(msgs[k], copy=False)           # duplicate (same seq)
            push.send_multipart(garbage[(n // 50) % len(garbage)])
    n = len(msgs)                                          # two bad frames close the stream: seq n + 2, n + 3
    wrong = protocol.encode_frame(uid, n + 2, np.zeros((5, 5), np.uint32), frame_index=n, angle_index=0,
                                  position_index=0)
    nan = protocol.encode_frame(uid, n + 3, np.full(big, np.nan, np.float32), frame_index=n + 1,
                                angle_index=0, position_index=1)
    push.send_multipart(wrong)
    push.send_multipart(nan)
    push.send_multipart(protocol.encode_stop(uid, n + 4, exit_status="success", n_frames=n + 2,
                                             sources=[{"format": "bp-dataset", "file": str(tiny_file),
                                                       "frames": [list(p) for p in pts]}]))
    th.join(300)
    push.close(0)
    st = svc.finished[uid]
    n_dup = len(range(0, len(order), 50))
    assert st["state"] == "final"
    assert st["received"] == st["placed"] + st["duplicates"] + st["rejected"]
    assert st["placed"] == len(msgs) - len(skipped)
    assert st["duplicates"] == n_dup and st["rejected"] == 2
    why = st["rejection_reasons"]                            # what the viewer shows beside the count
    assert sum(why.values()) == 2 and any("frame shape (5, 5)" in r for r in why) and any("NaN" in r for r in why)
    assert st["out_of_order"] > 0 and st["recovered"] == len(skipped) and st["missing"] == len(skipped)
    assert st["frames_measured"] == len(msgs)
    assert svc.counters["malformed"] == n_dup                # every garbage message counted, none fatal
    work = np.load(tmp_path / "work" / uid / "frames.npy", mmap_mode="r")
    assert np.array_equal(work[2, 7], ds.frames[2, 7].astype(np.float32))   # streamed, cropped on receipt
    assert np.array_equal(work[0, 7], ds.frames[0, 7].astype(np.float32))   # recovered from the file
    assert np.array_equal(np.load(tmp_path / "work" / uid / "mask.npy"), ds.mask)


@pytest.mark.slow
def test_scan_streams_live_to_reconstructor_and_tiled(tiled_server, tmp_path):
    """The end-to-end path: RunEngine -> simulated beamline -> ZeroMQ -> reconstructor -> Tiled."""
    from bluesky_tiled_plugins import TiledWriter

    from bp_plugin.tiled_server import connect
    from plans.recording import make_run_engine
    from plans.bragg_ptycho import bragg_ptycho_scan
    from plans.monitor import buffered
    from sim_devices.beamline import build_beamline
    from streaming.sender import BlueskyFrameStreamer
    from streaming.taps import DetectorFrameTap

    rp = start_reconstructor(tmp_path / "rec", tiled_url=tiled_server.url, api_key=tiled_server.api_key, max_runs=1)
    try:
        bl = build_beamline("tiny", write_dir=tiled_server.detector_dir, seed=0)
        sender = FrameSender(rp.address)
        gate = FrameGate(at=150)                # the stream waits at frame 150 until a live map was seen

        class GatedTap(DetectorFrameTap):
            def take(self, uri, index, dataset=None):
                gate.passing()
                return super().take(uri, index, dataset)

        streamer = buffered(BlueskyFrameStreamer(sender, GatedTap(bl.detector)))
        writer = buffered(TiledWriter(tiled_server.client(), batch_size=10))
        RE = make_run_engine()
        RE.subscribe(writer)
        RE.subscribe(streamer)
        uid = []
        RE.subscribe(lambda name, doc: uid.append(doc["uid"]) if name == "start" else None)
        viewer = connect(tiled_server.url, tiled_server.api_key)   # a second client, reading during the scan

        def look():
            if not uid:
                return None
            node = viewer["reconstructions"][uid[0]]
            st = node.metadata["status"]
            if st["state"] == "live" and st["frames_in_engine"] > 0:
                seen = (st["frames_in_engine"], float(np.nanmax(np.abs(node["eps_zz"][:]))))
                gate.open()
                return seen
            return None

        watcher = Watcher(look, period_s=0.3)
        watcher.start()
        RE(bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.preset.geometry))
        streamer.shutdown(wait=True)
        watcher.stop()
        writer.shutdown(wait=True)
        sender.close()
        md = wait_for_state(tiled_server.client(), uid[0], timeout=600)
    finally:
        rp.stop()
    seen = watcher.seen
    assert seen, f"no live result seen in Tiled while the scan ran ({watcher.report()}); log:\n{rp.log_tail()}"
    assert seen[0][0] < 300 and np.isfinite(seen[0][1])    # a partial map, published before the last frame
    st, m = md["status"], md["metrics"]
    assert st["state"] == "final", rp.log_tail()
    assert st["received"] == st["placed"] == 300 and st["duplicates"] == st["rejected"] == st["missing"] == 0
    assert m["object_error"] < OBJ and m["strain_rms_error"] < STRAIN and m["tilt_rms_error_rad"] < TILT
    node = tiled_server.client()["reconstructions"][uid[0]]
    assert node["eps_zz"].shape == tuple(md["grid"]["shape"]) and node["eps_zz"].dtype == np.float32
    assert node["measured"][:].all()


@pytest.mark.slow
def test_restarted_reconstructor_recovers_and_reaches_the_same_quality(tiled_server, tiny_file, tmp_path):
    """Kill -9 in the middle of a run; a new process takes the run over from its spool and checkpoint,
    gets the rest over the wire and the frames lost in between from the file."""
    work = tmp_path / "rec"
    args = ["--iterations", "60", "--ml-iterations", "20", "--publish-interval", "0.5"]
    rp = start_reconstructor(work, tiled_url=tiled_server.url, api_key=tiled_server.api_key, extra_args=args)
    ds = read_dataset(tiny_file)
    uid = "restart-run"
    sender = FrameSender(rp.address, timeout_s=2.0)
    pts = [(ia, ip) for ia in range(ds.measured.shape[0]) for ip in range(ds.measured.shape[1])]
    sender.send(protocol.encode_start(uid, sender.next_seq(uid), ds.geometry.to_dict(), ds.translations_m, len(pts),
                                      sim={"truth_file": str(tiny_file)}))   # ground truth for the metrics
    sender.send(protocol.encode_mask(uid, sender.next_seq(uid), ds.mask))

    def send(k):
        ia, ip = pts[k]
        sender.send(protocol.encode_frame(uid, sender.next_seq(uid), np.asarray(ds.frames[ia, ip], np.uint32),
                                          frame_index=k, angle_index=ia, position_index=ip))

    for k in range(150):
        send(k)
    client = tiled_server.client()
    wait_for_state(client, uid, states=("live",), timeout=60)
    time.sleep(3)                                         # some live iterations and a checkpoint
    rp.kill()
    assert (work / uid / "frames.npy").exists() and (work / uid / "checkpoint.npz").exists()
    for k in range(150, 170):        # lost: ZeroMQ would queue them for the new process, so skip them
        sender.next_seq(uid)         # (a sender that gave up); the new process reads them from the file
    rp2 = start_reconstructor(work, address=rp.address, tiled_url=tiled_server.url, api_key=tiled_server.api_key,
                              extra_args=args, max_runs=1)
    try:
        for k in range(170, len(pts)):
            send(k)
        sender.send(protocol.encode_stop(uid, sender.next_seq(uid), exit_status="success", n_frames=len(pts),
                                         sources=[{"format": "bp-dataset", "file": str(tiny_file),
                                                   "frames": [list(p) for p in pts]}]))
        md = wait_for_state(client, uid, timeout=600)
    finally:
        sender.close(0)
        rp2.stop()
    st, m = md["status"], md["metrics"]
    assert st["state"] == "final", rp2.log_tail()
    assert st["frames_measured"] == len(pts) and st["recovered"] == 20 and st["missing"] == 20
    assert "adopted" in rp2.log_tail(20000)                     # taken over at start-up
    assert m["object_error"] < OBJ and m["strain_rms_error"] < STRAIN and m["tilt_rms_error_rad"] < TILT


def test_wrong_api_key_is_refused(tiled_server, tmp_path):
    with pytest.raises(RuntimeError, match="exited with code 2") as err:
        start_reconstructor(tmp_path / "rec", tiled_url=tiled_server.url, api_key="not-the-key", ready_timeout=60)
    assert "refused the API key" in str(err.value) or "refused the one given" in str(err.value)
    opts = ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "w", tiled_url=tiled_server.url,
                          api_key="wrong")
    with pytest.raises(RuntimeError, match="refused (the API key|the one given)"):
        ReconstructorService(opts)


def test_replay_and_dataset_sender_are_sources(tiny_file, tmp_path):
    """A replayed run (inline frames, no mask: the receiver derives one) and ``send_dataset`` both
    deliver every frame once, in two runs taken one after the other by the same service."""
    from plans.replay import dataset_documents, replay
    from streaming.commands import replay_streamer

    opts = ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "work", max_runs=2, device="cpu",
                          live=LiveOptions(final_iterations=2, ml_iterations=0, figures=False, catch_up_per_angle=0))
    svc = ReconstructorService(opts)
    th = svc.start()
    streamer = replay_streamer(svc.address)
    assert replay(dataset_documents(tiny_file), [streamer]) == 300
    streamer.close()
    r = send_dataset(tiny_file, svc.address, run_uid="second", progress=False)
    th.join(300)
    assert len(svc.finished) == 2 and r["unsent"] == 0
    for st in svc.finished.values():
        assert st["state"] == "final"
        assert st["received"] == st["placed"] == st["frames_measured"] == 300 and st["missing"] == 0
    ds = read_dataset(tiny_file)
    kept = np.load(tmp_path / "work" / "second" / "mask.npy")
    assert np.array_equal(kept, ds.mask)                  # the sent mask was kept


def test_missed_frames_are_recovered_from_the_detector_file(tmp_path):
    """The live path's fallback: frames the stream never delivered are read back from the detector's
    own HDF5 file (bitshuffle-LZ4, cropped at the ROI) that the stop message lists; bad entries are
    skipped without failing the run."""
    from sim_devices.detector_file import DATASET, DetectorFile
    from streaming.assembly import RunAssembly
    from sim_devices.presets import get_preset

    geo = get_preset("tiny").geometry
    n_p = int(np.prod(geo.raster_shape))
    t = np.zeros((n_p, 3))
    start = protocol.decode(protocol.encode_start("det-run", 0, geo.to_dict(), t, 3)).header
    asm = RunAssembly(start, tmp_path / "spool")
    rng = np.random.default_rng(1)
    full = rng.integers(0, 100, (3, 40, 44)).astype(np.uint32)
    df = DetectorFile(tmp_path / "det.h5", (40, 44), pixel_size_m=55e-6, count_time_s=0.1)
    for f in full:
        df.append(f)
    roi = (4, 6)
    src = {"format": "detector", "file": str(tmp_path / "det.h5"), "dataset": DATASET, "roi_origin": list(roi),
           "frames": [[0, 0, 0], [1, 2, 1], [2, 3, 2], [0, 99, 0], [1, 0, 7]]}   # the last two: not in the scan / file
    n = asm.recover([src, {"format": "detector", "file": str(tmp_path / "nowhere.h5"), "frames": [[0, 1, 0]]}])
    df.close()
    assert n == 3 and asm.n_measured == 3 and asm.counters["recovered"] == 3
    assert np.array_equal(asm.frames[1, 2], protocol.crop_roi(full[1], roi, geo.crop).astype(np.float32))


def test_final_schedule_can_restart_the_object_with_the_live_probe(tiny_file, tmp_path):
    """``LiveOptions.restart_object``: after a short live phase (5 iterations on every frame) the final
    schedule starts the object from the slab with the probe learned live. Measured (tiny, 60 + 20):
    object error 0.129 restarted, 0.136 continued: the restarted run must meet the engine's thresholds
    (measured, as they were, at the tiny file's own up-sampling x2; the default x3 ends at 0.206)."""
    ds = read_dataset(tiny_file)
    live = _flooded_run(ds, tmp_path, LiveOptions(figures=False, restart_object=True, catch_up_per_angle=0,
                                                  upsampling=2), 5)
    live.run_final()
    rec = live.rec
    q = _quality(rec, ds)
    assert q["object_error"] < OBJ and q["strain_rms_error"] < STRAIN and q["tilt_rms_error_rad"] < TILT, q
    # what the restart does: the slab object and the flat background again, the probe kept
    probe = np.array(rec.probe2d)
    rec.restart_object()
    np.testing.assert_allclose(np.abs(np.array(rec.object)), np.array(rec.support, np.float32), atol=1e-6)
    assert np.all(np.array(rec.background) == rec.config.background_init)
    np.testing.assert_array_equal(np.array(rec.probe2d), probe)


def _flooded_run(ds, folder, opts, live_iterations, per_angle=None):
    """A LiveReconstruction that received every frame of ``ds`` at once, then ran ``live_iterations``;
    with ``per_angle``, frames arrive angle by angle instead, ``per_angle`` live iterations after each."""
    from bp_plugin.backend import get_backend
    from streaming.assembly import RunAssembly
    from streaming.live import LiveReconstruction

    pts = [(ia, ip) for ia in range(ds.measured.shape[0]) for ip in range(ds.measured.shape[1])]
    start = protocol.decode(protocol.encode_start("r", 0, ds.geometry.to_dict(), ds.translations_m, len(pts)))
    asm = RunAssembly(start.header, folder / "run")
    asm.set_mask(ds.mask)
    live = LiveReconstruction(asm, opts, get_backend("cpu"))
    for k, (ia, ip) in enumerate(pts):
        asm.place(protocol.decode(protocol.encode_frame("r", k + 1, np.asarray(ds.frames[ia, ip], np.uint32),
                                                        frame_index=k, angle_index=ia, position_index=ip)))
        if per_angle and ip == ds.measured.shape[1] - 1:           # the angle is complete
            live.ingest()
            for _ in range(per_angle):
                live.live_step()
    live.ingest()
    for _ in range(live_iterations):
        live.live_step()
    return live


def _quality(rec, ds):
    from bp_plugin.recon.results import evaluate

    return evaluate(rec.object, rec.probe2d, rec.illumination(), rec.layout, rec.probe_op,
                    ds.ground_truth, ds.ground_truth_attrs)


@pytest.mark.slow
def test_final_phase_catches_up_with_the_angle_curriculum_after_a_flood(tiny_file, tmp_path):
    """Every frame arrived before the live phase iterated (2 iterations): the final phase restarts the
    object and runs the angle curriculum (6 per angle) before its 60 + 20 schedule. Measured (tiny):
    object error 0.145, eps_zz 2.9e-5 with the catch-up; 0.160, 3.3e-5 without. Bounds: the engine's thresholds,
    and no worse than without the catch-up."""
    ds = read_dataset(tiny_file)
    n_angles = ds.measured.shape[0]
    caught = _flooded_run(ds, tmp_path / "on", LiveOptions(figures=False), 2)
    assert caught.live_iterations_per_angle(caught.rec.history) == 0      # all but the last angle: none
    assert caught.live_iterations_per_angle([]) == 0    # the stop came before any live iteration (a backlog)
    caught.run_final()
    stages = [h.get("stage") for h in caught.rec.history]
    assert stages.count("live") == 2 and stages.count("curriculum") == 6 * n_angles, stages
    assert caught.stage == "final" and caught.rec.measured.all()
    plain = _flooded_run(ds, tmp_path / "off", LiveOptions(figures=False, catch_up_per_angle=0), 2)
    plain.run_final()
    assert "curriculum" not in [h.get("stage") for h in plain.rec.history]
    q, q0 = _quality(caught.rec, ds), _quality(plain.rec, ds)
    print("catch-up", q["object_error"], q["strain_rms_error"], "plain", q0["object_error"], q0["strain_rms_error"])
    assert q["object_error"] < OBJ and q["strain_rms_error"] < STRAIN and q["tilt_rms_error_rad"] < TILT, q
    assert q["object_error"] <= q0["object_error"], (q["object_error"], q0["object_error"])
    # a live phase that kept up (6 iterations after each angle came in) goes straight to the schedule;
    # one that ran as many (72) on every frame at once did not (each angle never had its turn)
    short = LiveOptions(figures=False, final_iterations=2, ml_iterations=0)
    kept_up = _flooded_run(ds, tmp_path / "kept", short, 0, per_angle=6)
    assert kept_up.live_iterations_per_angle(kept_up.rec.history) == 6
    kept_up.run_final()
    assert "curriculum" not in [h.get("stage") for h in kept_up.rec.history]
    late = _flooded_run(ds, tmp_path / "late", short, 6 * n_angles)
    late.run_final()
    assert [h.get("stage") for h in late.rec.history].count("curriculum") == 6 * n_angles


def test_the_service_reads_the_truth_a_run_names_and_finishes_without_it(tiny_file, tmp_path):
    """Ground truth travels as a file named in the start message; the service never re-simulates.
    A run whose truth file is present gets the quality metrics; one whose file is absent is
    finished all the same, without them, and says why."""
    from bp_plugin.truth import read_truth, write_truth_file

    ds = read_dataset(tiny_file)
    scan = tmp_path / "no_truth.h5"
    write_dataset(scan, dataclasses.replace(ds, ground_truth={}, ground_truth_attrs={}))
    truth = write_truth_file(tmp_path / "truth.h5", *read_truth(tiny_file))
    svc = ReconstructorService(ServiceOptions(
        listen="tcp://127.0.0.1:0", workdir=tmp_path / "work", max_runs=2, device="cpu",
        live=LiveOptions(final_iterations=2, ml_iterations=0, figures=False, catch_up_per_angle=0)))
    th = svc.start()
    send_dataset(scan, svc.address, run_uid="with-truth", progress=False, truth_file=truth)
    th_wait = time.time() + 120
    while "with-truth" not in svc.finished and time.time() < th_wait:
        time.sleep(0.2)
    truth.unlink()
    send_dataset(scan, svc.address, run_uid="truth-gone", progress=False, truth_file=truth)
    th.join(300)
    metrics = {uid: json.loads((tmp_path / "work" / uid / "metrics.json").read_text()) for uid in svc.finished}
    assert set(metrics) == {"with-truth", "truth-gone"} and all(s["state"] == "final" for s in svc.finished.values())
    assert np.isfinite(metrics["with-truth"]["object_error"])
    assert "object_error" not in metrics["truth-gone"]
    assert any("absent" in w and str(truth) in w for w in metrics["truth-gone"]["warnings"])

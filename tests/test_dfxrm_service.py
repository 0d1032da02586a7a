"""DF-XRM runs in the reconstructor service: accounting of bad and repeated frames, start messages
refused with a reason, recovery racing the receiver, checkpoint and restart of a killed service
(real process, real ZeroMQ, real Tiled), strain scans and weak-beam series through the service."""
import threading
import time

import h5py
import numpy as np
import pytest

from bp_plugin.dfxrm import MapOptions, MomentAccumulator, compute_maps
from sim_devices.dfxrm_microscope import build_preset_sample, write_sample_truth
from streaming import protocol
from streaming.dfxrm_live import DfxrmRun

GRID = [(p, c) for p in np.linspace(-0.07, 0.07, 29) for c in np.linspace(-0.07, 0.07, 15)]


def _scan(sample, ct=0.1):
    from plans.dfxrm import noise_floor

    bg = sample.background_counts(ct)
    return {"kind": "mosaicity", "axes": ["phi", "chi"], "centre_deg": [0.0, 0.0], "shape": [29, 15],
            "frame_shape": list(sample.config.shape), "background_counts": bg, "noise_floor_counts": noise_floor(bg),
            "resolution_deg": dict(sample.config.resolution_deg)}


def _frames(sample, ct=0.1, seed=4):
    rng = np.random.default_rng(seed)
    return np.stack([sample.frame(p, c, sample.geometry.tth_ref_deg, ct, rng) for p, c in GRID])


def _batch(sample, frames, scan):
    acc = MomentAccumulator(tuple(scan["frame_shape"]), ("phi", "chi"), scan["centre_deg"],
                            background=scan["background_counts"], floor=scan["noise_floor_counts"])
    acc.add_many(frames, np.array(GRID))
    return compute_maps(acc, sample.geometry, MapOptions(resolution_deg=scan["resolution_deg"]))


def _frame_msg(uid, seq, frame, k, angles=None):
    motors = {} if angles is None else {"phi_deg": angles[0], "chi_deg": angles[1]}
    return protocol.decode(protocol.encode_frame(uid, seq, frame, frame_index=k, angle_index=k, position_index=0,
                                                 motors=motors))


def _camera_file(path, frames):
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = frames
    return [{"format": "detector", "file": str(path), "dataset": "/entry/data/data",
             "frames": [[k, k, p, c] for k, (p, c) in enumerate(GRID)]}]


def _assert_same_maps(a, b, keys=("intensity", "tilt_phi", "tilt_chi", "fwhm_phi", "nye_zz")):
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6 * np.nanmax(np.abs(b[k])), equal_nan=True,
                                   err_msg=k)


def test_every_frame_is_accounted_for_and_recovery_does_not_double_count(tmp_path):
    sample = build_preset_sample("tiny")
    scan, frames, uid = _scan(sample), _frames(sample), "acct"
    run = DfxrmRun(protocol.decode(protocol.encode_dfxrm_start(uid, 0, sample.geometry.to_dict(), scan,
                                                                len(GRID))).header, tmp_path / uid)
    seq = iter(range(1, 10_000))
    for k in range(0, len(GRID), 2):                                   # the even frames arrive
        run.place(_frame_msg(uid, next(seq), frames[k], k, GRID[k]))
    run.place(_frame_msg(uid, next(seq), frames[4], 4, GRID[4]))                 # duplicate
    run.place(_frame_msg(uid, next(seq), frames[1][:-1], 1, GRID[1]))            # wrong shape
    run.place(_frame_msg(uid, next(seq), frames[1], 1))                          # no angles
    run.place(_frame_msg(uid, next(seq), frames[1], len(GRID), GRID[1]))         # index beyond the run
    bad = frames[1].astype(np.float32)
    bad[3, 3] = np.nan
    run.place(_frame_msg(uid, next(seq), bad, 1, GRID[1]))                       # NaN
    c = run.counters
    assert c["received"] == c["placed"] + c["duplicates"] + c["rejected"]
    assert (c["placed"], c["duplicates"], c["rejected"]) == (len(range(0, len(GRID), 2)), 1, 4)
    # checkpoint, then a new process resumes from it
    run.checkpoint()
    again = DfxrmRun.resume(tmp_path / uid)
    assert again.n_measured == run.n_measured
    _assert_same_maps(again.maps(), run.maps())
    # a checkpoint whose sums do not match its frame list is not trusted (everything is recovered)
    import shutil
    torn = tmp_path / "torn"
    shutil.copytree(tmp_path / uid, torn)
    with np.load(torn / "moments.npz") as z:
        parts = {k: z[k] for k in z.files}
    parts["seen"][1] = True
    np.savez(torn / "moments.npz", **parts)
    assert DfxrmRun.resume(torn).n_measured == 0
    (torn / "maps.h5").touch()                                   # a finished run is not resumed
    assert DfxrmRun.resume(torn) is None
    # the stop message's sources list every frame: only the odd ones are read back, and a receiver
    # placing some of them at the same moment does not make them count twice
    sources = _camera_file(tmp_path / "cam.h5", frames)
    sources[0]["frames"].append([3, 10 ** 6, 0.0, 0.0])        # an entry whose index is not in the file
    sources[0]["frames"].append([5, 5, float("nan"), 0.0])      # and one without a usable angle
    racer = threading.Thread(target=lambda: [again.place(_frame_msg(uid, next(seq), frames[k], k, GRID[k]))
                                             for k in range(1, len(GRID), 4)])
    racer.start()
    n = again.recover(sources)
    racer.join()
    assert again.n_measured == len(GRID) and again.acc.n_frames == len(GRID)
    assert n + again.counters["placed"] == len(GRID) - run.n_measured
    _assert_same_maps(again.maps(), _batch(sample, frames, scan))


@pytest.mark.parametrize("change, why", [
    (lambda h: h["scan"].update(axes=["phi", "omega"]), "scan.axes"),
    (lambda h: h["scan"].update(axes=[]), "scan.axes"),
    (lambda h: h["scan"].update(frame_shape=[64]), "frame_shape"),
    (lambda h: h["scan"].update(frame_shape=[64, -3]), "frame_shape"),
    (lambda h: h["scan"].update(centre_deg=[0.0]), "centre_deg"),
    (lambda h: h["scan"].update(order=3), "order"),
    (lambda h: h["scan"].update(noise_floor_counts=-1), "noise_floor_counts"),
    (lambda h: h.update(n_frames=0), "n_frames"),
    (lambda h: h["geometry"].update(energy_kev=0), "energy_kev"),
    (lambda h: h.pop("scan"), "scan"),
    (lambda h: h["scan"].update(axes=[["phi"]]), "scan.axes"),
    (lambda h: h["scan"].update(resolution_deg={"phi": -0.1}), "resolution_deg"),
    (lambda h: h["scan"].update(frame_shape=[16384, 16384], order=4), "GiB"),
])
def test_unusable_dfxrm_start_messages_are_refused_with_the_reason(change, why):
    import json

    sample = build_preset_sample("tiny")
    header = json.loads(protocol.encode_dfxrm_start("r", 0, sample.geometry.to_dict(), _scan(sample), 435)[0])
    change(header)
    with pytest.raises(protocol.ProtocolError, match=why):
        protocol.decode([json.dumps(header).encode()])


def test_killed_service_resumes_a_dfxrm_run_from_its_checkpoint(tiled_server, tmp_path):
    """Kill -9 mid-run; a new process takes the run over from ``moments.npz``, gets the rest over the
    wire and the frames lost in between from the camera file: the final maps equal the batch maps."""
    from streaming.processes import start_reconstructor, wait_for_state
    from streaming.sender import FrameSender

    sample = build_preset_sample("tiny")
    scan, frames, uid = _scan(sample), _frames(sample), "dfxrm-restart"
    sources = _camera_file(tmp_path / "cam.h5", frames)
    work = tmp_path / "rec"
    args = ["--publish-interval", "0.3", "--checkpoint-interval", "0.3"]
    rp = start_reconstructor(work, tiled_url=tiled_server.url, api_key=tiled_server.api_key, extra_args=args)
    sender = FrameSender(rp.address, timeout_s=2.0)

    def send(k):
        p, c = GRID[k]
        sender.send(protocol.encode_frame(uid, sender.next_seq(uid), frames[k], frame_index=k, angle_index=k,
                                          position_index=0, motors={"phi_deg": p, "chi_deg": c}))

    sender.send(protocol.encode_dfxrm_start(uid, sender.next_seq(uid), sample.geometry.to_dict(), scan, len(GRID),
                                            sim={"technique": "dfxrm",
                                                 "truth_file": str(write_sample_truth(sample, tmp_path / "t.h5"))}))
    for k in range(200):
        send(k)
    client = tiled_server.client()
    ck = work / uid / "moments.npz"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with np.load(ck) as z:
                if z["seen"].sum() == 200:
                    break
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    else:
        raise AssertionError(f"no checkpoint of the 200 frames: {rp.log_tail()}")
    rp.kill()
    for _ in range(200, 240):         # lost while no service ran: read back from the camera file
        sender.next_seq(uid)
    rp2 = start_reconstructor(work, address=rp.address, tiled_url=tiled_server.url, api_key=tiled_server.api_key,
                              extra_args=args, max_runs=1)
    try:
        for k in range(240, len(GRID)):
            send(k)
        sender.send(protocol.encode_stop(uid, sender.next_seq(uid), exit_status="success", n_frames=len(GRID),
                                         sources=sources))
        md = wait_for_state(client, uid, timeout=120, root="dfxrm", process=rp2)
    finally:
        sender.close(0)
        rp2.stop()
    st = md["status"]
    assert st["state"] == "final", rp2.log_tail()
    assert st["frames_measured"] == len(GRID) and st["recovered"] == 40 and st["placed"] == len(GRID) - 240
    log = rp2.log_tail(20000)
    assert "adopted" in log and "from the checkpoint" in log      # taken over at start-up
    node = client["dfxrm"][uid]
    _assert_same_maps({k: node[k].read() for k in ("intensity", "tilt_phi", "tilt_chi", "fwhm_phi", "nye_zz")},
                      _batch(sample, frames, scan))
    assert md["metrics"]["tilt_phi_rms_error_deg"] < 0.1 * 0.005


@pytest.mark.parametrize("kind", ["strain", "weak_beam"])
def test_strain_scans_and_weak_beam_series_through_the_service(kind, tiled_server, tmp_path):
    """A strain scan streams to strain maps checked against the truth; a weak-beam series publishes
    its background-subtracted images (and no moment maps, no truth metrics)."""
    from plans.dfxrm_acquire import DfxrmAcquireOptions, acquire_dfxrm
    from streaming.live import LiveOptions
    from streaming.dfxrm_sender import DfxrmFrameStreamer
    from streaming.sender import FrameSender
    from streaming.taps import DetectorFrameTap
    from streaming.service import ReconstructorService, ServiceOptions

    svc = ReconstructorService(ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "work", max_runs=1,
                                              device="cpu", tiled_url=tiled_server.url, api_key=tiled_server.api_key,
                                              live=LiveOptions(figures=False, publish_interval_s=0.3)))
    th = svc.start()
    senders = []

    def streamer(mic):
        senders.append(FrameSender(svc.address))
        return [DfxrmFrameStreamer(senders[-1], DetectorFrameTap(mic.detector))]

    try:
        r = acquire_dfxrm(DfxrmAcquireOptions(preset="tiny", scan=kind, out=tmp_path / "acq",
                                              detector_dir=tiled_server.detector_dir),
                          server=tiled_server, callbacks_for=streamer)
    finally:
        for s in senders:
            s.close()
    th.join(120)
    st = svc.finished[r["uid"]]
    assert st["state"] == "final" and st["frames_measured"] == r["n_events"] == st["placed"]
    node = tiled_server.client()["dfxrm"][r["uid"]]
    md = node.metadata
    if kind == "strain":
        # measured 2.0e-5 RMS over ~480 pixels (truth spans 3e-4): at the reference orientation only the
        # sub-grains near it diffract, many pixels only through the tails of their rocking curves
        assert "strain" in node and md["metrics"]["strain_rms_error"] < 4e-5, md["metrics"]
    else:
        assert set(node) == {"intensity", "mask", "weak_beam"}
        assert "strain_rms_error" not in md.get("metrics", {}) and "tilt_phi_rms_error_deg" not in md.get("metrics", {})
        weak = node["weak_beam"].read()
        with h5py.File(r["detector_files"][0], "r") as f:
            raw = f["/entry/data/data"][()]
        assert weak.shape == raw.shape
        np.testing.assert_allclose(weak, raw.astype(np.float32) - md["scan"]["background_counts"])

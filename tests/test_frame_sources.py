"""Any 2D detector feeds the reconstructor: whole detector frames inline in the events (cropped to
the run's ROI on the sending side, with the detector's mask), or frames in areaDetector HDF5 files
announced by ``resource`` / ``datum`` (ophyd's HDF5 plug-in, spec AD_HDF5), read back by the
reconstructor at the stop. Real ZeroMQ sockets and a real reconstructor service."""
import time

import h5py
import numpy as np
import pytest
from event_model import compose_run

from bp_plugin.scan_document import ScanDocument
from streaming.live import LiveOptions
from streaming.sender import BlueskyFrameStreamer, FrameSender
from streaming.taps import DetectorFrameTap
from streaming.service import ReconstructorService, ServiceOptions

ROI, MARGIN = (3, 5), (9, 11)          # the crop's corner on a detector 9 x 11 pixels larger


def camera_documents(ds, folder, *, inline: bool):
    """A bragg_ptycho_scan-shaped run of ``ds`` from a camera of whole frames (inline or AD_HDF5)."""
    geo = ds.geometry
    (n1, n2), (r0, c0) = geo.crop, ROI
    shape = (n1 + MARGIN[0], n2 + MARGIN[1])
    pts = [(ia, ip) for ia in range(geo.n_angles) for ip in range(len(ds.translations_m))]
    full = np.full((len(pts), *shape), 7, np.uint32)          # outside the crop: counts the crop must drop
    for k, (ia, ip) in enumerate(pts):
        full[k, r0:r0 + n1, c0:c0 + n2] = ds.frames[ia, ip]
    xy_um = ds.translations_m[:, :2] * 1e6
    scan = ScanDocument(n_points=len(pts), n_angles=geo.n_angles, n_positions=len(xy_um), raster_shape=geo.raster_shape,
                        order="angle-outer", snake=False, rocking_motor="eta", x_motor="x", y_motor="y",
                        x_unit_m=1e-6, y_unit_m=1e-6, x_centre=0.0, y_centre=0.0,
                        eta_centre_deg=float(ds.angles_deg[geo.n_angles // 2]), eta_setpoints_deg=ds.angles_deg,
                        x_setpoints=xy_um[:, 0], y_setpoints=xy_um[:, 1], detector="cam", image_key="cam_image",
                        frame_shape=shape, roi_origin=ROI)
    run = compose_run(metadata={"plan_name": "bragg_ptycho_scan", "bp_geometry": geo.to_dict(),
                                "bp_scan": scan.to_dict()})
    yield "start", run.start_doc
    res = None
    if not inline:
        with h5py.File(folder / "cam_000.h5", "w") as f:
            f["/entry/data/data"] = full
        res = run.compose_resource(spec="AD_HDF5", root=str(folder), resource_path="cam_000.h5",
                                   resource_kwargs={"frame_per_point": 1})
        yield "resource", res.resource_doc
    image = {"source": "cam", "dtype": "array", "shape": list(shape), **({} if inline else {"external": "FILESTORE:"})}
    keys = {"cam_image": image, **{k: {"source": "sim", "dtype": "number", "shape": []}
                                   for k in ("eta", "x", "y", "bp_index_angle", "bp_index_pos")}}
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    yield "descriptor", desc.descriptor_doc
    for k, (ia, ip) in enumerate(pts):
        if inline:
            img = full[k]
        else:
            datum = res.compose_datum(datum_kwargs={"point_number": k})
            yield "datum", datum
            img = datum["datum_id"]
        data = {"cam_image": img, "eta": float(ds.angles_deg[ia]), "x": float(xy_um[ip, 0]), "y": float(xy_um[ip, 1]),
                "bp_index_angle": ia, "bp_index_pos": ip}
        yield "event", desc.compose_event(data=data, timestamps={key: time.time() for key in data},
                                          **({} if inline else {"filled": {"cam_image": False}}))
    yield "stop", run.compose_stop(exit_status="success")


@pytest.mark.parametrize("inline", [True, False], ids=["inline whole frames", "AD_HDF5 resource/datum"])
def test_any_camera_reaches_the_reconstructor_cropped_and_masked(tiny_dataset, tmp_path, inline):
    ds, _ = tiny_dataset
    svc = ReconstructorService(ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "w", max_runs=1,
                                              device="cpu", live=LiveOptions(final_iterations=4, ml_iterations=1,
                                                                             figures=False)))
    th = svc.start()
    mask = np.ones((ds.geometry.crop[0] + MARGIN[0], ds.geometry.crop[1] + MARGIN[1]), bool)
    (r0, c0), (n1, n2) = ROI, ds.geometry.crop
    mask[r0:r0 + n1, c0:c0 + n2] = ds.mask                        # the camera's own mask, whole frame
    streamer = BlueskyFrameStreamer(FrameSender(svc.address), tap=None, mask=mask)
    streamer.confirm_timeout_s = 120
    uid = None
    for name, doc in camera_documents(ds, tmp_path, inline=inline):
        uid = uid or doc["uid"]
        streamer(name, doc)
    assert streamer.last_receipt["confirmed"], streamer.last_receipt
    streamer.close()
    th.join(120)
    st = svc.finished[uid]
    assert st["state"] == "final" and st["rejected"] == 0, st
    assert (st["placed"], st["recovered"]) == ((300, 0) if inline else (0, 300)), st
    spool = tmp_path / "w" / uid
    np.testing.assert_array_equal(np.load(spool / "frames.npy"), ds.frames.astype(np.float32))   # the crop, exactly
    np.testing.assert_array_equal(np.load(spool / "mask.npy"), ds.mask)


def test_a_detector_without_a_frame_hook_gets_one_line(tmp_path):
    from ophyd.sim import det

    with pytest.raises(ValueError, match="offers no frame_listeners") as e:
        DetectorFrameTap(det)
    assert "\n" not in str(e.value)


def test_a_run_whose_every_frame_is_refused_fails_saying_why(tiny_dataset, tmp_path):
    import zmq

    from streaming import protocol

    ds, _ = tiny_dataset
    svc = ReconstructorService(ServiceOptions(listen="tcp://127.0.0.1:0", workdir=tmp_path / "w", max_runs=1,
                                              device="cpu", live=LiveOptions(figures=False)))
    th = svc.start()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(svc.address)
    uid = "all-refused"
    push.send_multipart(protocol.encode_start(uid, 0, ds.geometry.to_dict(), ds.translations_m, 6))
    for k in range(6):                       # a camera's whole frames, sent with no ROI to crop them by
        push.send_multipart(protocol.encode_frame(uid, k + 1, np.ones((172, 172), np.uint32), frame_index=k,
                                                  angle_index=0, position_index=k))
    push.send_multipart(protocol.encode_stop(uid, 7, exit_status="success", n_frames=6))
    th.join(120)
    push.close(0)
    st = svc.finished[uid]
    assert st["state"] == "failed" and st["rejected"] == 6
    assert "6 rejected, first because frame shape (172, 172), the run's ROI is" in st["message"], st["message"]

"""Sources of the frame stream: a PUSH sender, a bluesky callback, a detector tap, a dataset sender.

- :class:`FrameSender` owns one ZeroMQ PUSH socket (PUSH blocks at its high-water mark instead of
  dropping, unlike PUB) and numbers the messages of each run (``seq``).
- :class:`BlueskyFrameStreamer` is a bluesky callback: it turns a ``bragg_ptycho_scan`` run's
  documents into ``start`` / ``mask`` / ``frame`` / ``stop`` messages. Frames come inline in the event
  (replay) or, for a live detector whose events only reference the HDF5 file, from a tap
  (:mod:`streaming.taps`: the detector's own frame hook, or the file read back in SWMR mode).
  Subscribe it through ``plans.monitor.buffered`` so the RunEngine never waits for the network.
- :func:`send_dataset` streams a recorded dataset file (docs/dataset-format.md).
- DF-XRM runs: :class:`streaming.dfxrm_sender.DfxrmFrameStreamer`, the same callback for ``plans.dfxrm``.

Raw frames are on disk before they are streamed; when the receiver is away the sender keeps going
(counting what it could not send) and the ``stop`` message lists the files, so the reconstructor
recovers every frame it missed.
"""
from __future__ import annotations

from pathlib import Path

import json
import logging
import time
from collections import OrderedDict

import numpy as np
import zmq

from bp_plugin.scan_document import run_scan

from . import protocol
from .taps import DEFAULT_DATASET, as_frame, uri_path as _uri_path

log = logging.getLogger(__name__)


class FrameSender:
    """One PUSH socket connected to a reconstructor.

    Args:
        address: e.g. ``tcp://127.0.0.1:5577``.
        hwm: messages queued before ``send`` blocks (PUSH never drops at the mark).
        timeout_s: longest a send may block (no receiver, or one that cannot keep up); after a
            timeout the sender is "stalled": later messages are counted unsent at once (no wait),
            with one real try every ``retry_s``, until a send succeeds again.
    """

    #: runs whose start / mask / stop messages are kept for :meth:`resend`
    KEEP_RUNS = 8

    def __init__(self, address: str, *, hwm: int = 1000, timeout_s: float = 30.0, retry_s: float = 5.0,
                 context=None):
        from .receipts import check_address

        self.address = check_address(address)
        self._ctx = self.context = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, int(hwm))
        self._sock.setsockopt(zmq.LINGER, 5000)
        self._sock.connect(address)
        self.timeout_s = float(timeout_s)
        self.retry_s = float(retry_s)
        self._stalled = False
        self._t_stalled = 0.0
        self.sent = 0
        self.unsent = 0
        self._seq: dict[str, int] = {}
        self._kept: OrderedDict = OrderedDict()          # run uid -> {kind: parts}

    def next_seq(self, run_uid: str) -> int:
        s = self._seq.get(run_uid, 0)
        self._seq[run_uid] = s + 1
        return s

    def _keep(self, parts: list) -> None:
        head = bytes(parts[0][:80])            # the header starts {"protocol":...,"version":1,"kind":"..."
        if b'"kind":"frame"' in head:
            return
        h = json.loads(bytes(parts[0]))
        if h.get("kind") in ("start", "mask", "stop"):
            kept = self._kept.setdefault(h["run_uid"], {})
            kept[h["kind"]] = [bytes(p) if not isinstance(p, np.ndarray) else p.copy() for p in parts]
            self._kept.move_to_end(h["run_uid"])
            while len(self._kept) > self.KEEP_RUNS:
                self._kept.popitem(last=False)

    def resend(self, run_uid: str, kinds) -> int:
        """Send the kept messages ``kinds`` (of start, mask, stop) of a run again; returns how many went."""
        n = 0
        for kind in kinds:
            parts = self._kept.get(run_uid, {}).get(kind)
            if parts is not None and self.send(parts):
                n += 1
        return n

    def confirm(self, run_uid: str, timeout_s: float = 30.0) -> dict:
        """Wait for the reconstructor's receipt of run ``run_uid`` (:func:`streaming.receipts.confirm`)."""
        from .receipts import confirm

        return confirm(self, run_uid, timeout_s=timeout_s)

    def send(self, parts: list) -> bool:
        """Send one multipart message (arrays without a copy); False if it could not be sent.
        Start, mask and stop messages are kept for :meth:`resend`."""
        self._keep(parts)
        if self._stalled and time.monotonic() - self._t_stalled < self.retry_s:
            try:                       # stalled: never wait, or a scan's end would wait per frame
                self._sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.unsent += 1
                return False
        else:
            self._sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
            try:
                self._sock.send_multipart(parts, copy=False)
            except zmq.Again:
                if not self._stalled:
                    log.warning("no reconstructor took messages at %s for %.0f s; going on without it (raw "
                                "frames stay in the detector files, the stop message lists them)",
                                self.address, self.timeout_s)
                self._stalled, self._t_stalled = True, time.monotonic()
                self.unsent += 1
                return False
        self._stalled = False
        self.sent += 1
        return True

    def close(self, linger_s: float = 5.0) -> None:
        self._sock.close(linger=int(linger_s * 1000))


#: resource specs of ophyd's areaDetector HDF5 plug-in, and the dataset its frames are in
AD_HDF5_SPECS = ("AD_HDF5", "AD_HDF5_SWMR")
AD_HDF5_DATASET = DEFAULT_DATASET               # areaDetector's HDF5 plug-in writes NeXus


class BlueskyFrameStreamer:
    """Bluesky callback streaming the frames of ``bragg_ptycho_scan`` runs (live or replayed).

    Frames come from any detector: inline in the events (cropped here to the run's ROI when they
    are whole detector frames), or written to HDF5 files and announced by ``stream_resource`` /
    ``stream_datum`` (ophyd-async) or ``resource`` / ``datum`` (ophyd's areaDetector HDF5 plug-in,
    spec ``AD_HDF5``). File-backed frames go out when the tap gives them (:mod:`streaming.taps`:
    the detector's hook, or its file read back); else the stop message lists their files and the
    reconstructor reads them back.

    Args:
        sender: the :class:`FrameSender`.
        tap: frames of a live detector (events that reference a file):
            :func:`streaming.taps.frame_tap` of the detector; None for inline frames (file-backed
            ones then reach the reconstructor from the files at the stop).
        mask: valid-pixel mask ``(rows, cols)`` of the whole detector frame, or of the crop
            (default: the tap's detector mask; none: the reconstructor derives one from the frames).
    """

    def __init__(self, sender: FrameSender, tap=None, mask: np.ndarray | None = None):
        self.sender, self.tap, self.mask = sender, tap, mask
        self._reset()

    def close(self) -> None:
        """Close the sender (after the last run: pending messages still go out, up to its linger)."""
        self.sender.close()

    def _reset(self):
        self.uid = None
        self._scan = None
        self._primary = None
        self._resources: dict[str, dict] = {}
        self._datums: list[tuple[dict, dict]] = []   # (stream datum, resource)
        self._res_frames: dict[str, list] = {}       # resource uid -> [[ia, ip, index in file], ...]
        self._ad_datums: dict[str, tuple[dict, int]] = {}   # AD_HDF5 datum id -> (resource, frame index)
        self._n_frames = 0
        self._mask_sent = False

    def __call__(self, name: str, doc: dict) -> None:
        getattr(self, f"_{name}", lambda d: None)(doc)

    def _start(self, doc):
        self._reset()
        if "bp_geometry" not in doc or "bp_scan" not in doc:
            return                                  # not a Bragg ptychography run: nothing to stream
        geo, s = run_scan(doc)
        self._scan = s
        self.uid = doc["uid"]
        self._crop_shape = tuple(geo.crop)
        self.sender.send(protocol.encode_start(self.uid, self.sender.next_seq(self.uid), doc["bp_geometry"],
                                               s.translations_m, s.n_points, scan=s.to_dict(), sim=doc.get("bp_sim")))

    def _descriptor(self, doc):
        if self.uid and doc.get("name") == "primary":
            self._primary = doc["uid"]

    def _stream_resource(self, doc):
        if self.uid:
            self._resources[doc["uid"]] = doc

    def _stream_datum(self, doc):
        if self.uid:
            self._datums.append((doc, self._resources.get(doc["stream_resource"])))

    def _resource(self, doc):
        """ophyd's areaDetector HDF5 plug-in: one resource per file, one datum per point."""
        if self.uid and doc.get("spec") in AD_HDF5_SPECS:
            path = str(Path(doc.get("root") or "/") / doc["resource_path"])
            self._resources[doc["uid"]] = {"uid": doc["uid"], "uri": path,
                                           "parameters": {"dataset": AD_HDF5_DATASET}, "frame_per_point":
                                           int((doc.get("resource_kwargs") or {}).get("frame_per_point", 1))}

    def _datum(self, doc):
        res = self._resources.get(doc.get("resource"))
        if self.uid and res is not None and "frame_per_point" in res:
            k = int(doc["datum_kwargs"].get("point_number", 0)) * res["frame_per_point"]
            self._ad_datums[doc["datum_id"]] = (res, k)

    def _send_mask(self) -> None:
        m = self.mask if self.mask is not None else (self.tap.mask if self.tap is not None else None)
        if m is not None and not self._mask_sent:
            m = np.asarray(m, bool)
            self.sender.send(protocol.encode_mask(self.uid, self.sender.next_seq(self.uid),
                                                  self._crop(m) if m.shape != self._crop_shape else m))
        self._mask_sent = True

    def _file_index(self, seq_num: int):
        for datum, res in reversed(self._datums):
            if datum["seq_nums"]["start"] <= seq_num < datum["seq_nums"]["stop"] and res is not None:
                return res, datum["indices"]["start"] + seq_num - datum["seq_nums"]["start"]
        return None, None

    def _crop(self, frame: np.ndarray) -> np.ndarray:
        return protocol.crop_roi(frame, self._scan.roi_origin, self._crop_shape)

    def _event(self, doc):
        if not self.uid or doc["descriptor"] != self._primary:
            return
        s, data = self._scan, doc["data"]
        ia, ip = int(data["bp_index_angle"]), int(data["bp_index_pos"])
        x_m, y_m = s.positions_m(data)
        motors = {"eta_deg": s.rocking_deg(data), "x_m": x_m, "y_m": y_m}
        motors = {k: v for k, v in motors.items() if np.isfinite(v)}
        img = data.get(s.image_key)
        source = None
        if isinstance(img, (np.ndarray, list)):
            frame = as_frame(img)                   # inline: a replay's crop, or a whole detector frame
            if frame.shape != self._crop_shape:
                frame = self._crop(frame)
            self._send_mask()
        else:
            res, k = self._ad_datums.get(img, (None, None)) if isinstance(img, str) else (None, None)
            if res is None:
                res, k = self._file_index(doc["seq_num"])
            frame = None
            if res is not None:
                source = {"file": _uri_path(res["uri"]), "dataset": res["parameters"]["dataset"], "index": [int(k)],
                          "roi_origin": list(s.roi_origin)}
                self._res_frames.setdefault(res["uid"], []).append([ia, ip, int(k)])
                full = self.tap.take(res["uri"], k, res["parameters"]["dataset"]) if self.tap is not None else None
                if full is not None:
                    frame = self._crop(full)
                self._send_mask()
            if frame is None:
                return                              # the receiver recovers it from the file at stop
        if frame.dtype.str not in protocol.FRAME_DTYPES:
            frame = frame.astype(np.uint32)
        self.sender.send(protocol.encode_frame(self.uid, self.sender.next_seq(self.uid), frame,
                                               frame_index=self._n_frames, angle_index=ia, position_index=ip,
                                               motors=motors, source=source))
        self._n_frames += 1

    def _stop(self, doc):
        if not self.uid:
            return
        sources = [{"format": "detector", "file": _uri_path(r["uri"]), "dataset": r["parameters"]["dataset"],
                    "roi_origin": list(self._scan.roi_origin), "frames": self._res_frames.get(r["uid"], [])}
                   for r in self._resources.values()]
        self.sender.send(protocol.encode_stop(self.uid, self.sender.next_seq(self.uid),
                                              exit_status=doc.get("exit_status", "unknown"),
                                              n_frames=self._n_frames, sources=sources))
        if self.tap is not None:
            self.tap.release()
        self._confirm()
        self.uid = None

    #: seconds the streamer waits for the reconstructor's receipt after a run (None: no receipt)
    confirm_timeout_s: float | None = 20.0

    def _confirm(self) -> None:
        if self.confirm_timeout_s is None:
            return
        r = self.sender.confirm(self.uid, self.confirm_timeout_s)
        self.last_receipt = r
        if r["confirmed"]:
            log.info("run %s: the reconstructor confirmed it (%s%s)", self.uid[:8], r.get("state"),
                     f", {r['resent']} messages sent again" if r["resent"] else "")
        else:
            log.warning("run %s: %s; its frames are safe in the detector files (export the run and reconstruct "
                        "it, or stream it again)", self.uid[:8], r["reason"])


def send_dataset(path, address: str, *, rate: float | None = None, run_uid: str | None = None,
                 progress: bool = True, sender: FrameSender | None = None, truth_file=None,
                 confirm_timeout_s: float | None = 30.0) -> dict:
    """Stream a dataset file's measured frames (angle-outer) as one run.

    Args:
        path: dataset file (docs/dataset-format.md).
        address: the reconstructor's address.
        rate: frames per second (None: as fast as the receiver takes them).
        truth_file: the ground-truth file the start message names (default: the scan file itself
            when it holds a ground truth, else none).
        run_uid: uid of the streamed run (default: a new uuid; the file's own run uid is sent in
            ``scan.source_run_uid``: streaming a file twice makes two runs, not duplicates).
        confirm_timeout_s: wait this long for the reconstructor's receipt of the run
            (:mod:`streaming.receipts`; None: do not ask).

    Returns: ``{"run_uid", "frames", "seconds", "unsent", "receipt"}`` (``receipt["confirmed"]``: the
    reconstructor holds the whole run; None when not asked).
    """
    import uuid

    from tqdm import tqdm

    from bp_plugin.dataset import read_dataset

    ds = read_dataset(path, allow_partial=True)
    uid = run_uid or str(uuid.uuid4())
    own = sender is None
    sender = sender or FrameSender(address)
    pts = [(ia, ip) for ia in range(ds.measured.shape[0]) for ip in range(ds.measured.shape[1]) if ds.measured[ia, ip]]
    # a simulated scan file holds its own ground truth: the service reads it from there
    truth_file = truth_file or (Path(path).resolve() if ds.ground_truth else None)
    sim = {"truth_file": str(truth_file)} if truth_file else None
    t0 = time.perf_counter()
    sender.send(protocol.encode_start(uid, sender.next_seq(uid), ds.geometry.to_dict(), ds.translations_m, len(pts),
                                      scan={"source": str(path), "source_run_uid": ds.metadata.get("run_uid")},
                                      sim=sim))
    sender.send(protocol.encode_mask(uid, sender.next_seq(uid), ds.mask))
    frames = np.ascontiguousarray(ds.frames)
    if frames.dtype.str not in protocol.FRAME_DTYPES:
        frames = frames.astype(np.float32 if frames.dtype.kind == "f" else np.uint32)
    for k, (ia, ip) in enumerate(tqdm(pts, desc=f"stream {uid[:8]}", unit="frame", disable=not progress)):
        if rate:
            time.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        t = ds.translations_m[ip]
        sender.send(protocol.encode_frame(uid, sender.next_seq(uid), frames[ia, ip], frame_index=k, angle_index=ia,
                                          position_index=ip, motors={"eta_deg": ds.angles_deg[ia], "x_m": t[0], "y_m": t[1]}))
    sender.send(protocol.encode_stop(uid, sender.next_seq(uid), exit_status="success", n_frames=len(pts),
                                     sources=[{"format": "bp-dataset", "file": str(path), "frames": [list(p) for p in pts]}]))
    receipt = sender.confirm(uid, confirm_timeout_s) if confirm_timeout_s is not None else None
    out = {"run_uid": uid, "frames": len(pts), "seconds": time.perf_counter() - t0, "unsent": sender.unsent,
           "receipt": receipt}
    if own:
        sender.close(linger_s=5.0 if receipt is None or receipt["confirmed"] else 0.0)
    return out

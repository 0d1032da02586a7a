"""The DF-XRM frame stream: the bluesky callback of ``plans.dfxrm`` runs (live or replayed).

The Bragg callback's machinery (:class:`streaming.sender.BlueskyFrameStreamer`: the detector
tap, resources and datums, the receipt after the stop) with DF-XRM's start message, frames and
stop listing.
"""
from __future__ import annotations

import numpy as np

from . import protocol
from .sender import BlueskyFrameStreamer, _uri_path
from .taps import as_frame


class DfxrmFrameStreamer(BlueskyFrameStreamer):
    """Bluesky callback streaming the frames of DF-XRM runs (``plans.dfxrm``), live or replayed.

    Whole camera frames go out with the scanned angles (the motors' readbacks) as
    ``motors["<axis>_deg"]``; the stop message lists every frame's file, index and angles so the
    receiver can recover what it missed.
    """

    def _start(self, doc):
        self._reset()
        if doc.get("technique") != "dfxrm" or "dfxrm_scan" not in doc:
            return
        self._scan = doc["dfxrm_scan"]
        self.uid = doc["uid"]
        self.sender.send(protocol.encode_dfxrm_start(self.uid, self.sender.next_seq(self.uid), doc["dfxrm_geometry"],
                                                     self._scan, self._scan["n_points"], sim=doc.get("dfxrm_sim"),
                                                     series=doc.get("series")))

    def _event(self, doc):
        if not self.uid or doc["descriptor"] != self._primary:
            return
        s, data = self._scan, doc["data"]
        angles = [float(data.get(s["motors"][a], np.nan)) for a in s["axes"]]
        motors = {f"{a}_deg": v for a, v in zip(s["axes"], angles)}
        img = data.get(s["image_key"])
        k = self._n_frames
        self._n_frames += 1
        source = None
        if isinstance(img, (np.ndarray, list)):
            frame = as_frame(img)
        else:
            res, i = self._file_index(doc["seq_num"])
            frame = None
            if res is not None:
                source = {"file": _uri_path(res["uri"]), "dataset": res["parameters"]["dataset"], "index": [int(i)]}
                self._res_frames.setdefault(res["uid"], []).append([k, int(i), *angles])
                frame = self.tap.take(res["uri"], i, res["parameters"]["dataset"]) if self.tap is not None else None
            if frame is None:
                return                      # the receiver recovers it from the file at stop
        if frame.dtype.str not in protocol.FRAME_DTYPES:
            frame = frame.astype(np.uint16 if frame.dtype.kind in "ui" and frame.max(initial=0) < 65536 else np.float32)
        self.sender.send(protocol.encode_frame(self.uid, self.sender.next_seq(self.uid), frame, frame_index=k,
                                               angle_index=k, position_index=0, motors=motors, source=source))

    def _stop(self, doc):
        if not self.uid:
            return
        sources = [{"format": "detector", "file": _uri_path(r["uri"]), "dataset": r["parameters"]["dataset"],
                    "frames": self._res_frames.get(r["uid"], [])} for r in self._resources.values()]
        self.sender.send(protocol.encode_stop(self.uid, self.sender.next_seq(self.uid),
                                              exit_status=doc.get("exit_status", "unknown"),
                                              n_frames=self._n_frames, sources=sources))
        if self.tap is not None:
            self.tap.release()
        self._confirm()
        self.uid = None

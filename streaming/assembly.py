"""One run as the reconstructor receives it: frames placed into an on-disk spool, with accounting.

The spool is a folder per run (``<workdir>/<run uid>/``): ``frames.npy`` (float32
``(n_angles, n_positions, N1, N2)``, memory-mapped), ``measured.npy`` (bool ``(n_angles,
n_positions)``), ``seen.npy`` (bool, one per seq number), ``mask.npy`` (when a mask was sent),
``start.json`` (written last: its presence marks a complete spool), ``stop.json`` (once the stop
message came) and, from the worker, ``checkpoint.npz``. A frame is written there when it arrives,
before the engine sees it, so a reconstructor killed mid-run restarts from the spool (plus its
checkpoint) and recovers the frames it never got from the files listed in the ``stop`` message.

Accounting, published with the status: every frame message of the run is ``received`` and ends up
exactly one of ``placed``, ``duplicates`` (its seq or its (angle, position) was already placed) or
``rejected`` (wrong shape, index out of range, NaN / negative values, ...; the first reasons are
published as ``rejection_reasons``): ``received = placed + duplicates + rejected``. These counters
are those of the current process (a restarted one starts
them at 0; ``frames_measured`` counts the spool). ``missing`` counts the frames whose seq number was
never seen (kept on disk, so it survives a restart), ``recovered`` the frames read back from files.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers bitshuffle-LZ4, the detector files' compression)
import numpy as np

from bp_plugin.geometry import ExperimentGeometry

from .protocol import Message, crop_roi
from .taps import DEFAULT_DATASET

log = logging.getLogger(__name__)


#: distinct rejection reasons kept per run (published with the status, shown by the viewer)
MAX_REASONS = 5


def _bad_values(f: np.ndarray) -> str | None:
    """Why a frame's values cannot be counts, or None."""
    if f.dtype.kind == "f" and not np.isfinite(f).all():
        return "frame holds NaN or infinite values"
    if f.dtype.kind in "fi" and (f < 0).any():
        return "frame holds negative counts"
    return None


class RunAssembly:
    """Frames of one run, placed as they arrive (thread-safe: the receiver places, the engine drains).

    Args:
        start: the ``start`` message header.
        folder: the run's spool folder (created; reused when it already holds this run).
    """

    technique = "bragg-ptychography"

    def __init__(self, start: dict, folder):
        self.start = start
        self.uid = start["run_uid"]
        self.geometry = ExperimentGeometry.from_dict(start["geometry"])
        self.translations_m = np.asarray(start["translations_m"], float)
        self.n_frames_expected = int(start["n_frames"])
        self.roi_origin = start.get("roi_origin")
        n_a, n_p = self.geometry.n_angles, len(self.translations_m)
        self.shape = (n_a, n_p) + tuple(self.geometry.crop)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        resume = (self.folder / "start.json").exists()
        mode = "r+" if resume else "w+"
        self.frames = np.lib.format.open_memmap(self.folder / "frames.npy", mode, np.float32, self.shape)
        self.measured_disk = np.lib.format.open_memmap(self.folder / "measured.npy", mode, np.bool_, (n_a, n_p))
        # seq numbers seen, on disk with the frames, so a restarted process still knows the gaps
        self._seen_disk = np.lib.format.open_memmap(self.folder / "seen.npy", mode, np.bool_,
                                                    (self.n_frames_expected + 64,))
        self.resumed = resume
        if not resume:
            (self.folder / "start.json").write_text(json.dumps(start))
        self._seen_extra: set[int] = set()
        self.max_seq = int(np.nonzero(self._seen_disk)[0].max()) if resume and self._seen_disk.any() else -1
        self.mask_sent: np.ndarray | None = None
        self._lo = np.full(self.shape[2:], np.inf, np.float32)   # running min / max for a derived mask
        self._hi = np.full(self.shape[2:], -np.inf, np.float32)
        self.counters = {"received": 0, "placed": 0, "duplicates": 0, "rejected": 0, "recovered": 0,
                         "out_of_order": 0}
        self.pending: list[tuple[int, int, float]] = []     # (ia, ip, time.monotonic() placed), not yet in the engine
        #: why frames were rejected: the first distinct reasons (then "other reasons") -> count
        self.rejections: dict[str, int] = {}
        self.stop: dict | None = None
        self.t_first_frame = self.t_last_frame = None     # wall clock (unix s) of the first / last placed frame
        self.t_created = time.time()
        self.lock = threading.Lock()
        if resume:
            if (self.folder / "mask.npy").exists():
                self.mask_sent = np.load(self.folder / "mask.npy")
            if (self.folder / "stop.json").exists():
                self.stop = json.loads((self.folder / "stop.json").read_text())
            for ia, ip in zip(*np.nonzero(self.measured_disk)):
                self._extend_range(self.frames[ia, ip])

    @classmethod
    def resume(cls, folder) -> "RunAssembly | None":
        """The assembly of a run spooled in ``folder`` by an earlier process, or None."""
        p = Path(folder) / "start.json"
        return cls(json.loads(p.read_text()), folder) if p.exists() else None

    # --- receiving --------------------------------------------------------------------------------
    def _extend_range(self, f: np.ndarray) -> None:
        np.minimum(self._lo, f, out=self._lo)
        np.maximum(self._hi, f, out=self._hi)

    def _check(self, msg: Message) -> str | None:
        h, f = msg.header, msg.array
        n_a, n_p = self.shape[:2]
        if not (0 <= h["angle_index"] < n_a and 0 <= h["position_index"] < n_p):
            return f"indices ({h['angle_index']}, {h['position_index']}) outside the scan ({n_a} x {n_p})"
        if f.shape != self.shape[2:]:
            r0, c0 = self.roi_origin if self.roi_origin is not None else (0, 0)
            if self.roi_origin is None or f.shape[0] < r0 + self.shape[2] or f.shape[1] < c0 + self.shape[3]:
                return (f"frame shape {f.shape}, the run's ROI is {self.shape[2:]}"
                        + (f" at {tuple(self.roi_origin)}" if self.roi_origin is not None else ""))
            f = msg.array = crop_roi(f, (r0, c0), self.shape[2:])   # the ROI of a whole detector frame
        return _bad_values(f)

    def place(self, msg: Message) -> str:
        """Place a ``frame`` message; returns ``placed``, ``duplicate`` or ``rejected: why``."""
        with self.lock:
            c = self.counters
            c["received"] += 1
            seq = msg.seq
            if self._seen(seq):
                c["duplicates"] += 1
                return "duplicate"
            self._mark_seen(seq)
            if seq < self.max_seq:
                c["out_of_order"] += 1
            self.max_seq = max(self.max_seq, seq)
            try:
                why = self._check(msg)
                if not why:
                    ia, ip = msg.header["angle_index"], msg.header["position_index"]
                    if self.measured_disk[ia, ip]:
                        c["duplicates"] += 1
                        return "duplicate"
                    self._store(ia, ip, msg.array)
            except Exception as exc:   # whatever the message holds, it ends in one of the three counts
                why = f"{type(exc).__name__}: {exc}"
            if why:
                c["rejected"] += 1
                key = why[:200] if why[:200] in self.rejections or len(self.rejections) < MAX_REASONS else "other reasons"
                self.rejections[key] = self.rejections.get(key, 0) + 1
                log.warning("run %s: frame seq %d rejected: %s", self.uid[:8], seq, why)
                return f"rejected: {why}"
            c["placed"] += 1
            now = time.time()
            self.t_first_frame = self.t_first_frame or now
            self.t_last_frame = now
            return "placed"

    def _seen(self, seq: int) -> bool:
        return bool(self._seen_disk[seq]) if 0 <= seq < len(self._seen_disk) else seq in self._seen_extra

    def _mark_seen(self, seq: int) -> None:
        if 0 <= seq < len(self._seen_disk):
            self._seen_disk[seq] = True
        else:
            self._seen_extra.add(seq)

    def _n_seen(self) -> int:
        return int(self._seen_disk.sum()) + len(self._seen_extra)

    def _store(self, ia: int, ip: int, frame: np.ndarray) -> None:
        f = np.asarray(frame, np.float32)
        self.frames[ia, ip] = f
        self.measured_disk[ia, ip] = True
        self._extend_range(f)
        self.pending.append((ia, ip, time.monotonic()))

    def set_mask(self, mask: np.ndarray) -> None:
        """Keep the sender's valid-pixel mask (bool, the ROI or the whole frame), on disk too."""
        if mask.shape != self.shape[2:] and self.roi_origin is not None:
            mask = crop_roi(mask, self.roi_origin, self.shape[2:])
        if mask.shape != self.shape[2:]:
            raise ValueError(f"mask of shape {mask.shape}, the run's ROI is {self.shape[2:]}")
        self.mask_sent = np.asarray(mask, bool).copy()
        np.save(self.folder / "mask.npy", self.mask_sent)

    def mask(self) -> np.ndarray:
        """The sent mask, else one derived from the frames so far (always 0 or never changing: masked)."""
        if self.mask_sent is not None:
            return self.mask_sent
        n = int(self.measured_disk.sum())
        dead = self._hi <= 0
        hot = (self._lo == self._hi) & (self._hi > 0) if n >= 4 else np.zeros_like(dead)
        return ~(dead | hot)

    def set_stop(self, header: dict) -> None:
        """The stop message: kept on disk, so a restarted process knows the run has ended."""
        (self.folder / "stop.json").write_text(json.dumps(header))
        self.stop = header

    def take_pending(self) -> list[tuple[int, int, float]]:
        """Frames placed since the last call: ``(angle index, position index, time.monotonic() placed)``."""
        with self.lock:
            out, self.pending = self.pending, []
            return out

    # --- status -----------------------------------------------------------------------------------
    @property
    def n_measured(self) -> int:
        return int(self.measured_disk.sum())

    @property
    def missing_seq(self) -> int:
        """Frame messages never seen: sent (from the stop message) or, before the stop, gaps below the
        highest seq seen (seq 0 is the start message, one more may be the mask)."""
        if self.stop is not None:
            return max(0, int(self.stop["n_frames"]) - self._n_seen())
        return max(0, self.max_seq - (self.mask_sent is not None) - self._n_seen())

    def status(self) -> dict:
        with self.lock:
            return {**self.counters, "frames_expected": self.n_frames_expected, "frames_measured": self.n_measured,
                    "missing": self.missing_seq, "pending": len(self.pending),
                    "first_frame_time": self.t_first_frame, "last_frame_time": self.t_last_frame,
                    **({"rejection_reasons": dict(self.rejections)} if self.rejections else {})}

    def flush(self) -> None:
        self._seen_disk.flush()
        self.frames.flush()
        self.measured_disk.flush()

    # --- recovery from files ------------------------------------------------------------------------
    def recover(self, sources: list[dict]) -> int:
        """Read back every frame listed in the stop message's ``sources`` that was never placed.

        Entries outside the scan, unreadable files and frames with impossible values are logged
        and skipped (the run ends with what could be read). Returns the number recovered.
        """
        n_a, n_p = self.shape[:2]
        n = 0
        for src in sources:
            try:
                todo = [fr for fr in src.get("frames", [])
                        if 0 <= int(fr[0]) < n_a and 0 <= int(fr[1]) < n_p and not self.measured_disk[fr[0], fr[1]]]
                if not todo:
                    continue
                for (ia, ip), frame in zip([fr[:2] for fr in todo], self._read_source(src, todo)):
                    why = _bad_values(frame) or (None if frame.shape == self.shape[2:] else f"shape {frame.shape}")
                    if why:
                        log.error("run %s: frame (%d, %d) in %s not recovered: %s", self.uid[:8], ia, ip,
                                  src.get("file"), why)
                        continue
                    with self.lock:
                        if not self.measured_disk[ia, ip]:
                            self._store(ia, ip, frame)
                            n += 1
            except Exception as exc:  # a bad source must not fail a run that has its other frames
                log.error("run %s: cannot recover frames from %s: %s", self.uid[:8], src.get("file"), exc)
        with self.lock:
            self.counters["recovered"] += n
        return n

    def _read_source(self, src: dict, todo: list):
        """Frames of ``todo`` entries ``[ia, ip, index in file...]`` from one source, in order."""
        if src.get("format") == "bp-dataset":
            from bp_plugin.dataset import read_dataset
            ds = read_dataset(src["file"], allow_partial=True)
            for ia, ip, *_ in todo:
                yield np.asarray(ds.frames[ia, ip])
            return
        origin = src.get("roi_origin") or (0, 0)
        with h5py.File(src["file"], "r", libver="latest", swmr=True) as f:
            d = f[src.get("dataset", DEFAULT_DATASET)]
            for _, _, k in todo:
                if not 0 <= int(k) < d.shape[0]:
                    raise IndexError(f"frame {k} is not in the file ({d.shape[0]} frames)")
                yield crop_roi(d[int(k)], origin, self.shape[2:])


def check_resources(h: dict, workdir) -> None:
    """Refuse (:class:`~streaming.protocol.ProtocolError`) a run, from its start header ``h``, whose
    spool the disk of ``workdir`` or whose engine the free memory cannot hold, before allocating."""
    import os
    import shutil

    from bp_plugin.geometry import ExperimentGeometry

    from .protocol import ProtocolError

    g = ExperimentGeometry.from_dict(h["geometry"])
    spool = g.n_angles * len(h["translations_m"]) * g.crop[0] * g.crop[1] * 4
    free = shutil.disk_usage(workdir).free
    if spool > 0.9 * free:
        raise ProtocolError(f"start message: the run's spool needs {spool / 2**30:.1f} GiB, the work folder "
                            f"{workdir} has {free / 2**30:.1f} GiB free: free space or bin the frames")
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return
    need = 3 * spool                      # amplitudes, their transposed copy, the host frames
    if need > avail:
        raise ProtocolError(f"start message: the reconstruction needs about {need / 2**30:.1f} GiB of memory, "
                            f"{avail / 2**30:.1f} GiB are free: bin the frames or reconstruct fewer positions")

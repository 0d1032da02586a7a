"""Publication of a reconstruction in Tiled: one container per run, updated in place about once a second.

Layout (publication version 1, documented in docs/streaming-protocol.md, read by the viewer):

``reconstructions/<raw run uid>`` container, metadata:

- ``kind = "bp-reconstruction"``, ``version``, ``raw_uid``;
- ``status``: ``state`` (``creating`` until the arrays exist, then ``waiting``, ``live``, ``final``,
  ``failed`` or ``interrupted``), frame counters, ``behind``, ``iteration``, ``error``, ``stage``,
  ``updated`` (unix time), ...;
- ``history``: ``{"iteration": [...], "error": [...], "stage": [...]}`` (the last ``HISTORY_MAX``
  iterations);
- ``grid``: lab grid of the maps: ``origin_m`` (x, y, z), ``voxel_m``, ``shape`` (z, y, x), ``axes``;
- ``probe_grid``: ``p1_m`` and ``r2_m`` axis coordinates of the probe section;
- ``units`` of each array, ``metrics`` (final, when the run was simulated: errors against ground truth).

Arrays (all written at the first publication and overwritten in place afterwards, same shapes):
``density`` / ``phase`` / ``eps_zz`` / ``omega_x`` / ``omega_y`` float32 ``(nz, ny, nx)`` chunked in
slabs of z (strain and tilts are NaN outside the crystal mask), ``probe_amplitude`` /
``probe_phase`` float32 ``(np1, N2)``, ``background`` float32 ``(n_angles, N1, N2)``, ``measured``
uint8 ``(n_angles, n_positions)``.

Publishing runs in its own thread: :meth:`TiledPublisher.submit` only swaps a "latest snapshot"
slot, so a slow server never slows the reconstruction (older snapshots are simply superseded).
A failed live snapshot is superseded by the next one; the *last* snapshot (the final result) is
tried again, with a growing pause, until it is published (``final_retry_s``, an hour by default),
and it waits on disk beside the run (:func:`keep_final`) until then, so a reconstructor started
after a longer outage publishes it (:func:`publish_pending`).
"""
from __future__ import annotations

import json
import logging
import threading
import time
import hashlib
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ROOT = "reconstructions"
PUBLICATION_VERSION = 1
HISTORY_MAX = 2000
UNITS = {"density": "arb. units (|rho|)", "phase": "rad", "eps_zz": "1 (strain)", "omega_x": "rad",
         "omega_y": "rad", "probe_amplitude": "arb. units", "probe_phase": "rad", "background": "counts/pixel",
         "measured": "1 = frame received"}
DIMS = {"density": ["z", "y", "x"], "phase": ["z", "y", "x"], "eps_zz": ["z", "y", "x"], "omega_x": ["z", "y", "x"],
        "omega_y": ["z", "y", "x"], "probe_amplitude": ["p1", "r2"], "probe_phase": ["p1", "r2"],
        "background": ["angle", "n1", "n2"], "measured": ["angle", "position"]}


def json_safe(v):
    """``v`` with NumPy scalars and arrays as plain Python, NaN / inf as None (Tiled metadata is JSON)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


def _slab_chunks(a: np.ndarray):
    """A dask array chunked in slabs along axis 0 (a few MB each): a z slice reads one chunk."""
    import dask.array as da

    per = max(1, int(4e6 // max(1, a[0].nbytes)))
    return da.from_array(a, chunks=(min(len(a), per),) + a.shape[1:])


def _digest(a: np.ndarray) -> bytes:
    """128-bit BLAKE2b of an array's bytes: whether a slab changed since it was last written."""
    return hashlib.blake2b(memoryview(np.ascontiguousarray(a)).cast("B"), digest_size=16).digest()


def _slabs(a: np.ndarray, lengths):
    """``(index, slab)`` of ``a`` cut along axis 0 into slabs of ``lengths`` (contiguous views)."""
    start = 0
    for b, n in enumerate(lengths):
        yield b, a[start:start + n]
        start += n


class TiledPublisher:
    """Keeps ``reconstructions/<raw_uid>`` in a Tiled server up to date.

    Args:
        client: a writable Tiled client (root node).
        raw_uid: uid of the raw run the reconstruction belongs to.
        min_interval_s: shortest time between two publications (s).
        root: top-level container (``reconstructions``; DF-XRM maps go to ``dfxrm``).
        units, dims: per-array units and dimension names (default: the reconstruction's).
        final_retry_s: how long the final snapshot is tried again when the server is away.
        pending_folder: where the final snapshot waits on disk until it is published (the run's
            folder; None: not kept).
        extra: a callable whose dict joins every snapshot's metadata (the service's counters).
    """

    def __init__(self, client, raw_uid: str, *, min_interval_s: float = 1.0, root: str = ROOT,
                 units: dict | None = None, dims: dict | None = None, description: str | None = None,
                 final_retry_s: float = 3600.0, pending_folder=None, extra=None):
        self.client = client
        self.raw_uid = raw_uid
        self.min_interval_s = float(min_interval_s)
        self.root = root
        self.units = UNITS if units is None else units
        self.dims = DIMS if dims is None else dims
        self.description = description or ("online Bragg ptychography reconstructions, one container per raw run uid"
                                           if root == ROOT else f"{root}: one container per raw run uid")
        self.published = 0
        self.final_published = False
        self.final_retry_s = float(final_retry_s)
        self.pending_folder = pending_folder
        self.extra = extra
        self.last_error: str | None = None
        self._node = None
        self._children: dict = {}
        self._slab_digests: dict = {}          # name -> {slab index: digest of what was last written}
        self.slabs_written = 0              # slabs of 3D arrays rewritten after their first publication
        self._slot = None
        self._cv = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"publish-{raw_uid[:8]}")
        self._thread.start()

    # --- the reconstruction's side ----------------------------------------------------------------
    def submit(self, metadata: dict, arrays: dict | None = None) -> None:
        """Offer a snapshot (never blocks); ``arrays=None`` updates the metadata only."""
        metadata = json_safe({**metadata, **(self.extra() if self.extra else {})})
        with self._cv:
            if self._slot is not None and arrays is None:
                arrays = self._slot[1]          # keep pending arrays when only metadata is newer
            self._slot = (metadata, arrays)
            self._cv.notify()

    def close(self, metadata: dict | None = None, arrays: dict | None = None, timeout: float = 30.0) -> bool:
        """Publish a last snapshot (the final result) and stop the thread; waits up to ``timeout`` s
        and returns whether it is published (if not, the thread goes on trying for ``final_retry_s``,
        and the snapshot waits in ``pending_folder`` for a later process)."""
        if metadata is not None:
            state = (metadata.get("status") or {}).get("state")
            if self.pending_folder is not None and state in ("final", "failed"):   # not "interrupted": it resumes
                keep_final(self.pending_folder, metadata, arrays, self.root)
            self.submit(metadata, arrays)
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)
        return self.final_published

    # --- the thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        last = 0.0
        t_final, pause = None, 1.0
        while True:
            with self._cv:
                while self._slot is None and not self._closing:
                    self._cv.wait()
                if self._slot is None and self._closing:
                    return
                closing = self._closing
            if not closing:
                time.sleep(max(0.0, self.min_interval_s - (time.monotonic() - last)))
            with self._cv:
                snap, self._slot = self._slot, None
            last = time.monotonic()
            try:
                self._publish(*snap)
                self.published += 1
                self.last_error = None
                if closing:
                    with self._cv:
                        self.final_published = self._slot is None
                    if self.final_published and self.pending_folder is not None:
                        published_final(self.pending_folder)
            except Exception as exc:  # a server hiccup must not stop the reconstruction
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not closing:
                    log.warning("publication to Tiled failed (will retry with the next snapshot): %s", self.last_error)
                    continue
                # the last snapshot: nothing supersedes it, so try it again until the server is back
                t_final = t_final or time.monotonic()
                if time.monotonic() - t_final > self.final_retry_s:
                    log.error("run %s: the final result could not be published in %.0f s (%s); it waits on disk "
                              "for the next reconstructor start", self.raw_uid[:8], self.final_retry_s, self.last_error)
                    return
                log.warning("run %s: publishing the final result failed (%s); trying again in %.0f s",
                            self.raw_uid[:8], self.last_error, pause)
                with self._cv:
                    if self._slot is None:
                        self._slot = snap
                time.sleep(pause)
                pause = min(2 * pause, 30.0)

    def _container(self, metadata: dict):
        if self._node is not None:
            return self._node
        root = self.client
        if self.root not in root:
            try:
                root.create_container(self.root, metadata={"description": self.description})
            except Exception:
                if self.root not in root:
                    raise
        parent = root[self.root]
        if self.raw_uid in parent:
            self._node = parent[self.raw_uid]
        else:   # a placeholder status: readers keyed on status.updated wait until the arrays exist
            self._node = parent.create_container(self.raw_uid, metadata={
                k: metadata[k] for k in ("kind", "version", "raw_uid") if k in metadata} | {"status": {"state": "creating"}})
        return self._node

    def _publish(self, metadata: dict, arrays: dict | None) -> None:
        node = self._container(metadata)
        for name, a in (arrays or {}).items():
            a = np.ascontiguousarray(a)
            child = self._children.get(name)
            if child is None and name in node:     # a restarted reconstructor takes over its arrays
                child = self._children[name] = node[name]
            if child is not None:
                if tuple(child.shape) != a.shape:
                    raise ValueError(f"{name}: published shape {tuple(child.shape)} cannot change to {a.shape}")
                self._rewrite(name, child, a)
            else:
                data = _slab_chunks(a) if a.ndim == 3 else a
                dims = self.dims.get(name)
                dims = dims if dims is None or len(dims) == a.ndim else None   # a volume of 2D maps: see metadata
                self._children[name] = node.write_array(data, key=name, dims=dims,
                                                        metadata={"units": self.units.get(name, "")})
                if a.ndim == 3:
                    self._slab_digests[name] = {b: _digest(s) for b, s in _slabs(a, data.chunks[0])}
        node.update_metadata(metadata=metadata, drop_revision=True)

    def _rewrite(self, name: str, child, a: np.ndarray) -> None:
        """A published array's new values. A 3D one chunked in slabs along axis 0 has only the
        slabs that changed since the last publication written (a BLAKE2b digest per slab): a
        volume growing layer by layer, or projections arriving one by one, does not send the
        finished ones again."""
        chunks = getattr(child.structure(), "chunks", None)
        if a.ndim != 3 or not chunks or any(len(c) != 1 for c in chunks[1:]):
            child.write(a)
            return
        seen = self._slab_digests.setdefault(name, {})
        for b, slab in _slabs(a, chunks[0]):
            d = _digest(slab)
            if seen.get(b) != d:
                child.write_block(slab, (b, 0, 0))
                seen[b] = d
                self.slabs_written += 1


# --- the final snapshot on disk until it is published ------------------------------------------------
PENDING = "unpublished_final"


def keep_final(folder, metadata: dict, arrays: dict | None, root: str = ROOT) -> None:
    """Write the final snapshot beside the run (``unpublished_final.json`` / ``.npz``) before publishing it."""
    folder = Path(folder)
    np.savez(folder / f"{PENDING}.npz", **{k: np.asarray(v) for k, v in (arrays or {}).items()})
    (folder / f"{PENDING}.json").write_text(json.dumps({"root": root, "metadata": json_safe(metadata)}))


def published_final(folder) -> None:
    """The final snapshot reached Tiled: drop its copy on disk."""
    for ext in ("json", "npz"):
        (Path(folder) / f"{PENDING}.{ext}").unlink(missing_ok=True)


def publish_pending(client, workdir, **kw) -> list[str]:
    """Publish the final snapshots that earlier processes could not (a long Tiled outage), each in
    the background; returns the run uids started."""
    started = []
    for meta_path in sorted(Path(workdir).glob(f"*/{PENDING}.json")):
        folder = meta_path.parent
        try:
            kept = json.loads(meta_path.read_text())
            with np.load(folder / f"{PENDING}.npz") as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            log.warning("run %s: its unpublished final result cannot be read (%s)", folder.name[:8], exc)
            continue
        kwargs = dict(kw, root=kept["root"])
        if kept["root"] != ROOT:
            from .dfxrm_live import DIMS as DFXRM_DIMS, UNITS as DFXRM_UNITS
            kwargs.update(units=DFXRM_UNITS, dims=DFXRM_DIMS)
        pub = TiledPublisher(client, folder.name, **kwargs)     # the copy on disk is there already

        def finish(pub=pub, folder=folder, md=kept["metadata"], arrays=arrays):
            if pub.close(md, arrays or None, timeout=pub.final_retry_s + 60):
                published_final(folder)
                log.info("run %s: final result published (it had waited on disk)", folder.name[:8])
        threading.Thread(target=finish, daemon=True, name=f"republish-{folder.name[:8]}").start()
        started.append(folder.name)
    return started

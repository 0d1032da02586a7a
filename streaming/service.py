"""The online reconstructor service: ``bp-plugin reconstructor --listen tcp://127.0.0.1:PORT``.

Two threads. The receiver binds a PULL socket (PUSH/PULL never drops at the high-water mark: a
sender blocks instead) and only decodes, checks and places frames into the run's on-disk spool
(:mod:`streaming.assembly`), so ingest never waits for the reconstruction. The worker takes runs
one after another (a long-lived service: no restart between scans) through one run loop for every
technique (:mod:`streaming.techniques`): for Bragg ptychography it refines probe, object and
background while frames arrive (:mod:`streaming.live`), for DF-XRM it recomputes the maps from the
moments the receiver keeps (:mod:`streaming.dfxrm_live`); it publishes to Tiled about once a second
(:mod:`streaming.publish`, its own thread), checkpoints, and at the stop message recovers missed
frames from the detector files, runs the final phase and publishes the final result.

Beside the PULL socket a REP socket one port higher answers receipt queries (what the service
holds of a run; :mod:`streaming.receipts`), so senders know their run arrived whole.

Malformed messages are counted, logged and skipped; nothing a sender does can stop the service.
A frame of a run this process never saw start is taken over from the run's spool folder when an
earlier process left one (restart in the middle of a run), else counted as an orphan.
"""
from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from bp_plugin.backend import get_backend
from bp_plugin.defaults import IDLE_TIMEOUT_S, LISTEN

from .live import LiveOptions
from .notices import publish_notice, queued_message, start_uid
from .protocol import ProtocolError, decode
from .receipts import bind_pair, decode_query
from .techniques import technique_of
from .workdir import done_on_disk, mark_failed, resume_run, unfinished_runs

log = logging.getLogger(__name__)


@dataclass
class ServiceOptions:
    """Settings of the service.

    Attributes:
        listen: ZeroMQ address to bind (``bp_plugin.defaults.LISTEN``, loopback; port 0 or ``*``
            picks a free one).
        workdir: spool, checkpoints and results, one folder per run.
        tiled_url, api_key: where results are published (None: not published).
        tiled_wait_s: how long an unreachable Tiled server is waited for at start (one started
            with the service); 0: the start fails at once, clearly.
        device: ``auto``, ``cpu`` or ``gpu``.
        max_runs: stop after this many runs (None: serve until stopped).
        idle_timeout_s: a run without its stop message and without a frame for this long is
            finished with the frames it has once a newer run waits (a sender that died).
        rcvhwm: messages the PULL socket queues before senders block.
        max_message_bytes: largest message part taken (256 MiB: an 8192 x 8192 float32 frame); a
            sender of a larger one is disconnected before it is held in memory.
        live: :class:`LiveOptions`.
    """

    listen: str = LISTEN
    workdir: Path = Path("out/reconstructor")
    tiled_url: str | None = None
    api_key: str | None = field(default=None, repr=False)    # never in a log line
    tiled_wait_s: float = 0.0
    device: str = "auto"
    max_runs: int | None = None
    rcvhwm: int = 10000
    max_message_bytes: int = 256 << 20
    idle_timeout_s: float = IDLE_TIMEOUT_S
    live: LiveOptions = field(default_factory=LiveOptions)


# messages found waiting in one drain of the socket that make the engine pause for the receiver
BACKLOG_MESSAGES = 16
# longest the engine waits for the receiver at one pause point (s): iterations never stop for good
MAX_PAUSE_S = 0.5


class _Stopped(Exception):
    """The service was asked to stop (Ctrl-C, SIGTERM) in the middle of a run."""


class ReconstructorService:
    """Receiver and worker of the online reconstruction (see the module docstring)."""

    def __init__(self, opts: ServiceOptions, *, progress=None, ranks=None):
        self.opts = opts
        #: the MPI ranks a Bragg run's engine is spread over (streaming.engine_ranks.Leader), or None
        self.ranks = ranks
        self.workdir = Path(opts.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client = None
        if opts.tiled_url:
            from bp_plugin.tiled_server import connect
            # fails now, clearly, on a bad URL or key
            self.client = connect(opts.tiled_url, opts.api_key, wait_s=opts.tiled_wait_s)
        self.backend = get_backend(opts.device)
        self._ctx = zmq.Context()
        self._sock, self._receipts, self.address = bind_pair(self._ctx, opts.listen, opts.rcvhwm,
                                                             opts.max_message_bytes)
        self.runs: dict = {}                           # uid -> the run's assembly (streaming.techniques)
        self.finished: dict[str, dict] = {}
        self.counters = {"messages": 0, "malformed": 0, "orphans": 0, "late": 0, "rejected_starts": 0}
        self._todo: queue.Queue = queue.Queue()
        self._current: str | None = None               # the run the worker is on (read by the receiver)
        self._stop = threading.Event()
        self.progress = progress
        self._t_pub = 0.0                              # the last live publication (monotonic s)
        # set by the receiver while messages queue up faster than it takes them: the engine then
        # waits between positions, so ingest keeps the pace of the wire (frames before iterations)
        self._backlog = threading.Event()
        self._rx = threading.Thread(target=self._receive, daemon=True, name="bp-receiver")
        if self.client is not None:                    # finals an outage kept from Tiled, left on disk
            from .publish import publish_pending
            for uid in publish_pending(self.client, self.workdir, min_interval_s=opts.live.publish_interval_s):
                log.info("run %s: publishing its final result, which an earlier process could not", uid[:8])
        # runs an earlier process left unfinished (a failed one is not tried again at every start)
        for asm in unfinished_runs(self.workdir, self.backend):
            self.runs[asm.uid] = asm
            self._todo.put(asm.uid)
            if asm.stop is not None:
                log.info("run %s: ended while no reconstructor ran; finishing it", asm.uid[:8])
            else:
                asm.adopted = True
                log.info("run %s: left without its stop message by an earlier process; adopted (it ends "
                         "with the frames it gets, %.0f s after the last one)", asm.uid[:8], opts.idle_timeout_s)

    # --- receiver -----------------------------------------------------------------------------------
    def _receive(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._receipts, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(100))
            if not events:
                self._backlog.clear()
                continue
            if self._receipts in events:
                self._answer_receipt()
            if self._sock not in events:
                continue
            for n in range(256):            # drain what is queued: one poll per burst, not per message
                try:
                    parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    self._backlog.clear()   # drained: the engine goes on
                    break
                if n == BACKLOG_MESSAGES:   # this many were waiting: the engine holds ingest back
                    self._backlog.set()
                self._handle(parts)
        self._sock.close(0)          # by the thread that used it: ZeroMQ sockets are not thread-safe
        self._receipts.close(0)

    def _drain(self, limit: int = 100_000) -> None:
        """Take every data message already queued (before a receipt, which must count them)."""
        for _ in range(limit):
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(parts)

    def _handle(self, parts) -> None:
        self.counters["messages"] += 1
        try:
            self._dispatch(decode(parts))
        except ProtocolError as exc:
            self.counters["malformed"] += 1
            log.warning("malformed message skipped: %s", exc)
            self._refused(parts, str(exc))
        except Exception as exc:  # never fatal: count, log, go on
            self.counters["malformed"] += 1
            log.exception("message could not be handled: %s", exc)

    def _answer_receipt(self) -> None:
        """Answer one receipt query (REP: every request gets exactly one reply)."""
        raw = self._receipts.recv()
        try:
            uid = decode_query(raw)
        except ProtocolError as exc:
            self.counters["malformed"] += 1
            self._receipts.send(json.dumps({"error": str(exc)}).encode())
            return
        self._drain()
        reply = {"run_uid": uid, "known": False, "stop": False, "state": "unknown", "frames_placed": 0}
        done = self._finished_state(uid)
        if done:
            reply.update(known=True, stop=True, state=done)
        else:
            asm = self._assembly(uid)                  # a run an earlier process spooled is taken over here
            if asm is not None:
                status = asm.status()
                reply.update(known=True, stop=asm.stop is not None, state="receiving",
                             frames_placed=int(status.get("placed", status.get("frames_measured", 0))))
        self._receipts.send(json.dumps(reply).encode())

    def _refused(self, parts, reason: str) -> None:
        """A refused start message of a run with a usable uid: counted, and its refusal published
        (status "failed" and why)."""
        uid = start_uid(parts)
        if uid is None or uid in self.runs:
            return
        self.counters["rejected_starts"] += 1
        if self.client is not None:
            publish_notice(self._publisher(uid, keep=False), uid, "failed", f"start message refused: {reason}")

    def _announce_waiting(self, uid: str, behind: str) -> None:
        """A run queued behind another is shown in Tiled at once as "waiting", and behind what."""
        why = queued_message(behind, self.opts.idle_timeout_s)
        log.info("run %s: %s", uid[:8], why)
        if self.client is not None:
            publish_notice(self._publisher(uid, keep=False), uid, "waiting", why)

    def _finished_state(self, uid: str) -> str | None:
        """The end state of run ``uid`` when this process or an earlier one finished it, else None."""
        return self.finished.get(uid, {}).get("state") or done_on_disk(self.workdir, uid)

    def _assembly(self, uid: str):
        asm = self.runs.get(uid)
        if asm is None and uid not in self.finished and not done_on_disk(self.workdir, uid):
            # a run an earlier process had started
            asm = resume_run(self.workdir / uid, self.backend)
            if asm is not None:
                log.info("run %s: taken over from the spool of an earlier process", uid[:8])
                self.runs[uid] = asm
                self._todo.put(uid)
        return asm

    def _dispatch(self, msg) -> None:
        uid = msg.run_uid
        if msg.kind == "start":
            if uid in self.runs:
                return                                  # the start again (a sender's resend): nothing new
            done = self._finished_state(uid)
            if done:
                self.counters["late"] += 1
                log.warning("run %s: a start message for a run already %s; ignored (a new scan needs a new uid)",
                            uid[:8], done)
                return
            asm = technique_of(msg.header).open(msg.header, self.workdir / uid, self.workdir, self.backend)
            self.runs[uid] = asm
            self._todo.put(uid)
            if self._current not in (None, uid):
                self._announce_waiting(uid, self._current)
            return
        # the folder is looked at only for a run this process does not hold (not per frame)
        if uid not in self.runs and self._finished_state(uid):
            self.counters["late"] += 1
            if self.counters["late"] in (1, 10, 100, 1000) or self.counters["late"] % 10000 == 0:
                log.warning("a %s message of run %s, already finished, ignored (%d such so far)", msg.kind, uid[:8],
                            self.counters["late"])
            return
        asm = self._assembly(uid)
        if asm is None:
            self.counters["orphans"] += 1
            log.warning("message %s of run %s arrived without its start message; skipped", msg.kind, uid[:8])
            return
        if msg.kind == "frame":
            asm.place(msg)
        elif msg.kind == "mask":
            asm.set_mask(msg.array.astype(bool))
        elif msg.kind == "stop":
            asm.set_stop(msg.header)

    # --- worker -------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Take runs until ``max_runs`` are done or :meth:`shutdown` is called."""
        # the engine thread holds the GIL between array operations; a short switch interval lets
        # the receiver take messages off the socket promptly (benchmarks/bench_streaming.py)
        sys.setswitchinterval(5e-4)
        self._rx.start()
        done = 0
        try:
            while not self._stop.is_set() and (self.opts.max_runs is None or done < self.opts.max_runs):
                try:
                    uid = self._todo.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._current = uid
                try:
                    self.finished[uid] = self._run(self.runs[uid])
                except Exception as exc:   # one bad run (out of memory, ...) must not stop the service
                    log.exception("run %s could not be reconstructed", uid[:8])
                    self.finished[uid] = {"state": "failed", "message": f"{type(exc).__name__}: {exc}"}
                finally:
                    self._current = None
                if self.finished[uid].get("state") == "failed":
                    mark_failed(self.workdir, uid, self.finished[uid])
                self.runs.pop(uid, None)
                done += 1
        finally:
            self.shutdown()
            if self._rx.is_alive() and threading.current_thread() is not self._rx:
                self._rx.join()
            self._ctx.term()

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, the demo); returns the thread."""
        t = threading.Thread(target=self.serve, daemon=True, name="bp-reconstructor")
        t.start()
        return t

    def shutdown(self) -> None:
        """Ask both threads to stop (the current run is checkpointed); :meth:`serve` then returns."""
        self._stop.set()

    def _yield_to_receiver(self) -> None:
        """The engine's pause hook: wait while the receiver has a backlog (at most ``MAX_PAUSE_S``)."""
        if not self._backlog.is_set():
            return
        t0 = time.monotonic()
        while self._backlog.is_set() and not self._stop.is_set() and time.monotonic() - t0 < MAX_PAUSE_S:
            time.sleep(0.001)

    def _publisher(self, uid: str, keep: bool = True, technique=None):
        if self.client is None:
            return None
        from .publish import TiledPublisher
        return TiledPublisher(self.client, uid, min_interval_s=self.opts.live.publish_interval_s,
                              pending_folder=self.workdir / uid if keep else None,
                              extra=lambda: {"service": dict(self.counters)},
                              **(technique.publication if technique else {}))

    def _abandoned(self, asm) -> bool:
        """No stop message, no frame for ``idle_timeout_s``, and a newer run waiting or nobody left
        to send the stop (a run adopted at start-up): end this one."""
        last = asm.t_last_frame or asm.t_created
        return (asm.stop is None and (not self._todo.empty() or getattr(asm, "adopted", False))
                and time.time() - last > self.opts.idle_timeout_s)

    def _run(self, asm) -> dict:
        """The one run loop of every technique (:mod:`streaming.techniques`): live work until the
        stop message, then recovery of missed frames, the final phase, result and publication."""
        tech, opts = technique_of(asm), self.opts.live
        pub = work = None
        t_ck = self._t_pub = 0.0
        try:
            work = tech.work(asm, opts, self.backend, self._yield_to_receiver, ranks=self.ranks)
            pub = self._publisher(asm.uid, technique=tech)
            if pub:
                pub.submit(*work.first_snapshot())
            while not self._stop.is_set():
                work.ingest()
                if asm.stop is not None and not work.pending:
                    break
                if self._abandoned(asm):
                    log.warning("run %s: no stop message and no frame for %.0f s while a newer run waits; "
                                "finishing it with the frames it has", asm.uid[:8], self.opts.idle_timeout_s)
                    asm.set_stop({"exit_status": "no stop message", "n_frames": asm.n_frames_expected})
                    break
                if work.live_step() is None:
                    time.sleep(work.idle_s)
                self._publish_live(work, pub)
                now = time.monotonic()
                if now - t_ck >= opts.checkpoint_interval_s:
                    work.checkpoint()
                    t_ck = now
                self._report(work)
            if self._stop.is_set():
                raise _Stopped
            asm.recover(asm.stop.get("sources") or [])
            return work.complete(pub, lambda: self._final_tick(work, pub))
        except _Stopped:
            work.checkpoint()
            if pub:
                pub.close(work.metadata("interrupted"))
            return {"state": "interrupted"}
        except Exception as exc:
            log.exception("%s run %s failed", tech.name, asm.uid[:8])
            if getattr(work, "ranks", None) is not None:
                work.ranks.fail(asm.uid, exc)
            if pub:
                md = work.metadata("failed")
                md["status"]["message"] = f"{type(exc).__name__}: {exc}"
                pub.close(md)
            return {"state": "failed", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            if work is not None and hasattr(work, "release"):
                work.release()

    def _publish_live(self, work, pub) -> None:
        """A live snapshot to Tiled once per publish interval (maps cost: only when published)."""
        if pub and time.monotonic() - self._t_pub >= self.opts.live.publish_interval_s:
            snap = work.live_snapshot()
            if snap is not None:
                pub.submit(*snap)
            self._t_pub = time.monotonic()

    def _final_tick(self, work, pub) -> None:
        if self._stop.is_set():
            raise _Stopped
        self._publish_live(work, pub)
        self._report(work)

    def _report(self, work) -> None:
        if self.progress is not None:
            self.progress(work.status(work.stage))

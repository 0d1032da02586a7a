"""Command-line entry points of the streaming side: ``reconstructor``, ``stream`` and ``replay --stream``.

``bp_plugin.cli`` only parses arguments and calls these.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

from bp_plugin import defaults


def status_line(st: dict) -> str:
    """One line of reconstruction status, for terminals and logs."""
    err = st.get("error")
    return (f"[{st.get('state', '?'):>7}] frames {st.get('frames_measured', 0)}/{st.get('frames_expected', '?')} "
            f"(placed {st.get('placed', 0)}, dup {st.get('duplicates', 0)}, rejected {st.get('rejected', 0)}, "
            f"missing {st.get('missing', 0)}, recovered {st.get('recovered', 0)}) "
            f"it {st.get('iteration', 0)} {st.get('stage', '')} error {err if err is None else f'{err:.4g}'}"
            f"{'  BEHIND' if st.get('behind') else ''}")


def run_reconstructor(listen: str, workdir, *, tiled_url=None, api_key=None, device="auto", max_runs=None,
                      final_iterations=defaults.STREAM_FINAL.iterations,
                      ml_iterations=defaults.STREAM_FINAL.ml_iterations,
                      publish_interval_s=defaults.PUBLISH_INTERVAL_S, checkpoint_interval_s=defaults.CHECKPOINT_INTERVAL_S,
                      catch_up_per_angle=defaults.CATCH_UP_PER_ANGLE, quiet=False,
                      idle_timeout_s=defaults.IDLE_TIMEOUT_S, mpi=None, tiled_wait_s=0.0) -> int:
    """``bp-plugin reconstructor``: serve until Ctrl-C / SIGTERM (or ``max_runs`` runs). Launched by
    ``mpirun -n N`` (or with ``mpi``), rank 0 serves and ranks 1..N-1 hold their shares of each Bragg
    run's engine (:mod:`streaming.engine_ranks`)."""
    from bp_plugin.recon.mpi import use_local_gpu, world

    from .engine_ranks import Leader, follow
    from .live import LiveOptions
    from .service import ReconstructorService, ServiceOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    comm = world(mpi)
    if comm is not None and device != "cpu":
        use_local_gpu(comm)
    if comm is not None and comm.rank > 0:
        # the followers only compute; Ctrl-C and SIGTERM reach rank 0, which checkpoints and ends them
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from bp_plugin.backend import get_backend
        return follow(comm, get_backend(device))
    ranks = Leader(comm) if comm is not None else None
    logging.getLogger("httpx").setLevel(logging.WARNING)        # one line per HTTP request otherwise
    last = [0.0]

    def progress(st):
        if not quiet and time.monotonic() - last[0] > 2.0:
            print(status_line(st), flush=True)
            last[0] = time.monotonic()

    opts = ServiceOptions(listen=listen, workdir=Path(workdir), tiled_url=tiled_url, api_key=api_key,
                          tiled_wait_s=tiled_wait_s, device=device,
                          max_runs=max_runs, idle_timeout_s=idle_timeout_s, live=LiveOptions(final_iterations=final_iterations,
                                                              ml_iterations=ml_iterations,
                                                              publish_interval_s=publish_interval_s,
                                                              checkpoint_interval_s=checkpoint_interval_s,
                                                              catch_up_per_angle=catch_up_per_angle))
    try:
        svc = ReconstructorService(opts, progress=progress, ranks=ranks)
    except BaseException:
        if ranks is not None:      # the followers wait for rank 0's first command: tell them to end
            ranks.end()
        raise

    def stop(signum, frame):
        print(f"signal {signum}: checkpointing the current run and stopping", flush=True)
        svc.shutdown()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
    spread = f", engine on {comm.size} MPI ranks" if comm is not None else ""
    print(f"reconstructor listening on {svc.address} (device {svc.backend.device}{spread}, work folder {opts.workdir}"
          f"{', publishing to ' + tiled_url if tiled_url else ', not publishing'})", flush=True)
    (Path(workdir) / "ready").write_text(svc.address)
    try:
        svc.serve()
    finally:
        if ranks is not None:
            ranks.end()
    for uid, st in svc.finished.items():
        print(f"run {uid[:8]}: {st.get('state')}; result {st.get('result', '-')}", flush=True)
    return 0


def stream_dataset(path, to: str, *, rate=None, progress=True, confirm_timeout_s: float = 30.0) -> int:
    """``bp-plugin stream scan.h5 --to tcp://...``: 0 once the reconstructor confirmed the whole run,
    1 (one line on stderr saying why) when it did not."""
    from .sender import send_dataset

    r = send_dataset(path, to, rate=rate, progress=progress, confirm_timeout_s=confirm_timeout_s)
    receipt = r["receipt"]
    if not receipt["confirmed"]:
        print(f"bp-plugin stream: error: {receipt['reason']}; the frames are safe in {path}: stream it again, "
              f"or reconstruct it offline (bp-plugin reconstruct {path})", file=sys.stderr)
        return 1
    note = f" ({r['unsent']} not taken: the reconstructor reads them from the file)" if r["unsent"] else ""
    again = f", {receipt['resent']} messages sent again" if receipt["resent"] else ""
    print(f"streamed {r['frames']} frames of run {r['run_uid']} to {to} in {r['seconds']:.1f} s{note}; "
          f"the reconstructor confirmed the run ({receipt['state']}{again})")
    return 0


def replay_streamer(to: str):
    """A bluesky callback streaming replayed documents (inline frames) to ``to``; call ``.close()`` after."""
    from .sender import BlueskyFrameStreamer, FrameSender

    return BlueskyFrameStreamer(FrameSender(to))

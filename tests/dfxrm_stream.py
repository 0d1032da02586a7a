"""A DF-XRM plan run with its frames streamed: a real RunEngine, the camera's frames over ZeroMQ to a
real reconstructor service that publishes to the session's Tiled server, the documents written to
it by bluesky's TiledWriter (the set-up the streamed DF-XRM tests share)."""
from __future__ import annotations

from bluesky import RunEngine


def stream_dfxrm(tiled_server, workdir, mic, plan, *, max_runs: int = 1, figures: bool = True,
                 publish_interval_s: float = 0.2, batch_size: int = 20, watch=None, join_s: float = 180.0):
    """Run ``plan`` on ``mic`` (a simulated microscope writing into ``tiled_server.detector_dir``).

    ``watch(name, doc, started)``: called with every document while the plan runs (``started``:
    the uids of the runs started so far). Returns ``(uids the RunEngine returned, the service)``,
    after the service has ended (``max_runs`` runs, or ``join_s`` s)."""
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter

    from streaming.dfxrm_sender import DfxrmFrameStreamer
    from streaming.live import LiveOptions
    from streaming.sender import FrameSender
    from streaming.service import ReconstructorService, ServiceOptions
    from streaming.taps import frame_tap

    svc = ReconstructorService(ServiceOptions(listen="tcp://127.0.0.1:0", workdir=workdir, max_runs=max_runs,
                                              device="cpu", tiled_url=tiled_server.url, api_key=tiled_server.api_key,
                                              live=LiveOptions(figures=figures, publish_interval_s=publish_interval_s)))
    th = svc.start()
    streamer = DfxrmFrameStreamer(FrameSender(svc.address), frame_tap(mic.detector))
    streamer.confirm_timeout_s = 120
    writer = BufferingWrapper(TiledWriter(tiled_server.client(), batch_size=batch_size))
    started = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: started.append(doc["uid"]) if name == "start" else None)
    for cb in (writer, BufferingWrapper(streamer)):
        RE.subscribe(cb)
    if watch is not None:
        RE.subscribe(lambda name, doc: watch(name, doc, started))
    try:
        uids = RE(plan)
    finally:
        writer.shutdown(wait=True)
    th.join(join_s)
    streamer.close()
    return uids, svc

"""Options are frozen and each default has one definition (bp_plugin.defaults) that the CLI, the
service and the engine's options read; the engine's lifecycle holds the probe per iteration and
restarts the schedule's count without anybody rewriting its configuration."""
import dataclasses

import numpy as np
import pytest

from bp_plugin import defaults
from bp_plugin.cli import build_parser
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.engine import Reconstructor
from bp_plugin.recon.run import ReconstructOptions, make_config
from streaming.live import LiveOptions
from streaming.service import ServiceOptions


def test_named_schedules_compress_the_paper_schedule():
    assert (defaults.schedule("paper").iterations, defaults.schedule("paper").ml_iterations) == (1000, 500)
    short = make_config(ReconstructOptions(schedule="short"))
    assert (short.iterations, short.ml_iterations) == (60, 20)
    assert short.slab_steps == (0, 6, 12) and (short.shrinkwrap_start, short.shrinkwrap_stop) == (18, 30)
    assert short == ReconConfig().with_schedule(defaults.SHORT)
    # --iterations alone keeps the schedule's ML share (the paper's: half)
    assert make_config(ReconstructOptions(iterations=100)).ml_iterations == 50
    assert make_config(ReconstructOptions(schedule="short", iterations=30)).ml_iterations == 10
    assert make_config(ReconstructOptions(iterations=100, ml_iterations=7)).ml_iterations == 7
    with pytest.raises(ValueError, match="unknown schedule 'fast': one of paper, short, demo"):
        make_config(ReconstructOptions(schedule="fast"))
    a = build_parser().parse_args(["reconstruct", "scan.h5", "--out", "r.h5", "--schedule", "short"])
    assert a.schedule == "short"


def test_options_are_frozen_and_the_defaults_defined_once():
    cfg = ReconConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.probe_update = False
    with pytest.raises(ValueError, match="never updates the probe"):     # compressed to 4 <= probe_freeze
        ReconConfig(probe_warmup=100).scaled(40)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ReconstructOptions().iterations = 3
    live, svc = LiveOptions(), ServiceOptions()
    c = build_parser().parse_args(["reconstructor"])
    d = build_parser().parse_args(["demo"])
    assert (c.iterations, c.ml_iterations) == (live.final_iterations, live.ml_iterations) == (
        defaults.STREAM_FINAL.iterations, defaults.STREAM_FINAL.ml_iterations)
    assert (c.catch_up_per_angle, c.publish_interval, c.checkpoint_interval) == (
        live.catch_up_per_angle, live.publish_interval_s, live.checkpoint_interval_s)
    assert c.idle_timeout == svc.idle_timeout_s and c.listen == svc.listen == defaults.LISTEN
    assert "127.0.0.1" in defaults.LISTEN                     # loopback unless a beamline says otherwise
    assert (d.iterations, d.ml_iterations) == (defaults.DEMO.iterations, defaults.DEMO.ml_iterations)


def test_the_engine_holds_the_probe_when_told_and_restarts_its_schedule(tiny_dataset):
    ds, _ = tiny_dataset
    cfg = ReconConfig(upsampling=2, probe_freeze=0).scaled(10, 0)
    rec = Reconstructor.from_scan(ds, config=cfg)
    p0 = np.array(rec.probe2d)
    rec.step(hold_probe=True, stage="live")
    assert np.array_equal(np.asarray(rec.probe2d), p0)
    assert rec.history[-1]["stage"] == "live" and rec.history[-1]["probe_update"] is False
    rec.step()
    assert not np.array_equal(np.asarray(rec.probe2d), p0) and rec.history[-1]["probe_update"] is True
    assert rec.config is cfg and cfg.probe_update                   # nobody rewrote the configuration
    final = cfg.scaled(4, 1)
    rec.begin_schedule(final)
    assert rec.iteration == 0 and rec.config is final and len(rec.history) == 2
    rec.run()
    assert rec.iteration == 5 and len(rec.history) == 7 and rec.history[-1]["stage"] == "ml"
    rec.begin_schedule(keep_history=False)
    assert rec.iteration == 0 and rec.history == [] and rec.config is final

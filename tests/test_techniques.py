"""One run loop for every technique: the service finds a run's technique from its start message or
its assembly, opens and resumes runs through the technique's plug-in, and a spool it cannot read
does not stop it from starting."""
import json

from bp_plugin.backend import get_backend
from streaming import protocol
from streaming.assembly import RunAssembly
from streaming.dfxrm_live import DfxrmLive, DfxrmRun
from streaming.live import LiveOptions, LiveReconstruction
from streaming.techniques import TECHNIQUES, technique_of
from streaming.workdir import resume_run, unfinished_runs

WORK_METHODS = ("ingest", "live_step", "first_snapshot", "live_snapshot", "checkpoint", "complete", "status",
                "metadata", "arrays")


def test_every_technique_of_the_protocol_has_one_plug_in_and_its_work_the_loop_s_methods():
    assert tuple(TECHNIQUES) == protocol.TECHNIQUES
    for work in (LiveReconstruction, DfxrmLive):
        missing = [m for m in WORK_METHODS + ("idle_s", "stage", "pending") if not hasattr(work, m)]
        assert not missing, (work.__name__, missing)
    assert technique_of({"run_uid": "x"}).name == "bragg-ptychography"       # absent: the default
    assert technique_of({"technique": "dfxrm"}).name == "dfxrm"


def test_runs_open_and_resume_through_their_technique(tiny_dataset, tmp_path):
    ds, _ = tiny_dataset
    backend = get_backend("cpu")
    h = protocol.decode(protocol.encode_start("b-run", 0, ds.geometry.to_dict(), ds.translations_m, 10)).header
    tech = technique_of(h)
    asm = tech.open(h, tmp_path / "b-run", tmp_path, backend)
    assert isinstance(asm, RunAssembly) and technique_of(asm) is tech
    again = resume_run(tmp_path / "b-run", backend)
    assert isinstance(again, RunAssembly) and again.uid == "b-run"
    # a DF-XRM folder is found by its own start file
    dh = {"run_uid": "d-run", "technique": "dfxrm", "n_frames": 4, "geometry": _dfxrm_geometry(),
          "scan": {"kind": "mosaicity", "axes": ["phi"], "centre_deg": [0.0], "shape": [4], "frame_shape": [8, 6]}}
    run = technique_of(dh).open(dh, tmp_path / "d-run", tmp_path, backend)
    assert isinstance(run, DfxrmRun) and technique_of(run).name == "dfxrm"
    work = technique_of(run).work(run, LiveOptions(figures=False), backend, None)
    assert isinstance(work, DfxrmLive)
    assert work.live_step() is None                      # nothing to iterate: the loop idles, never spins
    work.checkpoint()
    assert not (tmp_path / "d-run" / "moments.npz").exists()      # no frame since the last: nothing written
    assert isinstance(resume_run(tmp_path / "d-run", backend), DfxrmRun)
    # a spool whose start file is not JSON is logged and skipped: the service still starts
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "start.json").write_text("{not json")
    assert resume_run(tmp_path / "torn", backend) is None
    assert sorted(r.uid for r in unfinished_runs(tmp_path, backend)) == ["b-run", "d-run"]
    assert json.loads((tmp_path / "d-run" / "dfxrm_start.json").read_text())["scan"]["frame_shape"] == [8, 6]


def _dfxrm_geometry() -> dict:
    from bp_plugin.dfxrm.geometry import DfxrmGeometry

    return DfxrmGeometry().to_dict()

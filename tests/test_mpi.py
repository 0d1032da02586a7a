"""The reconstruction on several MPI processes (issue 19), on the CPU with MPICH's wheel (``mpi`` extra).

Each rank holds a block of the positions (their frames only) and the whole object; joint
iterations end with the merge of :mod:`bp_plugin.recon.merge`, the ML stage sums across ranks.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bp_plugin.recon.comm import SERIAL, block_share
from bp_plugin.recon.mpi import launched_by_mpi, mpiexec as find_mpiexec
from bp_plugin.recon.run import ReconstructOptions, reconstruct_file

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
MPIEXEC = find_mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                               reason="mpi4py and mpiexec are needed: pip install -e '.[mpi]' (make install does)")
# two ranks on a 2-core machine: one thread each (each rank would otherwise take every core)
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "BP_FFT_WORKERS": "1", "PYTHONPATH": str(HERE.parent)}
ENV = {**os.environ, **ONE_THREAD}


def mpiexec(n: int, *args, cwd=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([MPIEXEC, "-n", str(n), *map(str, args)], env=ENV, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_block_shares_cover_every_position_once_in_scan_order():
    for n, size in ((25, 2), (25, 4), (3, 4), (400, 8)):
        shares = [block_share(n, r, size) for r in range(size)]
        assert np.array_equal(np.concatenate(shares), np.arange(n))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert np.array_equal(SERIAL.share(5), np.arange(5)) and SERIAL.sum(3.5) == 3.5
    with pytest.raises(ValueError, match="rank 2"):
        block_share(10, 2, 2)


def test_launch_is_told_by_the_launchers_variables(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not launched_by_mpi()                  # a one-process mpirun needs no MPI
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert launched_by_mpi()


@needs_mpi
def test_ml_stage_on_two_ranks_equals_one_process(tiny_dataset):
    """The ML sums are taken across ranks: the same steps as one process, to float32 rounding."""
    _, path = tiny_dataset
    p = mpiexec(2, sys.executable, HERE / "mpi_ml_check.py", path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["shares"] == [13, 12] and r["positions"] == 25        # each rank holds its frames only
    assert r["ml_gain"] > 1.01                                      # the stage did something
    assert r["object_rel_diff"] < 1e-4 and r["error_rel_diff"] < 1e-5, r


@needs_mpi
def test_an_engine_that_cannot_open_on_one_rank_fails_on_both_and_they_go_on(tiny_dataset):
    """The online service's ranks agree on a run's engine (streaming.engine_ranks.open_engine): a
    failure on rank 1 alone fails the run on both, with no MPI_Abort, and both open the next one."""
    _, path = tiny_dataset
    p = mpiexec(2, sys.executable, HERE / "mpi_open_check.py", path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = json.loads(p.stdout.strip().splitlines()[-1])
    assert "1 other process(es) failed" in r0["first"] and "every_rank=True" in r0["first"], r0
    assert "every_rank=True" in r1["first"] and "opened" not in r1["first"], r1
    assert (r0["positions"], r1["positions"]) == (13, 12)


def _readme_mpi_block() -> str:
    text = (HERE.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M) if "mpirun -n 2" in b]
    assert len(blocks) == 1, "the README has one bash block with the two-rank reconstruction"
    return blocks[0]


@pytest.mark.slow
@needs_mpi
def test_readme_two_rank_reconstruction_meets_the_one_process_thresholds(tmp_path):
    """The README's block, as written (with this venv for .venv/bin): tiny on 2 ranks and on one.

    Measured (tiny, seed 0, x2, curriculum 5 per angle + 60 + 20): one process object error 0.142,
    probe 0.039, eps_zz 2.8e-5; two ranks 0.138, 0.049, 2.8e-5 (four: 0.151, 0.067, 3.1e-5). The
    thresholds are the engine's (tests/test_engine.py); the two must agree within 0.03 in object and
    probe error and 1e-5 in eps_zz error. (Their raw objects differ by 0.31 relative: the merge is not
    the sequential order, and a phase ramp and a translation are free; the ML test above is the
    exact one.)"""
    script = _readme_mpi_block().replace(".venv/bin/", f"{BIN}/")
    p = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("wrote out/tiny-mpi/result.h5") == 1, p.stdout       # rank 0 speaks, once
    two = json.loads((tmp_path / "out/tiny-mpi/metrics.json").read_text())
    one = reconstruct_file(tmp_path / "out/tiny.h5", tmp_path / "one/result.h5",
                           ReconstructOptions(schedule="short", upsampling=2, progress=False, figures=False))
    assert two["processes"] == 2 and one["processes"] == 1
    for m in (one, two):
        assert m["object_error"] < 0.22 and m["probe_error"] < 0.14, m
        assert m["strain_rms_error"] < 4.6e-5 and m["tilt_rms_error_rad"] < 4.5e-5, m
    assert abs(two["object_error"] - one["object_error"]) < 0.03
    assert abs(two["probe_error"] - one["probe_error"]) < 0.03
    assert abs(two["strain_rms_error"] - one["strain_rms_error"]) < 1e-5


@needs_mpi
def test_a_bad_file_on_two_ranks_ends_both_with_one_line_each(tmp_path):
    """Every rank sees the bad file, so they agree and exit with their line (no MPI_Abort, whose kill
    lost both lines on CI)."""
    bad = tmp_path / "not-a-scan.h5"
    bad.write_text("not HDF5")
    p = mpiexec(2, BIN / "bp-plugin", "reconstruct", bad, "--out", tmp_path / "r/result.h5", timeout=300)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(lines) == 2 and all("not-a-scan.h5" in ln and "not an HDF5 file" in ln for ln in lines), p.stderr
    assert "Traceback" not in p.stderr, p.stderr


@pytest.mark.slow
@needs_mpi
def test_online_reconstructor_on_two_ranks_finishes_a_streamed_run(tiny_dataset, tmp_path, monkeypatch):
    """``mpiexec -n 2 bp-plugin reconstructor``: rank 0 receives and spools, both ranks run the engine;
    the streamed tiny run meets the streaming tests' thresholds (tests/test_streaming.py)."""
    from streaming.commands import stream_dataset
    from streaming.processes import start_reconstructor

    _, path = tiny_dataset
    for name, value in ONE_THREAD.items():
        monkeypatch.setenv(name, value)
    rp = start_reconstructor(tmp_path / "w", launcher=(MPIEXEC, "-n", 2), max_runs=1,
                             extra_args=["--quiet"])
    try:
        assert stream_dataset(path, rp.address, progress=False, confirm_timeout_s=120) == 0
        assert rp.process.wait(900) == 0, rp.log_tail()
    finally:
        rp.kill() if rp.alive() else None
    log = rp.log_tail(100_000)
    assert "engine on 2 MPI ranks" in log, log[-2000:]
    (metrics_file,) = (tmp_path / "w").rglob("metrics.json")
    m = json.loads(metrics_file.read_text())
    assert m["processes"] == 2 and m["counters"]["frames_measured"] == 300, m
    assert m["object_error"] < 0.22 and m["strain_rms_error"] < 4.6e-5 and m["tilt_rms_error_rad"] < 4.5e-5, m

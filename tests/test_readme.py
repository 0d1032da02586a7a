"""The README's Python code runs as written: its blocks, in order, in one fresh interpreter, against a
real reconstructor listening where the README's ``BP_RECONSTRUCTOR`` says."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.processes import start_reconstructor

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


@pytest.mark.slow
def test_the_readme_python_blocks_run_as_written(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 2, "the README lost its Python examples"
    rp = start_reconstructor(tmp_path / "rec", extra_args=["--iterations", "6", "--ml-iterations", "2"], max_runs=1)
    try:
        p = subprocess.run([sys.executable, "-c", "\n\n".join(blocks)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "BP_RECONSTRUCTOR": rp.address})
        assert p.returncode == 0, p.stderr[-3000:]
        rp.process.wait(300)                    # its one run reconstructed, it ends
    finally:
        rp.stop()
    peak = float(re.search(r"Bragg peak at ([\d.]+) deg", p.stdout).group(1))
    assert abs(peak - 43.83) < 0.05                                 # tiny's theta_B (bp-plugin geometry)
    done = [json.loads(m.read_text()) for m in (tmp_path / "rec").glob("*/metrics.json")]
    assert len(done) == 1 and done[0]["counters"]["frames_measured"] == 300, rp.log_tail()
    assert (tmp_path / "out" / "readme").is_dir()


@pytest.mark.slow
def test_the_readme_acquire_export_replay_block_runs_as_written(tmp_path):
    """The beamline block: acquire (tiny), serve the catalog in the background, export the run by
    the uid the acquisition wrote, replay it, stop the server. (Port 8000, as the README says.)"""
    blocks = [b for b in re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M)
              if "bp-plugin acquire" in b]
    assert len(blocks) == 1, "the README has one bash block with the acquisition"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("BP_TILED_URL", None)
    env.pop("BP_TILED_API_KEY", None)
    p = subprocess.run(["bash", "-e", "-c", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    uid = (tmp_path / "out/acquire/run_uid").read_text().strip()
    assert f"run {uid} (success): 300 frames" in p.stdout, p.stdout[-2000:]
    assert "replayed 300 frames" in p.stdout, p.stdout[-2000:]
    from bp_plugin.dataset import read_dataset

    ds = read_dataset(tmp_path / "scan.h5")
    assert ds.frames.shape[:2] == (12, 25) and ds.measured.all()

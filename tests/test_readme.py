"""The README's Python code runs as written: its blocks, in order, in one fresh interpreter, against a
real reconstructor listening where the README's ``BP_RECONSTRUCTOR`` says."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
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


def bash_block(marker: str) -> str:
    """The README's one bash block that holds ``marker``."""
    blocks = [b for b in re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M) if marker in b]
    assert len(blocks) == 1, f"the README has one bash block with {marker!r}"
    return blocks[0]


def run_block(marker: str, cwd) -> subprocess.CompletedProcess:
    """The block in a fresh ``bash -e`` as a user would paste it (the venv's commands on the PATH, no
    Tiled or reconstructor variables), in a process group of its own that is ended afterwards: a
    failing command must not leave the block's background server holding its port."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("BP_TILED_URL", "BP_TILED_API_KEY", "BP_RECONSTRUCTOR"):
        env.pop(name, None)
    proc = subprocess.Popen(["bash", "-e", "-c", bash_block(marker)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(30)
        _wait_for_free_ports(8000, 5577)      # the block's servers are gone before the next block starts
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _wait_for_free_ports(*ports, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    for port in ports:
        while True:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"port {port} still held after the README block ended") from None
            time.sleep(0.2)


@pytest.mark.slow
def test_the_readme_beamline_and_streaming_blocks_run_as_written(tmp_path):
    """The beamline block (acquire tiny, serve the catalog in the background, export and replay the
    run by the uid the acquisition wrote, stop the server), then the streaming block (a server, the
    reconstructor waiting for it, the exported file streamed, the run final in Tiled), each in a
    fresh bash as a user would paste it. Ports 8000 and 5577, as the README says."""
    out = []
    for marker in ("bp-plugin acquire", "bp-plugin reconstructor --listen"):
        p = run_block(marker, tmp_path)
        assert p.returncode == 0, (marker, p.stdout[-2000:], p.stderr[-3000:])
        out.append(p.stdout)
    uid = (tmp_path / "out/acquire/run_uid").read_text().strip()
    assert f"run {uid} (success): 300 frames" in out[0] and "replayed 300 frames" in out[0], out[0][-2000:]
    from bp_plugin.dataset import read_dataset

    ds = read_dataset(tmp_path / "scan.h5")
    assert ds.frames.shape[:2] == (12, 25) and ds.measured.all()
    done = [json.loads(m.read_text()) for m in (tmp_path / "out/reconstructor").glob("*/metrics.json")]
    assert len(done) == 1 and done[0]["counters"]["frames_measured"] == 300, out[1][-2000:]


@pytest.mark.slow
def test_the_readme_dfxrm_block_runs_as_written(tmp_path):
    """The DF-XRM block: the demo (tiny), an acquisition recorded in its embedded Tiled, the catalog
    served again, the run exported by its uid and mapped in a fresh process (which must register the
    frames' compression filter itself)."""
    p = run_block("dfxrm demo --preset tiny --scan mosaicity", tmp_path)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    uid = (tmp_path / "out/dfxrm/run_uid").read_text().strip()
    assert f"run {uid}:" in p.stdout and "(success)" in p.stdout, p.stdout[-2000:]
    import h5py

    with h5py.File(tmp_path / "maps.h5", "r") as f:
        maps = set(f["maps"])
    assert {"com_phi", "com_chi", "skew_phi", "kurt_chi", "tilt_phi"} <= maps, maps   # order 4: skewness too
    assert (tmp_path / "maps.png").stat().st_size > 0


@pytest.mark.slow
def test_the_readme_topotomo_block_runs_as_written(tmp_path):
    """The topo-tomography demo block: a full turn streamed, the shape and its overlap with the truth."""
    p = run_block("--scan topotomo", tmp_path)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    import re

    m = re.search(r"overlap \(Dice\) ([0-9.]+), volume error ([-+0-9.]+) %", p.stdout)
    assert "90/90 projections" in p.stdout and m, p.stdout[-2000:]
    assert float(m.group(1)) >= 0.95 and abs(float(m.group(2))) <= 8, m.group(0)   # tests/test_dfxrm_topo.py's bounds
    assert list((tmp_path / "out/topo-demo/reconstructor").glob("*/maps.png"))

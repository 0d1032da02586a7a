"""A facility deployment: Tiled on a PostgreSQL catalog (Debian's postgresql, started here on
loopback), the RunEngine and the reconstruction service's publisher writing to it.

The embedded default keeps the catalog in SQLite beside the server; at a beamline the catalog lives in
the facility's PostgreSQL (``bp-plugin serve --catalog postgresql+asyncpg://USER@HOST:PORT/DB``,
password from ``PGPASSWORD`` or ``~/.pgpass``), so runs outlive the server's machine and many
servers can share one catalog.
"""
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter

from bp_plugin.tiled_server import TiledServerError, check_catalog_uri, free_port, start_tiled_server
from plans.bragg_ptycho import bragg_ptycho_scan
from plans.monitor import buffered
from sim_devices.beamline import build_beamline
from streaming.publish import TiledPublisher

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
PG_BIN = Path(PG_BIN[-1]) if PG_BIN else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)

@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1 (trust authentication on loopback only), with an
    empty database ``tiled``; its URI. As root, the server runs as the ``postgres`` user (it refuses root)."""
    if PG_BIN is None or not (PG_BIN / "pg_ctl").exists():
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    as_user = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser (util-linux) to start PostgreSQL as postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="bp-pg-"))
    if as_user:
        os.chown(home, user.pw_uid, user.pw_gid)
    port = free_port()
    data = home / "data"

    def pg(tool, *args, check=True):
        return subprocess.run([*as_user, str(PG_BIN / tool), *args], capture_output=True, text=True, check=check,
                              timeout=120)

    try:
        pg("initdb", "-D", str(data), "--auth=trust", "-U", "bp", "-E", "UTF8")
        pg("pg_ctl", "-D", str(data), "-l", str(home / "server.log"), "-w",
           "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start")
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "bp", "tiled")
        yield {"uri": f"postgresql+asyncpg://bp@127.0.0.1:{port}/tiled",
               "psql": lambda sql: pg("psql", "-h", "127.0.0.1", "-p", str(port), "-U", "bp", "-d", "tiled",
                                      "-Atc", sql).stdout}
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"PostgreSQL did not start: {exc.stderr[-2000:]}")
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_runs_and_reconstructions_live_in_the_postgresql_catalog(postgres, tmp_path):
    home, det = tmp_path / "tiled", tmp_path / "detector"
    server = start_tiled_server(home, readable=[det], catalog=postgres["uri"])
    try:
        bl = build_beamline("tiny", write_dir=det, noise=False)
        RE = RunEngine({})
        writer = buffered(TiledWriter(server.client(), batch_size=20))
        RE.subscribe(writer)
        try:
            (uid,) = RE(bragg_ptycho_scan([bl.detector], bl.eta, bl.piezo_x, bl.piezo_y, bl.geometry))
        finally:
            writer.shutdown(wait=True)
        # the service's publisher: a final snapshot with an array, as a reconstruction ends
        density = np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
        pub = TiledPublisher(server.client(), uid, min_interval_s=0.0)
        assert pub.close({"status": {"state": "final"}}, {"density": density})
    finally:
        server.stop()
    # a new server process on the same catalog finds both, frames and arrays readable
    server = start_tiled_server(home, readable=[det], catalog=postgres["uri"])
    try:
        c = server.client()
        run = c[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        img = run["primary"]["maxipix_image"]
        assert img.shape == (300, *bl.frame_shape) and int(np.asarray(img[299]).sum()) > 0
        rec = c["reconstructions"][uid]
        assert rec.metadata["status"]["state"] == "final"
        np.testing.assert_array_equal(rec["density"].read(), density)
    finally:
        server.stop()
    # and the catalog is PostgreSQL's: the run and its reconstruction are rows of its nodes table
    assert int(postgres["psql"](f"select count(*) from nodes where key = '{uid}'").strip()) == 2
    assert not (home / "catalog.db").exists()


def test_a_catalog_uri_with_a_password_is_refused():
    with pytest.raises(TiledServerError, match="PGPASSWORD"):
        check_catalog_uri("postgresql+asyncpg://bp:secret@127.0.0.1:5432/tiled")
    with pytest.raises(TiledServerError, match="postgresql"):
        check_catalog_uri("mysql://bp@127.0.0.1/tiled")

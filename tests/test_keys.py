"""Secrets never on a command line or in a log; a read-only browse key for a viewer off loopback."""
from __future__ import annotations

import os
import stat

import httpx
import numpy as np
import pytest

from bp_plugin.cli import main
from bp_plugin.keys import read_key_file, write_key_file
from streaming.viewer_server import start_viewer


def test_the_tiled_key_is_in_no_command_line_and_in_a_private_file(tiled_server):
    key = tiled_server.api_key
    with open(f"/proc/{tiled_server.process.pid}/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace")
    assert "serve" in argv and key not in argv                        # ps shows the command, not the key
    assert read_key_file(tiled_server.key_file) == key
    assert stat.S_IMODE(os.stat(tiled_server.key_file).st_mode) == 0o600
    assert key not in repr(tiled_server)
    assert httpx.get(f"{tiled_server.url}/api/v1/metadata/").status_code == 401
    ok = httpx.get(f"{tiled_server.url}/api/v1/metadata/", headers={"Authorization": f"Apikey {key}"})
    assert ok.status_code == 200


def test_the_server_issues_a_writer_key_and_a_read_only_key(tiled_server):
    """Scoped keys: the writer (RunEngine, reconstructor) creates and updates; the read-only key
    (viewer, a user browsing) reads metadata and data and is refused every write; neither key nor
    the admin's password is on the server's command line, in its configuration or its log."""
    from bp_plugin.tiled_auth import SECRETS_FILE
    from bp_plugin.tiled_server import connect

    writer, reader = tiled_server.api_key, tiled_server.read_key
    assert reader and reader != writer
    assert read_key_file(tiled_server.read_key_file) == reader
    assert stat.S_IMODE(os.stat(tiled_server.read_key_file).st_mode) == 0o600
    home = tiled_server.directory
    assert stat.S_IMODE(os.stat(home / SECRETS_FILE).st_mode) == 0o600
    password = __import__("json").loads(read_key_file(home / SECRETS_FILE))["admin_password"]
    with open(f"/proc/{tiled_server.process.pid}/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace")
    for text in (argv, (home / "config.yml").read_text(), (home / "server.log").read_text(errors="replace")):
        assert writer not in text and reader not in text and password not in text
    w = connect(tiled_server.url, writer)
    c = w.create_container("scoped-keys-test", metadata={"by": "writer"})
    c.write_array(np.arange(4), key="a")
    r = connect(tiled_server.url, reader)
    assert r["scoped-keys-test"]["a"].read().tolist() == [0, 1, 2, 3]
    assert r["scoped-keys-test"].metadata["by"] == "writer"
    for write in (lambda: r.create_container("by-reader"), lambda: r["scoped-keys-test"].update_metadata({"x": 1}),
                  lambda: r["scoped-keys-test"].write_array(np.zeros(2), key="b")):
        with pytest.raises(Exception, match="Not enough permissions"):
            write()
    assert "by-reader" not in w and "b" not in w["scoped-keys-test"]


@pytest.mark.parametrize("argv", [["export", "RUN", "--out", "x.h5", "--api-key", "s3cret"],
                                  ["serve", "--api-key", "-dash-key"], ["reconstructor", "--api-key=s3cret"]])
def test_a_key_on_the_command_line_is_refused_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "BP_TILED_API_KEY" in err and "--api-key-file" in err, err
    assert "s3cret" not in err


def test_a_key_file_is_read_and_a_missing_one_named(tmp_path, monkeypatch, capsys):
    path = write_key_file(tmp_path / "k", "abc123")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and read_key_file(path) == "abc123"
    monkeypatch.delenv("BP_TILED_API_KEY", raising=False)
    assert main(["export", "RUN", "--out", str(tmp_path / "x.h5"), "--api-key-file", str(tmp_path / "none"),
                 "--tiled-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no API key file" in err, err


def test_off_loopback_the_viewer_wants_a_browse_key_and_checks_it(tiled_server):
    with pytest.raises(ValueError, match="browse key"):
        start_viewer(tiled_server.url, tiled_server.api_key, host="0.0.0.0")
    with start_viewer(tiled_server.url, tiled_server.api_key, browse_key="look-only") as v:
        with httpx.Client(base_url=v.url.rstrip("/")) as c:
            assert c.get("/").status_code == 401
            assert c.get("/api/v1/metadata/").status_code == 401
            assert c.get("/?key=wrong").status_code == 401
            r = c.get("/?key=look-only&run=abc")
            assert r.status_code == 303 and r.headers["location"] == "/?run=abc"
            assert "HttpOnly" in r.headers["set-cookie"] and "bp_viewer_key" in c.cookies
            assert c.get("/").status_code == 200
            assert c.get("/api/v1/metadata/").status_code == 200          # reads, with the Tiled key server-side
            assert c.post("/api/v1/metadata/", json={}).status_code == 405  # and never writes
        assert httpx.get(v.url, headers={"Authorization": "Bearer look-only"}).status_code == 200


def test_bp_plugin_viewer_serves_with_the_read_key_and_a_taken_port_is_one_line(tiled_server):
    import socket
    import subprocess
    import sys

    from streaming.processes import free_tcp_address

    port = int(free_tcp_address().rsplit(":", 1)[1])
    cmd = [sys.executable, "-m", "bp_plugin.cli", "viewer", "--tiled-url", tiled_server.url,
           "--api-key-file", str(tiled_server.read_key_file), "--port", str(port)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = p.stdout.readline()
        assert f"live viewer at http://127.0.0.1:{port}/" in line, line
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/metadata/").status_code == 200   # reads through it
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = [*cmd[:-1], str(taken.getsockname()[1])]
            r = subprocess.run(busy, capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "choose another --port" in lines[0], r.stderr
    finally:
        p.terminate()
        p.wait(10)

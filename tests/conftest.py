"""Shared fixtures: one real Tiled server (started by the project's own code) for the session."""
import pytest


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory):
    from bp_plugin.tiled_server import start_tiled_server

    home = tmp_path_factory.mktemp("tiled")
    det = tmp_path_factory.mktemp("detector")
    server = start_tiled_server(home, readable=[det])
    server.detector_dir = det
    yield server
    server.stop()

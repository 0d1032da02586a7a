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


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The ``tiny`` preset (seed 0), simulated once for the session: ``(ScanDataset, path)``."""
    from bp_plugin.dataset import read_dataset
    from sim_devices.experiment import simulate_to_file

    path = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    simulate_to_file(path, "tiny", seed=0, progress=False)
    return read_dataset(path), path

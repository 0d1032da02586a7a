"""Imports point down the layers: science -> I/O -> plans | streaming -> apps; the simulator stays out
of production paths. Every import is read from the source (module level and inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: the engine and the science take arrays and return arrays (DEVELOPERS.md): no services, no devices
SCIENCE = ["bp_plugin/geometry.py", "bp_plugin/sheared_fft.py", "bp_plugin/backend.py", "bp_plugin/strain.py",
           "bp_plugin/quality.py", "bp_plugin/recon", "bp_plugin/dfxrm"]
SERVICES = ("bluesky", "ophyd", "ophyd_async", "zmq", "tiled", "bluesky_tiled_plugins", "streaming", "plans",
            "sim_devices")
#: the only production modules that may use the simulator: the simulated acquisitions and the demos
SIMULATED_APPS = {"bp_plugin/cli.py", "streaming/demo.py", "streaming/dfxrm_demo.py", "plans/acquire.py",
                  "plans/dfxrm_acquire.py", "plans/qserver_startup.py"}
#: the command lines: the top layer, kept in bp_plugin/ by the design card's layout
APPS = {"bp_plugin/cli.py", "bp_plugin/dfxrm_cli.py"}


def imports(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports; relative ones stay in the package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def modules(*roots: str) -> list[Path]:
    files = []
    for r in roots:
        p = REPO / r
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return files


def test_the_science_imports_no_service_device_or_simulator():
    bad = {str(p.relative_to(REPO)): sorted(imports(p) & set(SERVICES)) for p in modules(*SCIENCE)}
    assert not {k: v for k, v in bad.items() if v}, {k: v for k, v in bad.items() if v}


def test_production_code_does_not_need_the_simulator():
    users = {str(p.relative_to(REPO)) for p in modules("bp_plugin", "streaming", "plans") if "sim_devices" in imports(p)}
    assert users <= SIMULATED_APPS, sorted(users - SIMULATED_APPS)


def test_the_simulator_and_the_library_do_not_import_upwards():
    up = {str(p.relative_to(REPO)): sorted(imports(p) & {"streaming", "plans"})
          for p in modules("sim_devices", "bp_plugin") if str(p.relative_to(REPO)) not in APPS}
    assert not {k: v for k, v in up.items() if v}, {k: v for k, v in up.items() if v}

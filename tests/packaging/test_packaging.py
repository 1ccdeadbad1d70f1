"""horde installs as one import name, `horde`, and ships itself to nodes that lack it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import tomllib

from horde.cluster.shipping import PACKAGES, horde_py_module

REPO = Path(__file__).resolve().parents[2]
FOREIGN = ("agents", "cluster", "coordinator", "automaton")


def _package_folders() -> set[str]:
    found = set()
    for top in PACKAGES:
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO).as_posix().replace("/", ".")
            found.add(f"horde.{rel}")
    return found


def test_every_package_folder_is_declared_in_pyproject():
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _package_folders() == declared


def _probe(python: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    code = (
        "import importlib.util, json, horde.coordinator.cli as c\n"
        f"print(json.dumps({{'cli': c.__file__, 'foreign': {{n: importlib.util.find_spec(n) is not None "
        f"for n in {FOREIGN!r}}}}}))\n"
    )
    out = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_shipped_package_imports_from_its_own_directory(tmp_path):
    with horde_py_module() as horde_dir:
        assert Path(horde_dir).name == "horde"
        for name in PACKAGES:
            assert (Path(horde_dir) / name / "__init__.py").is_file()
        assert not list(Path(horde_dir).rglob("__pycache__"))
        env = dict(os.environ, PYTHONPATH=str(Path(horde_dir).parent))
        seen = _probe(sys.executable, tmp_path, env)
    assert Path(seen["cli"]).resolve().is_relative_to(Path(horde_dir).resolve())


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_provides_only_horde_and_runs(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("horde-*.whl"))
    env_dir = tmp_path / "venv"
    # The venv sees this interpreter's packages (Ray, aiohttp, ...) but installs horde from the wheel.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the venv's own path
    seen = _probe(python, elsewhere, clean)
    assert Path(seen["cli"]).resolve().is_relative_to(env_dir.resolve())
    assert seen["foreign"] == dict.fromkeys(FOREIGN, False)

    out = tmp_path / "out"
    run = subprocess.run(
        [str(env_dir / "bin" / "horde"), "run", str(REPO / "scenarios" / "smoke.yaml"), "-q", "--out", str(out)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=240,
        env=clean,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    manifests = list(out.glob("*/manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["complete"] is True

"""What Ray ships so that a node with nothing of horde installed can import it.

Installed horde provides one import name, `horde` (a namespace package over the repository's
`agents/`, `cluster/`, `coordinator/` and `automaton/` folders). A submitted job or an
attached run hands Ray a directory named `horde` as a `py_modules` entry; Ray uploads it once
(content-hashed) and puts it on every worker's path, so `import horde.agents` works on nodes
that only have what Ray shipped. From a wheel the installed `horde` directory is shipped as
it is; from an editable install (a checkout) the four folders are staged into a temporary
`horde/` directory first.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

JOB_ID_ENV = "HORDE_JOB_ID"  # set in every horde job (driver, and by inheritance its actors)
PACKAGES = ("agents", "automaton", "cluster", "coordinator")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def _installed_roots() -> dict[str, Path]:
    from horde import agents, automaton, cluster, coordinator

    return {
        m.__name__.rpartition(".")[2]: Path(m.__file__ or "").resolve().parent
        for m in (agents, automaton, cluster, coordinator)
    }


@contextlib.contextmanager
def horde_py_module() -> Iterator[str]:
    """A directory named `horde` holding the whole package, valid inside the `with` block."""
    roots = _installed_roots()
    parents = {p.parent for p in roots.values()}
    if len(parents) == 1 and next(iter(parents)).name == "horde":
        yield str(next(iter(parents)))  # a wheel install: site-packages/horde as it is
        return
    with tempfile.TemporaryDirectory(prefix="horde-ship-") as tmp:
        stage = Path(tmp) / "horde"
        stage.mkdir()
        for name in PACKAGES:
            shutil.copytree(roots[name], stage / name, ignore=_IGNORE)
        yield str(stage)

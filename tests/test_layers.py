"""The core's floors: a module imports only from the floors below it. Ground floor, the models and
optimisers (the ensemble, the RSSM, networks, SAC, TRPO, the planners (CEM, iCEM, random shooting,
iLQR), the buffer, the config and training helpers) import nothing from the loops, the runner, the
sweeps, the environments or the algorithms; the environments import nothing of mbrlax but
themselves; the loops import no runner and no algorithm; the runner imports no algorithm; an
algorithm imports the core and never another algorithm.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).parent.parent
FOLDERS = {"mbrlax": ROOT / "src" / "mbrlax", "mbrlax.envs": ROOT / "envs", "mbrlax.algorithms": ROOT / "algorithms"}
GROUND = {"buffer", "config", "ensemble", "ilqr", "networks", "planners", "presets", "rssm", "sac", "search", "trpo", "training"}

def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imported(path: pathlib.Path) -> set[str]:
    """The mbrlax modules a file imports: `from mbrlax import x` counts as mbrlax.x when x is one."""
    known = modules()
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known}
    return {name for name in names if name == "mbrlax" or name.startswith("mbrlax.")}


def breaks(importer: str, target: str) -> bool:
    def within(name: str, package: str) -> bool:
        return name == package or name.startswith(package + ".")

    if within(importer, "mbrlax.algorithms"):
        return within(target, "mbrlax.algorithms") and target != "mbrlax.algorithms"
    if within(importer, "mbrlax.envs"):
        return not within(target, "mbrlax.envs")
    if within(importer, "mbrlax.runner"):
        return within(target, "mbrlax.algorithms") or within(target, "mbrlax.loops")
    if within(importer, "mbrlax.loops"):
        return within(target, "mbrlax.runner") or within(target, "mbrlax.algorithms")
    if importer.removeprefix("mbrlax.") in GROUND:
        above = ("mbrlax.loops", "mbrlax.runner", "mbrlax.sweeps", "mbrlax.envs", "mbrlax.algorithms")
        return any(within(target, package) for package in above)
    return False


def test_every_module_imports_only_from_the_floors_below_it():
    found = modules()
    assert {"mbrlax.ensemble", "mbrlax.runner.cli", "mbrlax.envs.registry", "mbrlax.algorithms.pets"} <= found.keys()
    assert GROUND <= {name.removeprefix("mbrlax.") for name in found}, "a ground-floor module was renamed"
    broken = {(name, target) for name, path in found.items() for target in imported(path) if breaks(name, target)}
    assert not broken, f"imports that break the floors: {sorted(broken)}"

"""The import rules of DESIGN.md, checked by reading every module's imports with `ast`.

Layers: L0 records & constants, L1 algorithms, L2 I/O, L3 services, L4 front ends, L5 CLI,
T testing. A module may import only from the layers its row allows; L0 and L1 may not use real
I/O, clocks, threads or the global random module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "leasestore"

L0 = {"errors", "units", "timeouts", "ondisk", "specs", "tomlfile"}
L1 = {"effects", "delta", "paxos", "liveness", "latency", "lvb", "rindex"}
L2 = {"storage", "clock"}
L3 = {"direct", "daemonless", "lockspace", "resource", "hoststate", "removal", "renewal_timing",
      "ownership"}
L4 = {"daemon", "client", "plugin"}
L5 = {"cli"}
T = {"testing"}

LAYER_OF = {name: layer for layer, names in
            (("L0", L0), ("L1", L1), ("L2", L2), ("L3", L3), ("L4", L4), ("L5", L5), ("T", T))
            for name in names}

ALLOWED = {
    "L0": {"L0"},
    "L1": {"L0", "L1"},
    "L2": {"L0", "L1", "L2"},
    "L3": {"L0", "L1", "L2", "L3"},
    "L4": {"L0", "L1", "L2", "L3", "L4"},
    "L5": {"L0", "L1", "L2", "L3", "L4", "L5"},
    "T": {"L0", "L1", "T"},
}
FORBIDDEN_STDLIB_IN_PURE = {"os", "time", "socket", "threading", "random", "subprocess", "mmap"}
TESTING_MAY_ALSO_IMPORT = {"leasestore.storage.device", "leasestore.plugin.api",
                           # the real-process harness drives daemons as any client does:
                           "leasestore.client", "leasestore.daemon.sanlock_proto",
                           "leasestore.daemon.commands",
                           "leasestore.direct",
                           # the simulator runs the shipped policy, not a copy of it:
                           "leasestore.lockspace", "leasestore.resource",
                           "leasestore.removal", "leasestore.daemon.supervisor",
                           "leasestore.daemon.holders"}
CLIENT_FRONT_ENDS = {"client", "plugin"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_every_module_belongs_to_a_layer() -> None:
    unknown = {_top(p) for p in _modules()} - set(LAYER_OF) - {"__init__"}
    assert not unknown, f"modules with no layer in test_layering.py: {unknown}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_respect_layers(path: Path) -> None:
    top = _top(path)
    if top == "__init__":
        return
    layer = LAYER_OF[top]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "leasestore":
            if layer in ("L0", "L1"):
                assert parts[0] not in FORBIDDEN_STDLIB_IN_PURE, f"{path}: imports {name}"
            continue
        if len(parts) < 2 or parts[1] not in LAYER_OF:
            continue
        target = LAYER_OF[parts[1]]
        if layer == "T" and any(name.startswith(m) for m in TESTING_MAY_ALSO_IMPORT):
            continue
        if top in CLIENT_FRONT_ENDS and parts[1] == "daemon" and name != "leasestore.daemon":
            assert name.startswith(("leasestore.daemon.sanlock_proto",
                                    "leasestore.daemon.commands")), \
                f"{path}: {name} (the protocol and command modules only)"
        assert target in ALLOWED[layer], f"{path} ({layer}) may not import {name} ({target})"

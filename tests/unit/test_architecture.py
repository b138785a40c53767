"""The import rules of docs/architecture.md, checked on the code: arrows point one way, and only where allowed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "inference", "streams", "workbench")

# What each part may import of ours (besides itself). The streams layers: shared modules at the
# bottom, then fetch/ and productdb/, then worker/ (which uses fetch/), and cli/ on top.
SHARED = {
    "streams.events",
    "streams.deadletters",
    "streams.settings",
    "streams.metrics",
    "streams.logs",
    "streams.kafka",
    "streams.broker",
}
ALLOWED = {
    "schemas": set(),
    "inference": {"schemas"},
    "streams(shared)": {"schemas", "inference", *SHARED},
    "streams.fetch": {"schemas", "inference", *SHARED},
    "streams.productdb": {"schemas", "inference", *SHARED},
    "streams.worker": {"schemas", "inference", *SHARED, "streams.fetch"},
    "streams.cli": {"schemas", "inference", *SHARED, "streams.fetch", "streams.productdb", "streams.worker"},
    "workbench": {"schemas", "inference", "streams"},
}
# Third-party runtimes that must stay out of the matching library.
NOT_IN_INFERENCE = {"faust", "aiokafka", "mode", "pydantic", "pydantic_settings"}


def _part(module: str) -> str:
    """The part of the architecture ``module`` belongs to (a key of ALLOWED)."""
    top = module.split(".")[0]
    if top != "streams":
        return top
    if module in SHARED or module == "streams":
        return "streams(shared)"
    return ".".join(module.split(".")[:2])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _ours(name: str) -> str | None:
    """The architecture part an imported name belongs to, or None for third-party code."""
    if name.split(".")[0] not in PACKAGES:
        return None
    module = name
    while (
        module
        and not (REPO / (module.replace(".", "/") + ".py")).exists()
        and not (REPO / module.replace(".", "/") / "__init__.py").exists()
    ):
        module = module.rpartition(".")[0]
    return _part(module or name)


MODULES = sorted(
    (path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"), path)
    for package in PACKAGES
    for path in (REPO / package).rglob("*.py")
)


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_the_architecture(module: str, path: Path) -> None:
    part = _part(module)
    imported = _imports(path)
    parts = {p for p in map(_ours, imported) if p is not None and p != part}
    allowed = {_part(a) if "." in a or a == "streams" else a for a in ALLOWED[part]}
    if part == "workbench":  # above everything: any part of streams
        allowed |= {_part(m) for m, _ in MODULES if m.startswith("streams")}
    assert parts <= allowed, f"{module} ({part}) imports {sorted(parts - allowed)}"
    if part == "inference":
        third_party = {name.split(".")[0] for name in imported} & NOT_IN_INFERENCE
        assert not third_party, f"the matching library imports {sorted(third_party)}"


def test_streams_has_few_top_level_modules() -> None:
    modules = [p.stem for p in (REPO / "streams").glob("*.py") if p.stem != "__init__"]
    assert len(modules) <= 8, modules
    assert {f"streams.{m}" for m in modules} == SHARED

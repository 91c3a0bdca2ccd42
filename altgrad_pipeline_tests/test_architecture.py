"""The house has one direction: each room imports only the rooms below it, Dagster lives in `defs/`
(and the entry points), and the study's labels are spelled in `study.py` only. Read from the source
(module-level and in-function imports alike), so a new import that breaks the order fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "altgrad_pipeline"
#: Entry points: they may import Dagster, `defs/` and every room.
ENTRY_POINTS = {"definitions", "cli", "refresh", "execution"}
#: Rooms in order; a room imports only rooms of its rank or below. The bottom holds the vocabulary
#: and plain helpers; `examples` (the example-run generator, which names runs as the readers do)
#: sits with ingest, `notebook` (helpers for notebooks over the tables) with analysis.
RANKS = {
    "study": 0, "settings": 0, "escaping": 0, "markdown": 0, "partition_tables": 0, "parquet_concat": 0,
    "atomic": 0, "integrity": 0, "locking": 0,
    "ingest": 1, "examples": 1,
    "analysis": 2, "notebook": 2, "__init__": 2,
    "reports": 3,
    "defs": 4,
}  # fmt: skip
SPELLED_ONLY_IN_STUDY = {"BF16", "no_format"}


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(PACKAGE).with_suffix("").parts), p) for p in sorted(PACKAGE.rglob("*.py"))]


def _room(module: str) -> str:
    return module.split(".")[0]


def _imports(path: Path) -> list[str]:
    """Every module imported anywhere in the file (absolute names)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "altgrad_pipeline":  # `from altgrad_pipeline import settings`
                names += [f"altgrad_pipeline.{alias.name}" for alias in node.names]
    return names


def test_every_module_has_a_room() -> None:
    rooms = {_room(m) for m, _ in _modules()}
    assert rooms <= set(RANKS) | ENTRY_POINTS, rooms - set(RANKS) - ENTRY_POINTS


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_dagster_only_in_defs_and_entry_points(module: str, path: Path) -> None:
    if _room(module) in ENTRY_POINTS | {"defs"}:
        return
    dagster = [name for name in _imports(path) if name.split(".")[0].startswith("dagster")]
    assert not dagster, f"{module} imports {dagster}: Dagster wiring belongs in defs/"


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_rooms_import_only_rooms_below(module: str, path: Path) -> None:
    room = _room(module)
    if room in ENTRY_POINTS:
        return
    for name in _imports(path):
        if not name.startswith("altgrad_pipeline.") or name.startswith("altgrad_pipeline_tests"):
            continue
        target = _room(name.removeprefix("altgrad_pipeline."))
        assert target not in ENTRY_POINTS, f"{module} imports the entry point {name}"
        assert target != "defs" or room == "defs", f"{module} imports {name}: nothing outside defs/ imports defs/"
        assert RANKS[target] <= RANKS[room], f"{module} ({room}) imports {name} ({target}), a room above it"


def test_study_labels_are_spelled_only_in_study() -> None:
    spelled = []
    for module, path in _modules():
        if module == "study" or _room(module) == "examples":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in SPELLED_ONLY_IN_STUDY:
                spelled.append(f"{module}:{node.lineno} {node.value!r}")
    assert not spelled, f"use altgrad_pipeline.study's names: {spelled}"

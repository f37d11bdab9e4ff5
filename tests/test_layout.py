"""The package's layout rules, checked on the source: one home for each name and code.

- Ring, consumer and role names are spelled only in ``ringex/topology.py``: everyone
  else imports them, so the disruptor's shape is written down once.
- Codes are spelled only in ``ringex/codes.py``: no ``ord("N")``, no ``MSG_NEW = 78``.
- Command lines are parsed only in ``ringex/cli/``: no module that runs a process's
  loop also parses arguments.
- The README's layout section names every subpackage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ringex import topology

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ringex"
# Names that only the topology may spell: the consumers and roles, and the parts of
# ring and doorbell names.
RESERVED = {topology.JOURNALER, topology.MATCHER, topology.NOTIFIER, topology.GATEWAY, topology.SUPERVISOR}
# the cluster's roles (STANDBY is also the name of the `ringex standby` command)
RESERVED |= {topology.BRIDGE, topology.FOLLOWER}
RESERVED |= {topology.FIX}
NAME_PARTS = (".in.", ".out.", ".bell.")
# ord("A") .. ord("Z"): the range every letter code lives in
LETTERS = range(ord("A"), ord("Z") + 1)


def _sources(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (prose may name anything)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _strings(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_ring_consumer_and_role_names_are_spelled_only_in_the_topology():
    found = []
    for path in _sources(PACKAGE, ROOT / "perf"):
        if path == PACKAGE / "topology.py":
            continue
        for line, value in _strings(path):
            if value in RESERVED or value.startswith(f"{topology.MATCHER}-") or any(p in value for p in NAME_PARTS):
                found.append(f"{_where(path, line)}: {value!r}")
    assert not found, "use the names in ringex.topology:\n" + "\n".join(found)


def test_codes_are_spelled_only_in_the_codes_module():
    found = []
    for path in _sources(PACKAGE, ROOT / "perf"):
        if path == PACKAGE / "codes.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ord"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.append(f"{_where(path, node.lineno)}: ord({node.args[0].value!r})")
            if (  # ord(c) for c in "LNCRH"
                isinstance(node, ast.GeneratorExp | ast.ListComp | ast.SetComp)
                and any(isinstance(g.iter, ast.Constant) and isinstance(g.iter.value, str) for g in node.generators)
                and any(isinstance(n, ast.Name) and n.id == "ord" for n in ast.walk(node.elt))
            ):
                found.append(f"{_where(path, node.lineno)}: {ast.unparse(node)}")
        for node in tree.body:  # module constants such as MSG_NEW = 78
            if isinstance(node, ast.Assign):
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                for value in values:
                    if isinstance(value, ast.Constant) and type(value.value) is int and value.value in LETTERS:
                        found.append(f"{_where(path, node.lineno)}: {ast.unparse(node)}")
    assert not found, "derive codes from ringex.codes:\n" + "\n".join(found)


def test_only_the_cli_package_parses_command_lines():
    found = []
    for path in _sources(PACKAGE):
        if PACKAGE / "cli" in path.parents:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if "argparse" in names:
                found.append(_where(path, node.lineno))
    assert not found, "command lines belong in ringex/cli:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "package", sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
)
def test_the_readme_layout_names_every_subpackage(package):
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    assert f"ringex/{package}/" in layout

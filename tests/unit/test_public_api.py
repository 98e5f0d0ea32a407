"""The public surface is deliberate: each package's `__all__` is exactly what it exports.

In the manner of httpx's `test_exported_members`: a name imported into a
package's namespace without being listed (or listed without existing) fails
here, so internals do not leak into the API by accident. And the core
import stays light: `from rollout import Recorder` does not load the
collection stack.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

PACKAGES = [
    "compat",
    "rollout",
    "rollout.collection",
    "rollout.tokenmode",
    "rollout.embedded",
    "rollout.export",
    "rollout.inspect",
    "rollout.training",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_exactly_the_public_namespace(name: str) -> None:
    package = importlib.import_module(name)
    lazy = set(getattr(package, "_LAZY", ()))
    public = {
        member
        for member, value in vars(package).items()
        if not member.startswith("_")
        and not isinstance(value, types.ModuleType)  # subpackages and modules
        and member != "annotations"  # `from __future__ import annotations`
    }
    assert sorted(package.__all__) == sorted(public | lazy), name
    assert len(set(package.__all__)) == len(package.__all__), f"{name}.__all__ has duplicates"
    for member in package.__all__:
        assert getattr(package, member) is not None


def test_core_import_does_not_load_collection() -> None:
    """Nor token mode nor tiktoken: each is loaded on its first use."""
    code = (
        "import sys; from rollout import Recorder, assemble\n"
        "heavy = [m for m in ('rollout.collection', 'aiohttp', 'yaml', 'tqdm', 'ray', 'pyarrow',"
        " 'rollout.tokenmode', 'tiktoken')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`from rollout import Recorder` loaded {out.stdout.strip()}"


def test_lazy_names_resolve_to_the_collection_stack() -> None:
    import rollout
    import rollout.collection

    assert rollout.collect is rollout.collection.collect
    assert rollout.Collector is rollout.collection.Collector
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = rollout.nope  # type: ignore[attr-defined]


INTERNAL = {
    "rollout.collection": ["Backend", "Job", "done_uids"],  # runner/backend/output internals
    "rollout.export": ["json_default", "jsonable"],  # row serialisation helpers
}


@pytest.mark.parametrize("name", sorted(INTERNAL))
def test_internals_stay_out_of_the_api(name: str) -> None:
    package = importlib.import_module(name)
    assert set(INTERNAL[name]) & set(package.__all__) == set()


def _public(module: str) -> set[str]:
    """What `module` offers users: its own __all__, or (a plain module) its package's."""
    mod = importlib.import_module(module)
    names = set(getattr(mod, "__all__", ()))
    if not hasattr(mod, "__all__") or not names:
        parent = importlib.import_module(module.rpartition(".")[0])
        names = set(getattr(parent, "__all__", ()))
    # Loaded on first use (rollout: the collection stack; rollout.training: the verl trainer).
    return names | set(getattr(mod, "_LAZY", ())) | set(getattr(mod, "_VERL", ()))


def test_the_examples_use_only_the_public_api() -> None:
    """What the examples import from compat/rollout is exported: users copy the examples."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    private: list[str] = []
    for path in sorted((root / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if node.module.split(".")[0] not in ("compat", "rollout"):
                continue
            if node.module.startswith("rollout.demo"):  # the demo agent and its tasks
                continue
            try:
                public = _public(node.module)
            except ImportError:  # needs an extra this environment lacks (compat.camel: camel)
                continue
            private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name not in public]
    assert private == [], private


def test_rollout_uses_only_compats_public_api() -> None:
    """rollout imports from `compat` itself, never from its modules (issue 21: it reached into
    compat.threads, compat.retry, compat.clients and compat.token_counter)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "rollout"
    private = re.compile(r"^\s*(from compat\.\w+ import|import compat\.)", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if private.search(p.read_text())]
    assert offenders == []

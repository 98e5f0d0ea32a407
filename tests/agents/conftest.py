"""The agent-framework tier: real agent frameworks' own loops on recorder-wrapped clients.

Each framework (tests/agents/<framework>) runs in its own venv, built from the
package registries by `tests/agents/setup.sh` and run by `tests/agents/run.sh`
with `-m agents` (`.ci/run` does both, after the peer tier). Nothing here is
collected unless the marker expression selects `agents`, so the main
`python -m pytest` neither runs nor skips these tests. When it is selected,
each framework's conftest imports the framework at collection: a framework
that does not import is a collection error, never a skip.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Collect this tier only when `-m` asks for `agents` (and not `not agents`)."""
    selected = re.search(r"(?<!not )\bagents\b", config.getoption("markexpr") or "")
    return None if selected else True

"""CAMEL peer tier: camel-ai 0.2.90's own classes driving ours.

Runs in its own environment (camel pins pydantic and tiktoken), built from
`requirements.txt` here. Where camel is not installed (the main environment)
these modules are not collected, so a plain `python -m pytest` skips them.
"""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("camel") else ["test_*.py"]

"""The OpenAI Agents SDK tier: imported at collection, so a broken install fails, never skips."""

from __future__ import annotations

import agents  # noqa: F401  (the framework under test: an ImportError here is a collection error)

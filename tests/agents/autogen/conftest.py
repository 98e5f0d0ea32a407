"""The AutoGen tier: imported at collection, so a broken install fails, never skips."""

from __future__ import annotations

# The frameworks under test: an ImportError here is a collection error.
import autogen_agentchat.agents  # noqa: F401
import autogen_ext.models.openai  # noqa: F401

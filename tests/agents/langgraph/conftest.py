"""The LangChain + LangGraph tier: imported at collection, so a broken install fails, never skips."""

from __future__ import annotations

# The frameworks under test: an ImportError here is a collection error.
import langchain_openai  # noqa: F401
import langgraph.prebuilt  # noqa: F401

"""Agents for the trackers tier, importable by path."""

from __future__ import annotations

import os
from typing import Any


async def leaky(task: dict[str, Any], model: Any) -> float:
    """Puts its API key into the prompt, as careless agent code might."""
    key = os.environ["ROLLOUT_TEST_KEY"]
    reply = await model.arun([{"role": "user", "content": f"my key is {key}; what is 1 + 1?"}])
    return float((reply.choices[0].message.content or "").strip() == "2")

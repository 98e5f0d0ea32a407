"""examples/tool_agent.py: a tool-using multi-turn agent is one exact row per episode in token mode."""

from __future__ import annotations

from examples.tool_agent import calculator, run


def test_tool_agent_in_token_mode_is_one_row_per_episode_with_no_drift() -> None:
    figures = run("auto", limit=6, samples_per_task=2)
    assert figures["episodes"] == 12
    assert figures["with_tool_calls"] > 0  # the example exercises tool turns
    assert figures["sent_as_tokens"] == figures["calls"] - figures["episodes"]  # all but first calls
    assert figures["samples"] == figures["episodes"]
    assert figures["drift"] == 0
    assert figures["exact_episodes"] == figures["episodes"]


def test_the_same_agent_as_messages_splits_rows() -> None:
    figures = run("off", limit=6, samples_per_task=2)
    assert figures["sent_as_tokens"] == 0
    assert figures["samples"] >= figures["episodes"]


def test_calculator_tool() -> None:
    assert calculator("2 + 3") == "5"
    assert calculator("CALL") == "cannot evaluate 'CALL'"

"""`rollout train --rollout`: how `--trainer verl` collects; the numpy trainer refuses it, typed."""

from __future__ import annotations

import pytest

from rollout.cli import main


def test_rollout_flag_with_the_numpy_trainer_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--rollout", "agent_loop"]) == 2
    assert "--rollout chooses how --trainer verl collects" in capsys.readouterr().err


def test_rollout_flag_only_takes_the_two_ways() -> None:
    with pytest.raises(SystemExit):
        main(["train", "--trainer", "verl", "--rollout", "ray"])

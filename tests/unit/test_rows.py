"""Rows: `jsonable` on values agents really return, and writing an episode that cannot be written."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from rollout.call_record import CallRecord, ChoiceRecord
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import SerializationError
from rollout.export import episode_from_row, episode_to_row
from rollout.export.rows import (
    CALL,
    CHOICE,
    EPISODE,
    Table,
    dumps,
    json_default,
    jsonable,
    unwritable_as_failed,
)
from tests.unit.test_export import rich_episode


def test_jsonable_matches_a_json_round_trip_for_json_data() -> None:
    shared = {"k": [1, 2.5, None, True, "ü"]}
    value = {"a": shared, "b": (shared, shared), 1: "int key", None: "none key", 2.5: "float key"}
    assert jsonable(value) == json.loads(json.dumps(value))  # a shared, acyclic dict is fine


def test_jsonable_converts_numpy_and_pydantic_and_shows_the_rest() -> None:
    from rollout.collection.config import OutputSpec

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    value = {"arr": np.arange(3, dtype=np.int32), "x": np.float32(0.5), "spec": OutputSpec(), "o": Opaque()}
    out = jsonable(value)
    assert out["arr"] == [0, 1, 2] and out["x"] == 0.5 and out["o"] == "<opaque>"
    assert out["spec"]["parquet_batch"] == 256
    assert json.loads(dumps(out)) == out
    assert json.dumps({"a": np.int64(3)}, default=json_default) == '{"a": 3}'


def test_jsonable_names_a_cycle_instead_of_recursing() -> None:
    loop: dict[str, Any] = {"a": [1, {}]}
    loop["a"][1]["back"] = loop
    with pytest.raises(SerializationError, match=r"^metadata\['a'\]\[1\]\['back'\]: refers to itself"):
        jsonable(loop, "metadata")
    items: list[Any] = []
    items.append(items)
    with pytest.raises(SerializationError, match=r"value\[0\]: refers to itself"):
        jsonable(items)


def test_jsonable_names_a_key_json_cannot_hold() -> None:
    with pytest.raises(SerializationError, match=r"task\['x'\]: key \(1, 2\) is a tuple"):
        jsonable({"x": {(1, 2): "pair"}}, "task")


def test_jsonable_on_very_deep_data_is_a_clear_error() -> None:
    from rollout.export.rows import MAX_DEPTH

    deep: Any = []
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    ep = rich_episode()
    ep.task = deep
    assert json.loads(dumps(episode_to_row(ep)))["task"] == deep  # the deepest that is written
    for _ in range(100_000):
        deep = {"d": deep}
    with pytest.raises(SerializationError, match=f"nested deeper than {MAX_DEPTH} levels"):
        jsonable(deep)


def test_jsonable_on_a_broken_object_is_a_clear_error() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with pytest.raises(SerializationError, match=r"value\['b'\]: cannot convert Broken"):
        jsonable({"b": Broken()})


def test_an_unwritable_episode_is_written_as_failed_with_its_tokens() -> None:
    ep = rich_episode()
    loop: dict[str, Any] = {}
    loop["me"] = loop
    ep.metadata = {"pairs": {(1, 2): 3}}
    ep.calls[1].request = {"messages": [], "extra_body": loop}
    with pytest.raises(SerializationError, match=r"metadata\['pairs'\]: key \(1, 2\)"):
        episode_to_row(ep)
    with pytest.raises(SerializationError, match=r"calls\[1\]\.request\['extra_body'\]\['me'\]"):
        ep.metadata = {}
        episode_to_row(ep)
    ep.metadata = {"pairs": {(1, 2): 3}}

    failed = unwritable_as_failed(ep, SerializationError("metadata: bad"))
    back = episode_from_row(json.loads(dumps(episode_to_row(failed))))
    assert back.status == EpisodeStatus.ERROR
    assert back.error is not None
    assert back.error.startswith("episode could not be written: metadata: bad")
    assert back.error.endswith("Traceback: boom\n")  # the episode's own error is kept
    assert back.metadata["unwritable"].startswith("metadata['pairs']: key (1, 2)")
    assert back.metadata["repr"] == "{'pairs': {(1, 2): 3}}"
    assert back.calls[1].request["unwritable"].startswith("request['extra_body']['me']")
    assert back.calls[0].request == ep.calls[0].request  # what could be written is kept
    for a, b in zip(ep.calls, back.calls, strict=True):
        assert a.prompt_ids.tolist() == b.prompt_ids.tolist()
        for x, y in zip(a.choices, b.choices, strict=True):
            assert x.ids.tolist() == y.ids.tolist() and x.versions == y.versions
    assert ep.status == EpisodeStatus.TRUNCATED  # the original is not changed


@pytest.mark.parametrize("table", [EPISODE, CALL, CHOICE], ids=lambda t: t.cls.__name__)
def test_the_field_table_is_exactly_the_record_classes_fields(table: Table) -> None:
    """A field added to Episode, CallRecord or ChoiceRecord without a row field would be
    silently dropped on write (and one removed would fail every read): the table and
    the dataclass must name the same fields, and nested tables the right classes."""
    declared = {f.name for f in dataclasses.fields(table.cls) if f.init}
    stored = [f.name for f in table.fields]
    assert len(stored) == len(set(stored)), stored
    assert set(stored) == declared, (set(stored) ^ declared)
    nested = {f.name: f.table.cls for f in table.fields if f.kind == "table" and f.table is not None}
    assert nested == {Episode: {"calls": CallRecord}, CallRecord: {"choices": ChoiceRecord}, ChoiceRecord: {}}[table.cls]

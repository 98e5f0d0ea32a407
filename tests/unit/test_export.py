"""Exports: AReaL / verl batches, rLLM dicts, and bit-exact JSONL / Parquet round trips."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.call_record import CallRecord, ChoiceRecord, TokenSource
from rollout.episode import Episode, EpisodeStatus
from rollout.export import (
    JsonlWriter,
    ParquetWriter,
    SchemaVersionError,
    TruncationError,
    areal_tensors,
    read_jsonl,
    read_parquet,
    read_verl,
    to_areal,
    to_rllm,
    to_verl,
    write_jsonl,
    write_parquet,
    write_verl,
)
from rollout.export.areal import MissingLogprobsError
from rollout.export.jsonl import CorruptLineWarning
from rollout.export.rows import episode_to_row
from rollout.sample import Sample, assemble

# ---------------------------------------------------------------- helpers


def _bits(a: np.ndarray | None) -> Any:
    """Bit pattern of a float32 array (-0.0 and -inf compare exactly).

    NaNs are compared as "a NaN": JSON has a single NaN, so its sign and
    payload are not kept by JSONL (Parquet keeps them).
    """
    if a is None:
        return None
    return np.where(np.isnan(a), np.float32(np.nan), a).view(np.uint32).tolist()


def assert_same_episode(a: Episode, b: Episode) -> None:
    for name in ("id", "task_id", "sample", "task", "status", "error", "reward", "metadata"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.discounted == b.discounted
    assert len(a.calls) == len(b.calls)
    for ca, cb in zip(a.calls, b.calls, strict=True):
        for name in (
            "id",
            "index",
            "endpoint",
            "prompt_source",
            "request",
            "usage",
            "latency_s",
            "started_at",
            "reward",
            "parent",
            "notes",
            "sent_as",
            "fallback",
        ):
            assert getattr(ca, name) == getattr(cb, name), name
        assert ca.prompt_ids.dtype == cb.prompt_ids.dtype == np.int32
        assert ca.prompt_ids.tolist() == cb.prompt_ids.tolist()
        assert len(ca.choices) == len(cb.choices)
        for xa, xb in zip(ca.choices, cb.choices, strict=True):
            assert (xa.index, xa.finish_reason, xa.message, xa.source) == (
                xb.index,
                xb.finish_reason,
                xb.message,
                xb.source,
            )
            assert xa.ids.tolist() == xb.ids.tolist() and xb.ids.dtype == np.int32
            assert _bits(xa.logprobs) == _bits(xb.logprobs)
            assert xb.logprobs is None or xb.logprobs.dtype == np.float32
            assert xa.versions == xb.versions
            assert _bits(xa.server_logprobs) == _bits(xb.server_logprobs)
            assert (xa.server_tokens, xa.mismatch) == (xb.server_tokens, xb.mismatch)


def _choice(ids: list[int], logprobs: list[float] | None, versions: list[int], **kw: Any) -> ChoiceRecord:
    return ChoiceRecord(ids=ids, logprobs=logprobs, versions=versions, source=TokenSource.VLLM, **kw)


def rich_episode(task_id: str = "task-1", sample: int = 0) -> Episode:
    """Exercises every field the formats must keep."""
    c0 = CallRecord(
        id="chatcmpl-1",
        index=0,
        prompt_ids=[1, 2, 3],
        prompt_source=TokenSource.VLLM,
        choices=[
            _choice(
                [4, 5, 2**31 - 1],
                [-0.1, float("-inf"), -0.0],
                [3, 3, 4],
                finish_reason="tool_calls",
                message={
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": "{}"}}],
                },
            ),
            _choice([6], None, [3], index=1, finish_reason="stop", message={"content": "ünï ✓"}),
        ],
        request={
            "model": "m",
            "messages": [{"role": "user", "content": "hello\nworld"}],
            "temperature": 0.7,
            "n": 2,
        },
        usage={"prompt_tokens": 3, "completion_tokens": 4},
        latency_s=0.123456789,
        started_at=1700000000.5,
        reward=None,
        notes=["n=2"],
    )
    c1 = CallRecord(
        id="chatcmpl-2",
        index=1,
        prompt_ids=[1, 2, 3, 4, 5, 2**31 - 1, 9],
        prompt_source=TokenSource.TOKENIZER,
        choices=[
            _choice([7, 8], [float(np.float32(-1 / 3)), -2.5], [4, 4], finish_reason="length")
        ],
        request={
            "messages": [],
            "tools": [{"type": "function", "parameters": {"headers": "kept"}}],
        },
        usage=None,
        reward=0.25,
        parent=0,
        notes=["drift: retokenized", "second"],
        sent_as="tokens",
        fallback="bridge not found: sent as messages",
    )
    return Episode(
        id=f"ep-{task_id}-{sample}",
        task_id=task_id,
        sample=sample,
        task={"question": "2+2?", "answer": 4},
        calls=[c0, c1],
        status=EpisodeStatus.TRUNCATED,
        error="Traceback: boom\n",
        reward=1.0,
        metadata={"agent": "camel", "nested": {"a": [1, 2.5, None, True]}},
    )


ids_st = st.lists(st.integers(0, 2**31 - 1), max_size=8)
f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
text = st.text(max_size=12)


@st.composite
def episodes(draw: Any) -> Episode:
    calls = []
    for i in range(draw(st.integers(0, 3))):
        choices = []
        for k in range(draw(st.integers(0, 2))):
            ids = draw(ids_st)
            lp = draw(st.none() | st.lists(f32, min_size=len(ids), max_size=len(ids)))
            vs = draw(st.lists(st.integers(-1, 5), min_size=len(ids), max_size=len(ids)))
            choices.append(
                ChoiceRecord(
                    index=k,
                    ids=ids,
                    logprobs=lp,
                    versions=vs,
                    finish_reason=draw(st.none() | st.sampled_from(["stop", "length"])),
                    message={"role": "assistant", "content": draw(text)},
                    source=draw(st.sampled_from(list(TokenSource))),
                    server_logprobs=draw(st.none() | st.lists(f32, max_size=6)),
                    mismatch=draw(st.none() | text),
                )
            )
        calls.append(
            CallRecord(
                id=draw(text),
                index=i,
                prompt_ids=draw(ids_st),
                prompt_source=draw(st.sampled_from(list(TokenSource))),
                choices=choices,
                request={"messages": [{"role": "user", "content": draw(text)}]},
                usage=draw(st.none() | st.just({"total_tokens": 3})),
                latency_s=draw(st.floats(0, 100)),
                reward=draw(st.none() | st.floats(-10, 10)),
                parent=draw(st.none() | st.integers(0, 3)),
                notes=draw(st.lists(text, max_size=2)),
                sent_as=draw(st.sampled_from(["messages", "tokens"])),
                fallback=draw(st.none() | text),
            )
        )
    return Episode(
        task_id=draw(text),
        sample=draw(st.integers(0, 64)),
        calls=calls,
        status=draw(st.sampled_from(list(EpisodeStatus))),
        error=draw(st.none() | text),
        reward=draw(st.none() | st.floats(-1, 1)),
        metadata={"k": draw(text)},
    )


# ---------------------------------------------------------------- JSONL


def test_jsonl_round_trip_exact(tmp_path: Path) -> None:
    eps = [rich_episode("a", 0), rich_episode("a", 1)]
    path = tmp_path / "eps.jsonl"
    assert write_jsonl(eps, path, append=False) == 2
    back = read_jsonl(path)
    assert len(back) == 2
    for a, b in zip(eps, back, strict=True):
        assert_same_episode(a, b)
    assert math.isinf(back[0].calls[0].choices[0].logprobs[1])  # type: ignore[index]
    assert back[0].calls[0].choices[1].logprobs is None
    line = json.loads(path.read_text().splitlines()[0])
    assert line["schema_version"] == 3


def test_a_reply_without_ids_keeps_its_logprobs_count_and_mismatch_in_both_formats(tmp_path: Path) -> None:
    unpaired = ChoiceRecord(  # a server that sent logprobs but no ids, and a tokenizer that did not match
        index=0, ids=[9], versions=[4], source=TokenSource.TOKENIZER,
        server_logprobs=[float(np.float32(-1 / 7)), -np.inf, -0.5], mismatch="3 tokens, 1 id",
    )  # fmt: skip
    counted = ChoiceRecord(index=1, server_tokens=5)  # no ids, no logprobs: usage's count only
    ep = Episode(task_id="t", calls=[CallRecord(prompt_ids=[1], choices=[unpaired, counted])])
    jp, pp = tmp_path / "e.jsonl", tmp_path / "e.parquet"
    write_jsonl([ep], jp, append=False)
    write_parquet([ep], pp)
    for (back,) in (read_jsonl(jp), read_parquet(pp)):
        assert_same_episode(ep, back)
        a, b = back.calls[0].choices
        assert a.server_logprobs is not None and a.server_logprobs.dtype == np.float32
        assert (a.server_tokens, a.num_sampled, a.mismatch) == (3, 3, "3 tokens, 1 id")
        assert (b.server_logprobs, b.server_tokens, b.num_sampled) == (None, 5, 5)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(eps=st.lists(episodes(), max_size=3))
def test_jsonl_and_parquet_round_trip_property(tmp_path: Path, eps: list[Episode]) -> None:
    jp, pp = tmp_path / "p.jsonl", tmp_path / "p.parquet"
    write_jsonl(eps, jp, append=False)
    write_parquet(eps, pp)
    for back in (read_jsonl(jp), read_parquet(pp)):
        assert len(back) == len(eps)
        for a, b in zip(eps, back, strict=True):
            assert_same_episode(a, b)


def test_jsonl_append_across_sessions(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with JsonlWriter(path) as w:
        w.write(rich_episode("a"))
    with JsonlWriter(path) as w:
        w.write(rich_episode("b"))
        w.write(rich_episode("c"))
    assert [e.task_id for e in read_jsonl(path)] == ["a", "b", "c"]
    write_jsonl(rich_episode("d"), path, append=False)
    assert [e.task_id for e in read_jsonl(path)] == ["d"]


def test_jsonl_truncated_last_line_is_skipped_and_append_recovers(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    write_jsonl([rich_episode("a"), rich_episode("b")], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # killed mid-line
    with pytest.warns(CorruptLineWarning, match="truncated last line"):
        back = read_jsonl(path)
    assert [e.task_id for e in back] == ["a"]
    with pytest.raises(ValueError, match="corrupt"):
        read_jsonl(path, errors="raise")
    # a new session starts on a fresh line: the old partial line stays isolated
    write_jsonl(rich_episode("c"), path)
    with pytest.warns(CorruptLineWarning, match="corrupt line"):
        back = read_jsonl(path)
    assert [e.task_id for e in back] == ["a", "c"]
    assert_same_episode(back[1], rich_episode("c"))


def test_jsonl_writer_flushes_each_line(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    w = JsonlWriter(path, append=False)
    w.write(rich_episode("a"))
    assert [e.task_id for e in read_jsonl(path)] == ["a"]  # visible before close
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(rich_episode("b"))


def test_jsonl_readers_keep_the_latest_attempt_of_a_retried_episode(tmp_path: Path) -> None:
    from rollout.export import iter_jsonl

    path = tmp_path / "retried.jsonl"
    first, other = rich_episode("a"), rich_episode("b")
    first.id, other.id = "attempt-1", "other"
    rerun = rich_episode("a")
    rerun.id, rerun.metadata = "attempt-2", {"retry_of": "attempt-1"}
    write_jsonl([first, other, rerun], path)
    assert [e.id for e in read_jsonl(path)] == ["other", "attempt-2"]
    assert [e.id for e in iter_jsonl(path)] == ["other", "attempt-2"]
    assert [e.id for e in read_jsonl(path, latest_only=False)] == ["attempt-1", "other", "attempt-2"]
    # a rerun whose line was torn replaces nothing
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    with pytest.warns(CorruptLineWarning, match=":3: skipped truncated last line"):
        assert [e.id for e in read_jsonl(path)] == ["attempt-1", "other"]


def test_jsonl_non_utf8_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write_jsonl([rich_episode("a"), rich_episode("b")], path)
    path.write_bytes(path.read_bytes().replace(b'"task_id":"b"', b'"task_id":"\xc3b"'))
    with pytest.warns(CorruptLineWarning, match=r"bad\.jsonl:2: skipped corrupt line \(not UTF-8: byte 0xc3"):
        assert [e.task_id for e in read_jsonl(path)] == ["a"]
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: corrupt JSONL line \(not UTF-8"):
        read_jsonl(path, errors="raise")


def test_jsonl_future_schema_raises(tmp_path: Path) -> None:
    path = tmp_path / "future.jsonl"
    row = episode_to_row(rich_episode())
    row["schema_version"] = 99
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SchemaVersionError, match="schema_version 99"):
        read_jsonl(path)
    del row["schema_version"]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SchemaVersionError):
        read_jsonl(path)


# ---------------------------------------------------------------- Parquet


def test_parquet_round_trip_exact(tmp_path: Path) -> None:
    eps = [rich_episode("a", 0), rich_episode("b", 1), Episode(task_id="empty")]
    path = tmp_path / "eps.parquet"
    assert write_parquet(eps, path) == 3
    back = read_parquet(path)
    for a, b in zip(eps, back, strict=True):
        assert_same_episode(a, b)


def test_parquet_token_columns_are_native_lists(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "eps.parquet"
    write_parquet([rich_episode()], path)
    schema = pq.read_schema(path)
    call = schema.field("calls").type.value_type
    choice = call.field("choices").type.value_type
    assert call.field("prompt_ids").type == pa.list_(pa.int32())
    assert choice.field("ids").type == pa.list_(pa.int32())
    assert choice.field("logprobs").type == pa.list_(pa.float32())
    assert choice.field("versions").type == pa.list_(pa.int32())
    assert schema.metadata[b"rollout.schema_version"] == b"3"


def test_parquet_append_across_sessions(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "run.parquet"
    with ParquetWriter(path) as w:
        w.write([rich_episode("a"), rich_episode("b")])
    with ParquetWriter(path) as w:
        w.write(rich_episode("c"))
        w.write([rich_episode("d")])
        assert w.count == 4
    assert pq.ParquetFile(path).num_row_groups == 3  # one per batch
    back = read_parquet(path)
    assert [e.task_id for e in back] == ["a", "b", "c", "d"]
    assert_same_episode(back[2], rich_episode("c"))
    write_parquet([rich_episode("e")], path)  # append=False replaces
    assert [e.task_id for e in read_parquet(path)] == ["e"]


def test_parquet_abort_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "run.parquet"
    write_parquet([rich_episode("a")], path)
    w = ParquetWriter(path)
    w.write(rich_episode("b"))
    w.abort()
    assert [e.task_id for e in read_parquet(path)] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.parquet"]


def test_parquet_future_schema_raises(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from rollout.export.parquet import episodes_to_table

    table = episodes_to_table([rich_episode()])
    table = table.replace_schema_metadata({b"rollout.schema_version": b"7"})
    path = tmp_path / "future.parquet"
    pq.write_table(table, path)
    with pytest.raises(SchemaVersionError, match="schema_version 7"):
        read_parquet(path)
    with pytest.raises(SchemaVersionError):
        ParquetWriter(path)  # appending to a newer file would mix schemas


def test_parquet_without_pyarrow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install rollout-compat\[parquet\]"):
        write_parquet([rich_episode()], tmp_path / "x.parquet")


def test_token_mode_fields_round_trip(tmp_path: Path) -> None:
    ep = rich_episode()
    jp, pp = tmp_path / "t.jsonl", tmp_path / "t.parquet"
    write_jsonl(ep, jp)
    write_parquet(ep, pp)
    for back in (read_jsonl(jp)[0], read_parquet(pp)[0]):
        assert [(c.sent_as, c.fallback) for c in back.calls] == [
            ("messages", None),
            ("tokens", "bridge not found: sent as messages"),
        ]


DATA = Path(__file__).parent.parent / "data"


def _as_version_1(ep: Episode) -> Episode:
    """What a version-1 file holds of `ep`: the token-mode fields at their defaults."""
    for call in ep.calls:
        call.sent_as, call.fallback = "messages", None
    return ep


def test_version_1_files_still_read() -> None:
    # Written by the schema-1 code (commit ca8d1f7) from rich_episode("a", 0),
    # rich_episode("b", 1) and Episode(id="empty-ep", task_id="empty").
    expected = [
        _as_version_1(rich_episode("a", 0)),
        _as_version_1(rich_episode("b", 1)),
        Episode(id="empty-ep", task_id="empty"),
    ]
    for back in (read_jsonl(DATA / "episodes_v1.jsonl"), read_parquet(DATA / "episodes_v1.parquet")):
        assert len(back) == 3
        for a, b in zip(expected, back, strict=True):
            assert_same_episode(a, b)


def test_parquet_append_to_a_version_1_file_rewrites_it_in_the_current_version(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "old.parquet"
    path.write_bytes((DATA / "episodes_v1.parquet").read_bytes())
    with ParquetWriter(path) as w:
        w.write(rich_episode("c"))
        assert w.count == 4
    assert pq.read_schema(path).metadata[b"rollout.schema_version"] == b"3"
    back = read_parquet(path)
    assert [e.task_id for e in back] == ["a", "b", "empty", "c"]
    assert_same_episode(back[0], _as_version_1(rich_episode("a", 0)))
    assert_same_episode(back[3], rich_episode("c"))


def test_one_field_table_names_the_jsonl_keys_and_the_parquet_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from rollout.export.rows import CALL, CHOICE, EPISODE

    path = tmp_path / "e.parquet"
    write_parquet(rich_episode(), path)
    schema = pq.read_schema(path)
    call_t = schema.field("calls").type.value_type
    choice_t = call_t.field("choices").type.value_type
    row = episode_to_row(rich_episode())
    for table, arrow, keys in (
        (EPISODE, schema, row),
        (CALL, call_t, row["calls"][0]),
        (CHOICE, choice_t, row["calls"][0]["choices"][0]),
    ):
        names = [f.name for f in table.fields]
        assert [f.name for f in arrow if f.name != "schema_version"] == names
        assert [k for k in keys if k != "schema_version"] == names


# ---------------------------------------------------------------- secrets


def _secret_episode() -> Episode:
    ep = rich_episode()
    ep.calls[0].request = {
        "messages": [{"role": "user", "content": "hi"}],
        "api_key": "sk-SECRET1",
        "headers": {"Authorization": "Bearer sk-SECRET2"},
        "extra_headers": {"X-Api-Key": "sk-SECRET3"},
        "extra_body": {"Authorization": "Bearer sk-SECRET4", "top_k": 5, "apiKey": "sk-SECRET5"},
        "max_tokens": 16,
        "tools": [{"type": "function", "parameters": {"properties": {"headers": {}}}}],
    }
    return ep


def test_secrets_never_written(tmp_path: Path) -> None:
    ep = _secret_episode()
    expected = {
        "messages": [{"role": "user", "content": "hi"}],
        "extra_body": {"top_k": 5},
        "max_tokens": 16,
        "tools": [{"type": "function", "parameters": {"properties": {"headers": {}}}}],
    }
    jp, pp = tmp_path / "s.jsonl", tmp_path / "s.parquet"
    write_jsonl(ep, jp)
    write_parquet(ep, pp, compression="none")
    for raw in (jp.read_bytes(), pp.read_bytes()):
        assert b"SECRET" not in raw
    assert read_jsonl(jp)[0].calls[0].request == expected
    assert read_parquet(pp)[0].calls[0].request == expected
    assert "SECRET" not in json.dumps(to_rllm(ep))
    assert "api_key" in ep.calls[0].request  # the in-memory record is not mutated


def test_a_registered_key_leaves_no_trace_in_any_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    import rollout.redact

    monkeypatch.setattr(rollout.redact, "_secrets", rollout.redact._secrets)  # undo after
    key = "zq7-" + uuid.uuid4().hex
    rollout.redact.register_secret(key)
    ep = rich_episode()
    ep.error = f'openai.AuthenticationError: 401 {{"error": "invalid api key {key}"}}'
    ep.metadata = {
        "server": f"http://user:{key}@host:8000/v1",
        "proxy": "https://bob:hunter2hunter2@proxy.local/",  # unregistered, caught by shape
        "log": [f"retrying with {key}"],
    }
    ep.task = {"question": f"echo {key}"}
    call = ep.calls[0]
    call.request = {
        "messages": [{"role": "user", "content": f"my key is {key}"}],
        "extra_body": {
            "session_token": key,
            "credentials": {"password": key},
            "options": {"deep": [{"x": f"k={key}"}]},
            "top_k": 5,
        },
    }
    call.notes = [f"server echoed {key}"]
    call.fallback = f"token route refused {key}"
    call.choices[0].message = {"role": "assistant", "content": f"your key: {key}"}

    jp, pp = tmp_path / "k.jsonl", tmp_path / "k.parquet"
    write_jsonl(ep, jp)
    write_parquet(ep, pp, compression="none")
    outputs = {
        "jsonl": jp.read_bytes().decode(),
        "parquet": pp.read_bytes().decode("latin-1"),
        "rllm": json.dumps(to_rllm(ep), ensure_ascii=False),
    }
    for name, text in outputs.items():
        for i in range(len(key) - 8):
            assert key[i : i + 8] not in text, f"{name} holds part of the key"
        assert "hunter2" not in text, name
    back = read_jsonl(jp)[0]
    assert back.metadata["server"] == "http://user:[REDACTED]@host:8000/v1"
    assert back.calls[0].request["extra_body"] == {
        "options": {"deep": [{"x": "k=[REDACTED]"}]},
        "top_k": 5,
    }
    assert back.error is not None and "401" in back.error and "[REDACTED]" in back.error
    assert_same_episode(read_parquet(pp)[0], back)
    assert key in ep.error  # the in-memory episode is not changed


# ---------------------------------------------------------------- AReaL


def _samples() -> list[Sample]:
    a = Sample(
        tokens=[1, 2, 3, 4, 5, 0, 6],
        loss_mask=[0, 0, 0, 1, 1, 0, 1],
        logprobs=[0, 0, 0, -0.5, -0.25, 0, -1.0],
        versions=[-1, -1, -1, 7, 7, -1, 8],
        prompt_len=3,
        reward=1.5,
        task_id="t1",
        sample=0,
        episode_id="e1",
    )
    b = Sample(
        tokens=[9, 8, 7],
        loss_mask=[0, 1, 1],
        logprobs=[0, -0.125, -2.0],
        versions=[-1, 2, 2],
        prompt_len=1,
        reward=-1.0,
        task_id="t2",
        sample=1,
        episode_id="e2",
    )
    return [a, b]


def test_to_areal_hand_computed() -> None:
    out = to_areal(_samples(), pad_id=99)
    assert set(out) == {
        "input_ids",
        "loss_mask",
        "logprobs",
        "versions",
        "attention_mask",
        "rewards",
    }
    np.testing.assert_array_equal(
        out["input_ids"], [[1, 2, 3, 4, 5, 0, 6], [9, 8, 7, 99, 99, 99, 99]]
    )
    np.testing.assert_array_equal(out["loss_mask"], [[0, 0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        out["logprobs"], [[0, 0, 0, -0.5, -0.25, 0, -1.0], [0, -0.125, -2.0, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        out["versions"], [[-1, -1, -1, 7, 7, -1, 8], [-1, 2, 2, -1, -1, -1, -1]]
    )
    np.testing.assert_array_equal(out["attention_mask"], [[True] * 7, [True] * 3 + [False] * 4])
    np.testing.assert_array_equal(out["rewards"], [1.5, -1.0])
    dtypes = {k: v.dtype for k, v in out.items()}
    assert dtypes == {
        "input_ids": np.int32,
        "loss_mask": np.int32,
        "logprobs": np.float32,
        "versions": np.int32,
        "attention_mask": np.bool_,
        "rewards": np.float32,
    }


def test_to_areal_accepts_episodes_and_empty() -> None:
    eps = [rich_episode("a"), rich_episode("b")]
    eps[0].status = eps[1].status = EpisodeStatus.COMPLETED
    direct = to_areal(eps, rewards="episode")
    via = to_areal(assemble(eps, mode="concat"))
    for k in direct:
        np.testing.assert_array_equal(direct[k], via[k])
    assert direct["input_ids"].shape[0] == len(assemble(eps))
    # AReaL's rule: the side branch (call 0's second choice) ends at a call without a
    # reward while another call has one, so it gets 0.0; the other leaf ends at call 1 (0.25).
    assert to_areal(eps)["rewards"].tolist() == [0.0, 0.25, 0.0, 0.25]
    assert via["rewards"].tolist() == [1.0, 0.25, 1.0, 0.25]
    empty = to_areal([])
    assert empty["input_ids"].shape == (0, 0) and empty["rewards"].shape == (0,)


def test_to_areal_require_logprobs() -> None:
    s = dataclasses.replace(_samples()[0], has_logprobs=False)
    assert to_areal([s])["logprobs"].shape == (1, 7)
    with pytest.raises(MissingLogprobsError):
        to_areal([s], require_logprobs=True)


def _rewarded(calls: int, *, reward: float | None, own: dict[int, float] | None = None) -> Episode:
    """A linear episode of `calls` turns, each extending the last exactly."""
    records, prompt = [], [1, 2]
    for i in range(calls):
        records.append(
            CallRecord(prompt_ids=prompt, choices=[_choice([10 + i], [-0.5], [2])], parent=i - 1 if i else None)
        )
        prompt = [*prompt, 10 + i, 5]
    for i, r in (own or {}).items():
        records[i].reward = r
    return Episode(task_id="t", reward=reward, calls=records)


def test_to_areal_individual_rewards_follow_areal() -> None:
    # AReaL: an interaction without a reward exports 0.0; set_last_reward rewards the last one.
    ep = _rewarded(3, reward=1.0)
    assert to_areal(ep, mode="individual")["rewards"].tolist() == [0.0, 0.0, 1.0]
    assert to_areal(ep, mode="individual", rewards="episode")["rewards"].tolist() == [1.0] * 3
    assert to_areal(ep)["rewards"].tolist() == [1.0]  # concat: one row, ending at the last call
    # Calls with their own rewards keep them, and the episode reward is not added on top.
    mixed = _rewarded(3, reward=1.0, own={0: 0.5})
    assert to_areal(mixed, mode="individual")["rewards"].tolist() == [0.5, 0.0, 0.0]
    # Discounting (AReaL's apply_reward_discount) gives every call its return.
    discounted = _rewarded(3, reward=1.0)
    discounted.discount(0.5)
    assert to_areal(discounted, mode="individual")["rewards"].tolist() == [0.25, 0.5, 1.0]
    # Samples keep the rewards assemble gave them.
    samples = assemble(_rewarded(3, reward=1.0), mode="individual")
    assert to_areal(samples)["rewards"].tolist() == [s.reward for s in samples]
    with pytest.raises(ValueError, match="rewards"):
        to_areal(ep, rewards="last")  # type: ignore[arg-type]


def test_areal_tensors_names_the_extra_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(ImportError, match=r"rollout-compat\[torch\]"):
        areal_tensors(to_areal(_samples()))


# ---------------------------------------------------------------- verl


def test_to_verl_hand_computed() -> None:
    out = to_verl(_samples(), pad_id=0)
    assert set(out) == {"tensors", "non_tensors", "meta_info"}  # DataProto.from_dict's parameters
    b, nt = out["tensors"], out["non_tensors"]
    # P = 3 (longest prompt), R = 4 (longest response)
    np.testing.assert_array_equal(b["prompts"], [[1, 2, 3], [0, 0, 9]])  # left-padded
    np.testing.assert_array_equal(b["responses"], [[4, 5, 0, 6], [8, 7, 0, 0]])  # right-padded
    np.testing.assert_array_equal(b["input_ids"], [[1, 2, 3, 4, 5, 0, 6], [0, 0, 9, 8, 7, 0, 0]])
    np.testing.assert_array_equal(b["response_mask"], [[1, 1, 0, 1], [1, 1, 0, 0]])
    # a real token equal to pad_id (the observation 0) still gets attention
    np.testing.assert_array_equal(b["attention_mask"], [[1] * 7, [0, 0, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(b["position_ids"], [[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 0, 0]])
    np.testing.assert_array_equal(
        b["rollout_log_probs"], [[-0.5, -0.25, 0, -1.0], [-0.125, -2.0, 0, 0]]
    )
    # verl's agent loop hands rewards over as rm_scores: the score on the last response token
    np.testing.assert_array_equal(b["rm_scores"], [[0, 0, 0, 1.5], [0, -1.0, 0, 0]])
    assert "token_level_scores" not in b  # the trainer overwrites that one
    assert nt["uid"].tolist() == ["t1", "t2"] and nt["uid"].dtype == object
    assert nt["episode_ids"].tolist() == ["t1:0", "t2:1"]
    assert out["meta_info"] == {
        "num_truncated": 0,
        "num_missing_logprobs": 0,
        "num_multi_row_episodes": 0,
    }
    assert b["input_ids"].dtype == np.int64 and b["rm_scores"].dtype == np.float32


def test_to_verl_max_lengths_pad_and_truncate() -> None:
    out = to_verl(_samples(), max_prompt_len=5, max_response_len=6)
    assert out["tensors"]["prompts"].shape == (2, 5) and out["tensors"]["responses"].shape == (2, 6)
    np.testing.assert_array_equal(out["tensors"]["prompts"][1], [0, 0, 0, 0, 9])
    with pytest.raises(TruncationError, match="1 of 2 samples have a response longer"):
        to_verl(_samples(), max_response_len=3)
    with pytest.raises(TruncationError, match="prompt"):
        to_verl(_samples(), max_prompt_len=2)
    out = to_verl(_samples(), max_prompt_len=2, max_response_len=3, truncate=True)
    b = out["tensors"]
    np.testing.assert_array_equal(b["prompts"], [[2, 3], [0, 9]])  # keeps the end of the prompt
    np.testing.assert_array_equal(b["responses"], [[4, 5, 0], [8, 7, 0]])  # keeps the start
    np.testing.assert_array_equal(b["rm_scores"], [[0, 0, 1.5], [0, -1.0, 0]])
    assert out["meta_info"]["num_truncated"] == 1


def test_to_verl_omits_rollout_logprobs_when_missing() -> None:
    samples = _samples()
    samples[1] = dataclasses.replace(samples[1], has_logprobs=False)
    out = to_verl(samples)
    assert "rollout_log_probs" not in out["tensors"]
    assert out["meta_info"]["num_missing_logprobs"] == 1


def _two_turns(task_id: str, sample: int, reward: float, *, drift: bool = False) -> Episode:
    second = [1, 2, 3, 4, 4] if not drift else [1, 2, 7]  # drift: does not extend turn 1
    return Episode(
        task_id=task_id,
        sample=sample,
        reward=reward,
        calls=[
            CallRecord(prompt_ids=[1, 2], choices=[_choice([3], [-0.5], [1])]),
            CallRecord(prompt_ids=second, choices=[_choice([5, 6], [-1, -2], [1, 1])], parent=0),
        ],
    )


def test_to_verl_multi_turn_episode() -> None:
    b = to_verl([_two_turns("q", 0, 1.0)])["tensors"]
    np.testing.assert_array_equal(b["prompts"], [[1, 2]])
    np.testing.assert_array_equal(b["responses"], [[3, 4, 4, 5, 6]])
    np.testing.assert_array_equal(b["response_mask"], [[1, 0, 0, 1, 1]])
    np.testing.assert_array_equal(b["rollout_log_probs"], [[-0.5, 0, 0, -1, -2]])
    np.testing.assert_array_equal(b["rm_scores"], [[0, 0, 0, 0, 1.0]])


def test_to_verl_episode_uids_for_episodes_split_over_rows() -> None:
    eps = [_two_turns("q", 0, 1.0, drift=True), _two_turns("q", 1, 0.0)]
    with pytest.warns(UserWarning, match="1 episodes span several rows"):
        by_task = to_verl(eps)
    assert by_task["non_tensors"]["uid"].tolist() == ["q", "q", "q"]
    assert by_task["meta_info"]["num_multi_row_episodes"] == 1
    by_episode = to_verl(eps, uid="episode")  # no warning: the pairs keep episodes apart
    uids = by_episode["non_tensors"]["uid"]
    assert uids.shape == (3,) and uids.dtype == object  # pairs, not a [3, 2] array
    assert uids.tolist() == [("q", "q:0"), ("q", "q:0"), ("q", "q:1")]
    with pytest.raises(ValueError, match="uid"):
        to_verl(eps, uid="row")  # type: ignore[arg-type]


def test_write_verl_round_trips_without_pickle(tmp_path: Path) -> None:
    eps = [_two_turns("q", 0, 1.0, drift=True), _two_turns("q", 1, 0.0)]
    for uid in ("task", "episode"):
        with pytest.warns(UserWarning) if uid == "task" else contextlib.nullcontext():
            batch = to_verl(eps, uid=uid)  # type: ignore[arg-type]
        write_verl(batch, tmp_path / "b.npz")
        with np.load(tmp_path / "b.npz", allow_pickle=False) as f:  # loads without pickle
            assert "meta_info" in f.files
        back = read_verl(tmp_path / "b.npz")
        assert back["meta_info"] == batch["meta_info"]
        assert set(back["tensors"]) == set(batch["tensors"])
        for key, value in batch["tensors"].items():
            np.testing.assert_array_equal(back["tensors"][key], value)
            assert back["tensors"][key].dtype == value.dtype
        for key, value in batch["non_tensors"].items():
            assert back["non_tensors"][key].tolist() == value.tolist(), key
            assert back["non_tensors"][key].dtype == value.dtype, key


# ---------------------------------------------------------------- rLLM
# The full contract (rLLM's from_dict / to_dict and its verl transform) is in
# test_rllm_contract.py; these check what the formats must keep.

RLLM_EPISODE = [  # rllm/types.py:349-366 @9beb6e0f (Episode.to_dict)
    "id",
    "task",
    "termination_reason",
    "is_correct",
    "session_id",
    "trajectories",
    "metrics",
    "info",
]
RLLM_TRAJECTORY = ["uid", "name", "task", "steps", "reward", "info"]  # types.py:281-287
RLLM_STEP = [  # types.py:183-200
    "prompt_ids",
    "response_ids",
    "logprobs",
    "routing_matrices",
    "chat_completions",
    "observation",
    "thought",
    "action",
    "model_response",
    "model_output",
    "info",
    "reward",
    "done",
    "mc_return",
    "advantage",
    "weight_version",
]


def test_to_rllm_fields_match_rllm() -> None:
    ep = rich_episode("task-7", 3)
    (out,) = to_rllm([ep])
    assert list(out) == RLLM_EPISODE
    (traj,) = out["trajectories"]
    assert list(traj) == RLLM_TRAJECTORY
    assert [list(s) for s in traj["steps"]] == [RLLM_STEP] * 3  # (call, choice) pairs
    assert out["id"] == "task-7:3"
    assert out["termination_reason"] == "max_response_length_exceeded"  # truncated on length
    assert out["is_correct"] is True and out["session_id"] is None
    s0, s1, s2 = traj["steps"]
    for s in traj["steps"]:
        assert s["logprobs"] == [] or len(s["logprobs"]) == len(s["response_ids"])
        assert s["model_output"]["prompt_ids"] == s["prompt_ids"]
        assert s["model_output"]["completion_ids"] == s["response_ids"]
        assert s["model_output"]["logprobs"] == s["logprobs"]
    assert s0["prompt_ids"] == [1, 2, 3] and s0["response_ids"] == [4, 5, 2**31 - 1]
    assert s1["logprobs"] == []  # server sent none: empty, never fake zeros
    assert (
        s0["chat_completions"][-1]["tool_calls"][0]["id"] == "t1"
        and s0["chat_completions"][0]["role"] == "user"
    )
    assert s0["model_output"]["tool_calls"] == [{"name": "f", "arguments": {}}]  # rLLM's ToolCall
    assert s0["model_output"]["finish_reason"] == "tool_calls"
    assert s1["model_response"] == s1["model_output"]["content"] == "ünï ✓"
    assert s0["weight_version"] == 4 and s2["weight_version"] == 4
    assert s2["reward"] == 0.25 and s2["done"] and not s0["done"]
    assert (s0["advantage"], s0["mc_return"]) == (None, 0.0)
    assert s2["info"]["exact"] is False and s2["info"]["token_source"] == "vllm"
    json.dumps(out)  # JSON-ready


def test_to_rllm_termination_reasons() -> None:
    ep = rich_episode()
    for status, reason in [
        (EpisodeStatus.COMPLETED, "env_done"),
        (EpisodeStatus.TIMEOUT, "timeout"),
        (EpisodeStatus.ERROR, "error"),
    ]:
        ep.status = status
        assert to_rllm(ep)[0]["termination_reason"] == reason
    ep.status = EpisodeStatus.TRUNCATED
    ep.calls[-1].choices[0].finish_reason = "stop"
    assert to_rllm(ep)[0]["termination_reason"] == "max_turns_exceeded"
    ep.metadata["termination_reason"] = "unknown"
    assert to_rllm(ep)[0]["termination_reason"] == "unknown"


def test_to_rllm_episode_id_keeps_tasks_apart() -> None:
    # rLLM's task_id is Episode.id.split(":")[0] (types.py:332-334).
    ids = [to_rllm(rich_episode(t, 1))[0]["id"] for t in ("a:b", "a", "a%3Ab")]
    assert ids == ["a%3Ab:1", "a:1", "a%253Ab:1"]
    assert len({i.split(":")[0] for i in ids}) == 3


def test_flat_api() -> None:
    import rollout.export as export

    for name in (
        "to_areal",
        "to_rllm",
        "to_verl",
        "write_jsonl",
        "read_jsonl",
        "write_parquet",
        "read_parquet",
        "JsonlWriter",
        "ParquetWriter",
    ):
        assert hasattr(export, name), name

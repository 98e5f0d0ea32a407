"""The output survives what real runs meet: kill -9, two collectors, bad bytes, bad metadata, retries.

Real `rollout collect` subprocesses killed with SIGKILL, real collections on
the embedded server, and journals damaged on disk the way a crash or a bad
disk leaves them. The journal is the truth; the Parquet parts must end up
holding each journaled episode exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from rollout.cli import main
from rollout.collection.config import OutputSpec
from rollout.collection.output import EpisodeSink, done_uids
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import CorruptLineWarning, OutputLockedError
from rollout.export import read_jsonl, read_parquet, write_jsonl, write_parquet
from tests.integration.test_cli import REPO, TASK_IDS, complete_lines, rollout
from tests.integration.test_collect import one_turn, run, tasks


def parquet_episodes(directory: Path) -> list[Episode]:
    return [ep for part in sorted(directory.glob("part-*.parquet")) for ep in read_parquet(part)]


def assert_parquet_mirrors_journal(journal: Path, directory: Path) -> list[Episode]:
    """Each episode a reader keeps from the journal is in the parts exactly once, and nothing else."""
    kept = read_jsonl(journal)
    ids = [e.id for e in parquet_episodes(directory)]
    assert len(ids) == len(set(ids)), "an episode is in the Parquet parts twice"
    assert sorted(ids) == sorted(e.id for e in kept)
    return kept


def start_collect(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def sigkill(proc: subprocess.Popen[bytes]) -> str:
    try:
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, err
    return err


def wait_for(predicate: Any, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


# ------------------------------------------------------ 1: kill -9 and resume


def test_sigkill_then_resume_parquet_holds_each_journaled_episode_once(tmp_path: Path) -> None:
    out, parts = tmp_path / "eps.jsonl", tmp_path / "parts"
    n, batch = 16, 3
    args = [
        "collect", "--config", "configs/local.yaml", f"output.path={out}", f"output.parquet={parts}",
        f"output.parquet_batch={batch}", f"limit={n}", "samples_per_task=1", "concurrency=2",
        "backend.embedded.latency_ms=100", "progress=false",
    ]  # fmt: skip
    proc = start_collect(*args)
    try:
        # Kill while some journaled episodes wait for the next part (lines not a multiple of 3).
        wait_for(lambda: complete_lines(out) >= 4 and complete_lines(out) % batch != 0, proc)
    finally:
        sigkill(proc)
    journaled = complete_lines(out)
    assert 4 <= journaled < n, f"kill landed too late ({journaled} of {n} lines)"
    assert len(parquet_episodes(parts)) < journaled  # the kill left episodes only in the journal

    resumed = rollout(*args)
    assert resumed.returncode == 0, resumed.stderr
    kept = assert_parquet_mirrors_journal(out, parts)
    assert sorted(e.uid for e in kept) == sorted(f"{t}:0" for t in TASK_IDS[:n])
    # A second resume with nothing left to run changes nothing.
    assert rollout(*args).returncode == 0
    assert_parquet_mirrors_journal(out, parts)


def test_parts_are_reconciled_with_the_journal_on_open(tmp_path: Path) -> None:
    journal, parts = tmp_path / "eps.jsonl", tmp_path / "parts"
    spec = OutputSpec(path=str(journal), parquet=str(parts), parquet_batch=2)
    eps = [Episode(task_id=f"t{i}") for i in range(5)]
    with EpisodeSink(spec) as sink:
        for ep in eps[:4]:
            sink.write(ep)
    write_jsonl(eps[4], journal)  # journaled, then killed before its part
    write_parquet([eps[0], Episode(task_id="not-journaled")], parts / "part-00007.parquet")
    (parts / "part-00008.parquet").write_bytes(b"PAR1 torn")  # a part the disk lost
    (parts / ".part-00009.parquet.123.456.tmp").write_bytes(b"half")  # a killed writer's
    with pytest.warns(UserWarning, match="unreadable Parquet part"):
        EpisodeSink(spec).close()
    assert_parquet_mirrors_journal(journal, parts)
    assert not list(parts.glob(".part-*.tmp"))
    assert (parts / "part-00008.parquet.unreadable").exists()


# ------------------------------------------ 2: metadata that cannot be written


async def bad_metadata(task: dict[str, Any], model: Any) -> Any:
    reward = await one_turn(task, model)
    if task["id"] == "t1":
        return {"reward": reward, "by_pair": {(1, 2): "tuple key"}}
    if task["id"] == "t2":
        loop: dict[str, Any] = {"name": "loop"}
        loop["self"] = loop
        return {"reward": reward, "graph": loop}
    return {"reward": reward, "fine": [1, 2]}


def test_unwritable_metadata_fails_that_episode_and_the_run_goes_on(tmp_path: Path) -> None:
    out, parts = tmp_path / "eps.jsonl", tmp_path / "parts"
    output = {"path": str(out), "parquet": str(parts)}
    summary, seen = run(bad_metadata, tasks(4), output=output)
    assert summary.finished == 4
    for back in (read_jsonl(out), parquet_episodes(parts)):
        by = {e.task_id: e for e in back}
        assert sorted(by) == ["t0", "t1", "t2", "t3"]
        for t in ("t0", "t3"):
            assert by[t].status != EpisodeStatus.ERROR and by[t].metadata["fine"] == [1, 2]
        assert by["t1"].status == EpisodeStatus.ERROR
        assert "metadata['by_pair']: key (1, 2) is a tuple" in (by["t1"].error or "")
        assert by["t1"].metadata["unwritable"].startswith("metadata['by_pair']")
        assert "tuple key" in by["t1"].metadata["repr"]
        assert by["t2"].status == EpisodeStatus.ERROR
        assert "metadata['graph']['self']: refers to itself" in (by["t2"].error or "")
        for t in ("t1", "t2"):  # token data kept
            orig = next(e for e in seen if e.task_id == t)
            assert [c.choices[0].ids.tolist() for c in by[t].calls] == [
                c.choices[0].ids.tolist() for c in orig.calls
            ]
            assert by[t].calls and by[t].reward == orig.reward
    # ... and a resume does not trip over them again.
    again, ran = run(bad_metadata, tasks(4), output=output)
    assert again.skipped == 4 and ran == []


# -------------------------------------------------------- 5: one writer only


def test_a_second_collector_on_the_same_output_gets_a_clear_error(tmp_path: Path) -> None:
    out, parts = tmp_path / "eps.jsonl", tmp_path / "parts"
    args = [
        "collect", "--config", "configs/local.yaml", f"output.path={out}", f"output.parquet={parts}",
        "limit=16", "samples_per_task=1", "concurrency=1", "backend.embedded.latency_ms=200",
        "progress=false",
    ]  # fmt: skip
    proc = start_collect(*args)
    try:
        wait_for(lambda: complete_lines(out) >= 1, proc)
        assert proc.poll() is None
        with pytest.raises(OutputLockedError, match=r"another collector \(process \d+"):
            run(one_turn, tasks(2), output={"path": str(out)})
        with pytest.raises(OutputLockedError, match="parts"):  # another journal, same parts
            run(one_turn, tasks(2), output={"path": str(tmp_path / "b.jsonl"), "parquet": str(parts)})
        second = rollout(*args)
        assert second.returncode == 2, second.stderr  # a clear message, not a traceback
        assert "another collector" in second.stderr and "Traceback" not in second.stderr
    finally:
        sigkill(proc)
    # The kernel released the dead collector's lock: a resume now runs.
    resumed = rollout(*args[:-2], "backend.embedded.latency_ms=0", "progress=false")
    assert resumed.returncode == 0, resumed.stderr
    uids = [e.uid for e in assert_parquet_mirrors_journal(out, parts)]
    assert sorted(uids) == sorted(f"{t}:0" for t in TASK_IDS[:16])


def test_the_lock_is_released_on_close(tmp_path: Path) -> None:
    spec = OutputSpec(path=str(tmp_path / "eps.jsonl"))
    first = EpisodeSink(spec)
    with pytest.raises(OutputLockedError):
        EpisodeSink(spec)
    first.close()
    EpisodeSink(spec).close()


# ------------------------------------- 6: a last line that lost its newline


def test_a_complete_last_line_without_newline_is_not_run_again(tmp_path: Path) -> None:
    out = tmp_path / "eps.jsonl"
    run(one_turn, tasks(3), output={"path": str(out)})
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    assert done_uids(out) == {"t0:0", "t1:0", "t2:0"}
    summary, ran = run(one_turn, tasks(4), output={"path": str(out)})
    assert summary.skipped == 3 and [e.uid for e in ran] == ["t3:0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old last line reads cleanly now
        uids = [e.uid for e in read_jsonl(out)]
    assert sorted(uids) == ["t0:0", "t1:0", "t2:0", "t3:0"]


# ------------------------------------------------- 7: a byte that is not UTF-8


def test_a_non_utf8_byte_is_skipped_with_a_warning_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eps.jsonl"
    run(one_turn, tasks(3), output={"path": str(out)})
    lines = out.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"task_id":"', b'"task_id":"\xff', 1)  # a bad disk sector
    out.write_bytes(b"".join(lines))
    bad_uid = json.loads(lines[1].decode("latin-1"))["task_id"][1:] + ":0"

    with pytest.warns(CorruptLineWarning, match=r"eps\.jsonl:2: skipped corrupt line \(not UTF-8"):
        assert len(read_jsonl(out)) == 2
    with pytest.warns(CorruptLineWarning, match=r"eps\.jsonl:2"):
        assert bad_uid not in done_uids(out)
    with pytest.warns(CorruptLineWarning):
        assert main(["inspect", str(out)]) == 0
    with pytest.warns(CorruptLineWarning):
        assert main(["export", str(out), "--to", "rllm", "--out", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    with pytest.warns(CorruptLineWarning):
        _, ran = run(one_turn, tasks(3), output={"path": str(out)})
    assert [e.uid for e in ran] == [bad_uid]  # resume runs the unreadable one again
    with pytest.warns(CorruptLineWarning):
        assert sorted(e.uid for e in read_jsonl(out)) == ["t0:0", "t1:0", "t2:0"]


# ----------------------------------------------------- 8: retry_failed


def test_retry_failed_reruns_failures_and_every_output_keeps_the_latest(tmp_path: Path) -> None:
    out, parts = tmp_path / "eps.jsonl", tmp_path / "parts"
    attempts: dict[str, int] = {}

    async def flaky(task: dict[str, Any], model: Any) -> float:
        attempts[task["id"]] = attempts.get(task["id"], 0) + 1
        reward = await one_turn(task, model)
        if task["id"] == "t1" and attempts["t1"] == 1:
            raise RuntimeError("first attempt fails")
        return reward

    output: dict[str, Any] = {"path": str(out), "parquet": str(parts), "parquet_batch": 2}
    first, _ = run(flaky, tasks(3), output=output, episode_retries=0)
    assert first.failed == 1
    failed_id = next(e.id for e in read_jsonl(out) if e.task_id == "t1")
    assert done_uids(out, retry_failed=True) == {"t0:0", "t2:0"}

    _, ran = run(flaky, tasks(3), output=output, episode_retries=0)
    assert ran == []  # without retry_failed a failure counts as done

    output["retry_failed"] = True
    second, ran = run(flaky, tasks(3), output=output, episode_retries=0)
    assert [e.uid for e in ran] == ["t1:0"] and second.skipped == 2
    assert ran[0].status != EpisodeStatus.ERROR and ran[0].metadata["retry_of"] == failed_id

    every = read_jsonl(out, latest_only=False)
    assert [e.uid for e in every].count("t1:0") == 2
    kept = assert_parquet_mirrors_journal(out, parts)
    assert sorted(e.uid for e in kept) == ["t0:0", "t1:0", "t2:0"]
    assert {e.task_id: e.status for e in kept}["t1"] != EpisodeStatus.ERROR
    assert done_uids(out, retry_failed=True) == {"t0:0", "t1:0", "t2:0"}
    third, ran = run(flaky, tasks(3), output=output, episode_retries=0)
    assert ran == [] and third.skipped == 3


def test_a_rerun_killed_before_close_is_reconciled_on_the_next_open(tmp_path: Path) -> None:
    journal, parts = tmp_path / "eps.jsonl", tmp_path / "parts"
    spec = OutputSpec(path=str(journal), parquet=str(parts), parquet_batch=1, retry_failed=True)
    failed = Episode(task_id="t1", status=EpisodeStatus.ERROR, error="boom")
    with EpisodeSink(spec) as sink:
        sink.write(Episode(task_id="t0"))
        sink.write(failed)
    sink = EpisodeSink(spec)
    assert sink.done == {"t0:0"}
    rerun = Episode(task_id="t1")
    sink.write(rerun)  # flushed to its own part (batch 1) ...
    assert len(parquet_episodes(parts)) == 3  # ... and the process dies before close
    sink._release()  # what the kernel does for a dead process
    EpisodeSink(spec).close()
    kept = assert_parquet_mirrors_journal(journal, parts)
    assert failed.id not in {e.id for e in kept} and rerun.id in {e.id for e in kept}

"""The `rollout` command as a new user runs it: subprocesses from the repository root.

The main job end to end on the embedded server, inspect and export of its
output, a run killed with SIGKILL part-way and resumed, and bad configs
(exit code 2, the offending key on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from rollout.call_record import TokenSource
from rollout.cli import build_parser, main
from rollout.collection.config import load_config
from rollout.collection.output import done_uids
from rollout.demo import TASKS as DEMO_TASKS
from rollout.demo import TRAIN_CONFIG
from rollout.episode import EpisodeStatus
from rollout.export import read_jsonl, read_verl, to_verl, write_verl
from rollout.export.jsonl import CorruptLineWarning

REPO = Path(__file__).resolve().parents[2]
TASK_IDS = [
    json.loads(line)["id"]
    for line in DEMO_TASKS.read_text().splitlines()
    if line.strip()
]


def rollout(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollout.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def summary_rows(stdout: str) -> dict[str, str]:
    """The summary table as {row name: value}."""
    return dict(line.rsplit(None, 1) for line in stdout.splitlines() if line.strip())


def complete_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "eps.jsonl"
    proc = rollout(
        "collect", "--config", "configs/local.yaml", f"output.path={out}", "limit=4",
        "samples_per_task=2", "progress=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "episodes requested" in proc.stdout and str(out) in proc.stdout
    rows = dict(line.rsplit(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert rows["episodes requested"] == "8" and rows["finished"] == "8"
    assert rows["skipped (already on disk)"] == "0"
    assert rows["trainable tokens"] == rows["sampled tokens"] != "0"  # all exact
    return out


def test_collect_end_to_end(collected: Path) -> None:
    episodes = read_jsonl(collected)
    assert len(episodes) == 8
    keys = {(e.task_id, e.sample) for e in episodes}
    assert keys == {(t, s) for t in TASK_IDS[:4] for s in range(2)}
    for e in episodes:
        assert e.status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)
        assert e.reward in (0.0, 1.0) and 1 <= e.metadata["turns"] <= 3
        assert len(e.calls) == e.metadata["turns"]
        for i, call in enumerate(e.calls):
            # Token mode (the default): later turns go to the server as token ids.
            expected = (TokenSource.VLLM, "messages") if i == 0 else (TokenSource.TOKEN_IN, "tokens")
            assert (call.prompt_source, call.sent_as) == expected and len(call.prompt_ids) > 0
            assert call.request["max_tokens"] == 4  # from configs/local.yaml
            for choice in call.choices:
                assert choice.source == TokenSource.VLLM and 0 < len(choice.ids) <= 4
                assert choice.logprobs is not None and len(choice.logprobs) == len(choice.ids)
                assert choice.versions.to_array().tolist() == [0] * len(choice.ids)
        assert e.exact


def test_rerun_resumes_and_skips_everything(collected: Path) -> None:
    before = collected.read_bytes()
    proc = rollout(
        "collect", "--config", "configs/local.yaml", f"output.path={collected}", "limit=4",
        "samples_per_task=2", "progress=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.rsplit(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert rows["skipped (already on disk)"] == "8" and rows["finished"] == "0"
    assert collected.read_bytes() == before


def test_inspect(collected: Path) -> None:
    proc = rollout("inspect", str(collected))
    assert proc.returncode == 0, proc.stderr
    assert "episodes        8" in proc.stdout
    assert "inexact eps     0" in proc.stdout
    assert "== sample 0" in proc.stdout and "-- call 0" in proc.stdout


def test_inspect_bad_episode_index(collected: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(collected), "--episode", "99"]) == 2
    assert "--episode" in capsys.readouterr().err


def test_export_areal_rllm_verl(collected: Path, tmp_path: Path) -> None:
    areal, rllm, verl = tmp_path / "a.npz", tmp_path / "r.json", tmp_path / "v.npz"
    for fmt, out in (("areal", areal), ("rllm", rllm), ("verl", verl)):
        proc = rollout("export", str(collected), "--to", fmt, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert f"({fmt}, 8 episodes)" in proc.stdout
    with np.load(areal) as a:
        n, width = a["input_ids"].shape
        assert n >= 8 and a["rewards"].shape == (n,)
        for key in ("loss_mask", "logprobs", "versions", "attention_mask"):
            assert a[key].shape == (n, width)
        sampled = a["loss_mask"].astype(bool)
        assert sampled.any() and (a["versions"][sampled] == 0).all()
        assert (a["versions"][a["attention_mask"] & ~sampled] == -1).all()
    data = json.loads(rllm.read_text())
    assert len(data) == 8
    assert {d["id"] for d in data} == {f"{t}:{s}" for t in TASK_IDS[:4] for s in range(2)}
    assert all(d["trajectories"] and d["trajectories"][0]["steps"] for d in data)
    v = read_verl(verl)  # DataProto.from_dict(**v) in verl (tests/peers/verl)
    t = v["tensors"]
    rows = t["input_ids"].shape[0]
    assert rows >= 8
    assert t["responses"].shape == t["response_mask"].shape == t["rm_scores"].shape
    assert t["prompts"].shape[1] + t["responses"].shape[1] == t["input_ids"].shape[1]
    assert len(v["non_tensors"]["uid"]) == rows and v["meta_info"]["num_truncated"] == 0


def test_export_writes_the_path_it_names_or_refuses(collected: Path, tmp_path: Path) -> None:
    """--out is the file written, in its extension's format; a mismatched extension exits 2."""
    lines = tmp_path / "r.jsonl"
    proc = rollout("export", str(collected), "--to", "rllm", "--out", str(lines))
    assert proc.returncode == 0 and f"wrote {lines} " in proc.stdout, proc.stderr
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(r, dict) and r["trajectories"] for r in rows)
    for fmt, name in (("areal", "a.json"), ("verl", "v.jsonl"), ("rllm", "r.npz"), ("rllm", "r")):
        out = tmp_path / name
        proc = rollout("export", str(collected), "--to", fmt, "--out", str(out))
        assert proc.returncode == 2, (fmt, name, proc.stdout)
        assert proc.stderr.startswith("rollout export: ") and proc.stderr.count("\n") == 1
        assert str(out) in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists() and not Path(f"{out}.npz").exists(), (fmt, name)  # nothing written
    # The library writes the path it is given, too (numpy would append ".npz" to a name).
    bare = tmp_path / "batch"
    write_verl(to_verl(read_jsonl(collected)), bare)
    assert bare.exists() and read_verl(bare)["tensors"]["input_ids"].shape[0] >= 8


def test_kill_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "eps.jsonl"
    n = 16
    args = [
        "collect", "--config", "configs/local.yaml", f"output.path={out}", f"limit={n}",
        "samples_per_task=1", "concurrency=2", "backend.embedded.latency_ms=100", "progress=false",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while complete_lines(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, err
    done = complete_lines(out)
    assert 3 <= done < n, f"kill landed too late ({done} of {n} lines)"
    # Simulate the kill tearing the last write: its episode must be rerun, not lost.
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    torn = json.loads(lines[-1])
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert f"{torn['task_id']}:{torn['sample']}" not in done_uids(out)

    resumed = rollout(*args)
    assert resumed.returncode == 0, resumed.stderr
    rows = dict(line.rsplit(None, 1) for line in resumed.stdout.splitlines() if line.strip())
    assert int(rows["skipped (already on disk)"]) == done - 1
    assert int(rows["finished"]) == n - (done - 1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        episodes = read_jsonl(out)
    assert sum(issubclass(w.category, CorruptLineWarning) for w in caught) == 1
    uids = [e.uid for e in episodes]
    assert len(uids) == len(set(uids)), "an episode was written twice"
    assert set(uids) == {f"{t}:0" for t in TASK_IDS[:n]}
    assert done_uids(out) == set(uids)


def test_ctrl_c_exits_cleanly_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "eps.jsonl"
    n = 12
    args = [
        "collect", "--config", "configs/local.yaml", f"output.path={out}", f"limit={n}",
        "samples_per_task=1", "concurrency=2", "backend.embedded.latency_ms=150", "progress=false",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while complete_lines(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    done = complete_lines(out)
    assert 2 <= done < n
    assert out.read_bytes().endswith(b"\n")  # no torn line: only finished episodes were written

    resumed = rollout(*args)
    assert resumed.returncode == 0, resumed.stderr
    uids = [e.uid for e in read_jsonl(out)]
    assert sorted(uids) == sorted({f"{t}:0" for t in TASK_IDS[:n]})


HUNG_AGENT = """
import time

def episode(task, model):
    if task["hang"]:
        time.sleep(3600)  # a sync call that never returns (no timeout of its own)
    reply = model.run([{"role": "user", "content": "What is 1 + 1?"}])
    return float(reply.choices[0].message.content.strip() == "2")
"""


def test_hung_sync_agents_time_out_and_the_command_exits(tmp_path: Path) -> None:
    """More hung sync agents than the default thread pool has threads (min(32, cpus + 4)).

    Each hung episode times out, the others still run, and the process exits
    although the hung threads can never be stopped.
    """
    hung = min(32, (os.cpu_count() or 1) + 4)
    (tmp_path / "hung_agent.py").write_text(HUNG_AGENT)
    task_file = tmp_path / "tasks.jsonl"
    rows = [{"id": f"h{i}", "hang": True} for i in range(hung)]
    rows += [{"id": f"ok{i}", "hang": False} for i in range(4)]
    task_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = rollout(
        "collect", "--config", "configs/local.yaml", "agent=hung_agent:episode",
        f"tasks={task_file}", "samples_per_task=1", f"concurrency={hung + 4}",
        "episode_timeout_s=3", f"output.path={tmp_path}/o.jsonl", "progress=false",
        env=env, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    by = {e.task_id: e for e in read_jsonl(tmp_path / "o.jsonl")}
    assert len(by) == hung + 4
    for i in range(hung):
        assert by[f"h{i}"].status == EpisodeStatus.TIMEOUT, by[f"h{i}"].error
    for i in range(4):
        ok = by[f"ok{i}"]
        assert ok.status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED), ok.error
        assert len(ok.calls) == 1


# ------------------------------------------------------- runs with nothing to train


def test_an_empty_tasks_file_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    proc = rollout(
        "collect", "--config", "configs/local.yaml", f"tasks={empty}",
        f"output.path={tmp_path}/o.jsonl", "progress=false",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout
    assert "no tasks" in proc.stderr and str(empty) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


UNREACHABLE = ["backend.kind=remote", "backend.urls=[http://127.0.0.1:9/v1]", "episode_retries=0"]


def test_a_run_where_every_episode_failed_exits_1_and_can_be_retried(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    args = ["collect", "--config", "configs/local.yaml", f"output.path={out}", "limit=3",
            "samples_per_task=1", "progress=false"]  # fmt: skip
    failed = rollout(*args, *UNREACHABLE)
    assert failed.returncode == 1, failed.stderr
    assert "every one of the 3 episodes failed" in failed.stderr, failed.stderr
    assert "connect" in failed.stderr  # the first failure's reason
    assert summary_rows(failed.stdout)["finished"] == "3"  # the table is still printed
    assert {e.status for e in read_jsonl(out)} == {EpisodeStatus.ERROR}

    # A plain resume counts failed episodes as done, and says they failed: exit 1, not success.
    resumed = rollout(*args)
    assert resumed.returncode == 1, resumed.stdout
    rows = summary_rows(resumed.stdout)
    assert rows["skipped (already on disk)"] == "3" and rows["finished"] == "0"
    assert rows["  failed (--retry-failed reruns them)"] == "3"
    assert "all 3 failed" in resumed.stderr and "--retry-failed" in resumed.stderr, resumed.stderr
    # ... and --retry-failed runs them again (the journal keeps both attempts).
    retried = rollout(*args, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    rows = summary_rows(retried.stdout)
    assert rows["skipped (already on disk)"] == "0" and rows["finished"] == "3"
    latest = {e.uid: e for e in read_jsonl(out)}
    assert len(latest) == 3
    assert all(e.status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED) for e in latest.values())
    # nothing left to retry: a further retry run skips all
    again = rollout(*args, "output.retry_failed=true")
    assert again.returncode == 0 and summary_rows(again.stdout)["finished"] == "0"


def test_a_run_without_exact_token_ids_exits_1_unless_allowed(tmp_path: Path) -> None:
    args = ["collect", "--config", "configs/local.yaml", "limit=2", "samples_per_task=1",
            "progress=false", "backend.request_token_ids=false", "backend.request_logprobs=false"]  # fmt: skip
    proc = rollout(*args, f"output.path={tmp_path}/a.jsonl")
    assert proc.returncode == 1, proc.stderr
    assert "no trainable" in proc.stderr.lower() and "allow_untrainable" in proc.stderr
    table = proc.stdout.lower()
    assert "trainable tokens" in table and "no sampled token has exact ids" in table
    allowed = rollout(*args, f"output.path={tmp_path}/b.jsonl", "allow_untrainable=true")
    assert allowed.returncode == 0, allowed.stderr
    assert "no sampled token has exact ids" in allowed.stdout.lower()  # still said


# ------------------------------------------------------- outside the repository


SHADOW = "raise ImportError('the working directory shadowed the library')\n"
MY_AGENT = """
async def episode(task, model):
    reply = await model.arun([{"role": "user", "content": task["q"]}])
    return float(bool(reply.choices[0].message.content))
"""


def shadowing_project(root: Path) -> None:
    """A user's project whose modules share names with the library and its dependencies."""
    for name in ("compat", "rollout", "tqdm", "aiohttp", "yaml"):
        (root / f"{name}.py").write_text(SHADOW)
    (root / "my_agent.py").write_text(MY_AGENT)
    (root / "tasks.jsonl").write_text('{"q": "hi"}\n{"q": "ho"}\n')


def cli_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as the `rollout` script runs it: the working directory is not on sys.path
    (-I keeps `python -c` from putting it first), this checkout's code is."""
    code = f"import sys; sys.path[:0] = [{str(REPO)!r}]; from rollout.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-I", "-c", code, *args],
        cwd=cwd, capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip


def test_a_users_own_compat_py_does_not_shadow_the_library(tmp_path: Path) -> None:
    """The agent is found in the working directory, which is appended to sys.path, not put first."""
    shadowing_project(tmp_path)
    proc = cli_in(tmp_path, "collect", "agent=my_agent:episode", "tasks=tasks.jsonl",
                  "output.path=o.jsonl", "progress=true")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary_rows(proc.stdout)["finished"] == "2"


def test_collect_and_train_from_an_installed_wheel_with_no_checkout(tmp_path: Path) -> None:
    """Build a wheel of this tree, install it alone in a venv, run the defaults from elsewhere."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO, src, symlinks=True,
        ignore=shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", ".*_cache", "__pycache__"),
    )  # fmt: skip
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(wheels), "-q"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if built.returncode != 0:  # no setuptools/wheel reachable for the isolated build
        pytest.skip(f"cannot build a wheel here: {built.stderr[-500:]}")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies come from the environment running this test (a virtualenv, or the
    # system's): a path-only .pth puts its site-packages after the venv's own, so the wheel's
    # code wins, and the outer environment's .pth files (an editable install of this checkout)
    # are not run. `--system-site-packages` would see the base interpreter's packages instead,
    # which lack the project's dependencies when the tests run from a virtualenv.
    outer = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "outer_environment.pth").write_text("".join(f"{p}\n" for p in outer))
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "-q", *map(str, wheels.glob("*.whl"))],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import rollout, compat; print(rollout.__file__, compat.__file__)"],
        cwd=elsewhere, capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert where.stdout.count(str(venv)) == 2, where.stdout  # the wheel's code, not a checkout's
    rollout_cli = venv / "bin" / "rollout"
    proc = subprocess.run(
        [str(rollout_cli), "collect", "limit=2", "samples_per_task=1", "progress=false"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = summary_rows(proc.stdout)
    assert rows["finished"] == "2" and rows["trainable tokens"] != "0"
    assert [e.task_id for e in read_jsonl(elsewhere / "runs/episodes.jsonl")] != []
    trained = subprocess.run(
        [str(rollout_cli), "train", "--iterations", "1", "--target", "0", "--plot", "none.png"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "mean reward" in trained.stdout
    page = elsewhere / "episode.html"  # the page's style is package data (inspect/page.css)
    shown = subprocess.run(
        [str(rollout_cli), "inspect", "runs/episodes.jsonl", "--html", str(page)],
        cwd=elsewhere, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert ".t.s.b20" in page.read_text() and ".sample-head" in page.read_text()


# ------------------------------------------------------------------ bad configs


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["backend.smapling.temperature=1"], "unknown key 'backend.smapling' (did you mean 'backend.sampling'?)"),
        (["samples_per_tsk=2"], "unknown key 'samples_per_tsk' (did you mean 'samples_per_task'?)"),
        (["output.pth=x.jsonl"], "(did you mean 'output.path'?)"),
        (["agnet=x"], "agnet"),
        (["concurrency=0"], "concurrency"),
        (["executor=foo"], "executor"),
        (["backend.kind=remote"], "backend.urls"),
        (["backend.urls=[localhost:8000]"], "localhost:8000"),
        (["limit"], "limit"),
        (["tasks=no/such/tasks.jsonl"], "no/such/tasks.jsonl"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    overrides: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "collect",
            "--config",
            str(REPO / "configs/local.yaml"),
            f"output.path={tmp_path}/o.jsonl",
            *overrides,
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert needle in captured.err and captured.err.startswith("rollout collect:")
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_config_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("agent: [unclosed\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("backend:\n  smapling: {temperature: 1}\n")
    for path, needle in (
        (tmp_path / "missing.yaml", "does not exist"),
        (bad_yaml, "not valid YAML"),
        (nested, "backend.smapling"),
    ):
        assert main(["collect", "--config", str(path)]) == 2
        assert needle in capsys.readouterr().err


def test_bad_agent_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(
        [
            "collect",
            "--config",
            str(REPO / "configs/local.yaml"),
            f"output.path={tmp_path}/o.jsonl",
            "agent=examples.arithmetic:nope",
        ]
    )
    assert code == 2 and "nope" in capsys.readouterr().err


def test_bad_config_as_a_process(tmp_path: Path) -> None:
    proc = rollout(
        "collect",
        "--config",
        "configs/local.yaml",
        f"output.path={tmp_path}/o.jsonl",
        "backend.smapling=1",
    )
    assert proc.returncode == 2
    assert "backend.smapling" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ------------------------------------------------------------ one-line errors


def one_line(err: str, command: str) -> bool:
    return err.startswith(f"rollout {command}: ") and err.count("\n") == 1 and "Traceback" not in err


def test_an_unset_api_key_variable_exits_2_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    out = tmp_path / "o.jsonl"
    code = main(["collect", "--config", str(REPO / "configs/vllm.yaml"), f"output.path={out}",
                 f"output.parquet={tmp_path}/parts", "progress=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and one_line(err, "collect") and "VLLM_API_KEY" in err, err
    assert not out.exists()


NOT_RECORDS = {
    "notes.txt": b"hello\n",
    "other.jsonl": b'{"task_id": "x", "a": 1}\n',
    "array.json": b"[1, 2]\n",
    "picture.png": (REPO / "docs/train_verl.png").read_bytes(),
    "empty.jsonl": b"",
}


@pytest.mark.parametrize("name", sorted(NOT_RECORDS))
def test_inspect_and_export_of_a_file_that_is_not_a_record_exit_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(NOT_RECORDS[name])
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert one_line(err, "inspect") and str(path) in err, err
    assert main(["export", str(path), "--to", "verl", "--out", str(tmp_path / "v.npz")]) == 2
    assert one_line(capsys.readouterr().err, "export")
    assert not (tmp_path / "v.npz").exists()


def test_a_tasks_file_holding_one_json_array_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"id": "a", "a": 1, "b": 2, "answer": 3}] * 2))
    code = main(["collect", "--config", str(REPO / "configs/local.yaml"), f"tasks={tasks}",
                 f"output.path={tmp_path}/o.jsonl", "progress=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and one_line(err, "collect") and "JSON array" in err, err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("command", ["inspect", "collect"])
def test_a_closed_stdout_pipe_is_silent(command: str, collected: Path, tmp_path: Path) -> None:
    """`rollout inspect ... | head`: the reader leaves early; no BrokenPipeError on stderr."""
    args = {
        "inspect": ["inspect", str(collected), "--tokens", "1000"],
        "collect": ["collect", "--config", "configs/local.yaml", f"output.path={tmp_path}/o.jsonl",
                    "limit=1", "samples_per_task=1", "progress=false"],
    }[command]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "rollout.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `head` does once it has its lines: every write now fails
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err  # 128 + SIGPIPE, as a killed `yes | head` writer
    assert err == "", err


@pytest.mark.parametrize(
    ("example", "module", "extra"),
    [("areal_workflow", "torch", "rollout-compat[torch]"), ("camel_agent", "camel", "rollout-compat[camel]")],
)
def test_an_example_without_its_extra_says_which_in_one_line(example: str, module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    proc = subprocess.run([sys.executable, f"examples/{example}.py"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert extra in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ help


def test_the_top_level_help_names_every_command() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert parser.description is not None
    assert all(name in parser.description for name in commands), parser.description


def test_the_train_help_override_example_is_one_the_default_trainer_takes() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train_help = subparsers.choices["train"].format_help()
    example = re.search(r"e\.g\.\s+(\S+=\S+)", train_help)
    assert example is not None, train_help
    load_config(TRAIN_CONFIG, [example.group(1)])  # the numpy trainer's config takes it


def test_train_save_writes_a_policy_serve_can_load(tmp_path: Path) -> None:
    from rollout.embedded import Policy

    saved = tmp_path / "policy" / "p.npz"
    code = main(["train", "--iterations", "1", "--target", "2", "--plot", str(tmp_path / "p.png"),
                 "--save", str(saved), "samples_per_task=2", "limit=4", "backend.embedded.seed=3"])  # fmt: skip
    assert code == 1  # the target (2) is out of reach; the policy is saved all the same
    policy = Policy.load(saved)  # what `rollout serve --weights` does
    # The trainer's policy (seed 3; one all-zero-reward batch leaves it as it started).
    assert np.array_equal(policy.W, Policy(seed=3).W) and not np.array_equal(policy.W, Policy(seed=0).W)

"""`rollout serve`: every flag parsed, and the ones that change the server seen working.

The server runs as `python -m rollout.cli serve ...` in a subprocess, the way
a user starts it, and is checked over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rollout.cli import build_parser, main
from rollout.embedded import ChatTemplate, Policy

USER = [{"role": "user", "content": "hi"}]


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`rollout serve ARGS` until the block ends (Ctrl-C); yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = next((w for w in line.split() if w.startswith("http://")), None)
        assert url is not None, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_exits_0_and_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "-h"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--api-key", "--model", "--weights", "--latency-ms",
                 "--latency-per-token-ms", "--seed", "--max-body-mb", "--max-generated-tokens",
                 "--max-reply-mb", "--read-timeout-s"):  # fmt: skip
        assert flag in out


def test_every_flag_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLLOUT_API_KEY", raising=False)
    args = build_parser().parse_args([
        "serve", "--host", "0.0.0.0", "--port", "9123", "--api-key", "k", "--model", "m",
        "--weights", "w.npz", "--latency-ms", "20", "--latency-per-token-ms", "0.5", "--seed", "4",
        "--max-body-mb", "1.5", "--max-generated-tokens", "99", "--max-reply-mb", "2",
        "--read-timeout-s", "7",
    ])  # fmt: skip
    assert (args.host, args.port, args.api_key, args.model, args.weights) == (
        "0.0.0.0", 9123, "k", "m", "w.npz"
    )
    assert (args.latency_ms, args.latency_per_token_ms, args.seed) == (20.0, 0.5, 4)
    assert (args.max_body_mb, args.max_generated_tokens, args.max_reply_mb,
            args.read_timeout_s) == (1.5, 99, 2.0, 7.0)  # fmt: skip
    defaults = build_parser().parse_args(["serve"])
    assert (defaults.host, defaults.port, defaults.api_key, defaults.model) == (
        "127.0.0.1", 8000, None, "tiny"
    )
    for wrong in (["--port", "eighty"], ["--max-body-mb", "0"], ["--max-generated-tokens", "-1"],
                  ["--read-timeout-s", "soon"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["serve", *wrong])
        assert exit_.value.code == 2


def test_limit_flags_take_effect() -> None:
    args = ("--port", "0", "--max-body-mb", "0.01", "--max-generated-tokens", "10",
            "--max-reply-mb", "0.05")  # fmt: skip
    with serving(*args) as url:
        ok = {"prompt": [1, 2], "max_tokens": 10}
        assert post(url + "/completions", ok)[0] == 200
        status, reply = post(url + "/completions", {**ok, "max_tokens": 11})
        assert status == 400 and "10" in reply["error"]["message"]
        status, reply = post(url + "/completions", {**ok, "logprobs": 20})  # 50 KiB reply bound
        assert status == 400 and reply["error"]["code"] == "request_too_large"
        status, reply = post(url + "/completions", {**ok, "user": "x" * 20000})  # 10 KiB body
        assert status == 413


def test_port_model_seed_and_api_key_take_effect() -> None:
    port = free_port()
    args = ("--port", str(port), "--api-key", "k1", "--model", "m2", "--seed", "3")
    with serving(*args) as url:
        assert url == f"http://127.0.0.1:{port}/v1"
        body = {"model": "m2", "messages": USER, "max_tokens": 4, "seed": 1, "logprobs": True,
                "return_token_ids": True}  # fmt: skip
        assert post(url + "/chat/completions", body)[0] == 401
        assert post(url + "/chat/completions", body, key="wrong")[0] == 401
        status, reply = post(url + "/chat/completions", body, key="k1")
        assert status == 200
        ids = reply["choices"][0]["token_ids"]
        lps = [e["logprob"] for e in reply["choices"][0]["logprobs"]["content"]]
        expected = Policy(seed=3).logprobs(ChatTemplate().render(USER), ids)
        assert np.allclose(lps, expected, atol=1e-9)  # the --seed policy serves
        assert post(url + "/chat/completions", {**body, "model": "tiny"}, key="k1")[0] == 404


def test_api_key_defaults_to_the_environment() -> None:
    with serving("--port", "0", env={"ROLLOUT_API_KEY": "from-env"}) as url:
        assert post(url + "/completions", {"prompt": [1], "max_tokens": 1})[0] == 401
        status, _ = post(url + "/completions", {"prompt": [1], "max_tokens": 1}, key="from-env")
        assert status == 200


def test_weights_flag_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    Policy(seed=9).save(path)
    with serving("--port", "0", "--weights", str(path)) as url:
        status, reply = post(url + "/completions", {"prompt": [5, 6], "max_tokens": 3,
                                                    "logprobs": 0, "return_token_ids": True})  # fmt: skip
        assert status == 200
        c = reply["choices"][0]
        expected = Policy.load(path).logprobs([5, 6], c["token_ids"])
        assert np.allclose(c["logprobs"]["token_logprobs"], expected, atol=1e-9)
    missing = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "serve", "--weights", str(tmp_path / "nope.npz")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "nope.npz" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "rollout.cli", "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert busy.returncode == 1 and "cannot serve" in busy.stderr

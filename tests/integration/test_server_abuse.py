"""The embedded server under abuse: each test is one promise (issue 12.11-12.17).

The server may be reachable by anything on the machine (and, keyless, by any
web page through the user's browser), so a single request must not be able
to exhaust its memory, stall it, corrupt its replies or change its weights.
Requests go over real loopback HTTP; raw sockets where an HTTP client would
refuse to send what an attacker can.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rollout.embedded import EmbeddedServer, Limits, Policy, push_weights

USER = [{"role": "user", "content": "hi"}]
JSON = {"Content-Type": "application/json"}


def call(
    url: str, body: bytes | dict[str, Any] | None = None, headers: dict[str, str] | None = None,
    method: str | None = None, timeout: float = 30,
) -> tuple[int, bytes]:  # fmt: skip
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data, JSON if headers is None else headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def error(raw: bytes) -> dict[str, Any]:
    body = json.loads(raw)
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    return err


def strict_json(raw: bytes) -> Any:
    """JSON as RFC 8259 defines it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in the reply")

    return json.loads(raw, parse_constant=refuse)


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_until_closed(s)


def read_until_closed(s: socket.socket) -> bytes:
    """What arrives until the server closes (or resets) the connection."""
    out = b""
    try:
        while chunk := s.recv(65536):  # socket.timeout here: the server held on
            out += chunk
    except ConnectionResetError:
        pass
    return out


@pytest.fixture(scope="module")
def small() -> Iterator[EmbeddedServer]:
    """A server with small limits, so limits are reached with small requests."""
    limits = Limits(max_body_bytes=64 * 1024, max_generated_tokens=2000,
                    max_reply_bytes=256 * 1024, read_timeout_s=0.5)  # fmt: skip
    with EmbeddedServer(seed=0, limits=limits) as srv:
        yield srv


def health_ok(server: EmbeddedServer) -> bool:
    status, raw = call(server.url + "/health", method="GET", timeout=10)
    return status == 200 and json.loads(raw)["status"] == "ok"


# ---------------------------------------------------- 12.11: bounded replies


def test_a_reply_too_large_to_build_is_refused_up_front(server: EmbeddedServer) -> None:
    """n=128 x (the rest of the context) x top-20 logprobs: 400 before any sampling (was 404 MB)."""
    body = {"model": "tiny", "messages": USER, "n": 128, "ignore_eos": True, "logprobs": True,
            "top_logprobs": 20}  # fmt: skip
    status, raw = call(server.base_url + "/chat/completions", body)
    assert status == 400
    assert error(raw)["code"] == "request_too_large"
    assert health_ok(server)


def test_generated_tokens_are_bounded_over_every_choice_and_prompt(small: EmbeddedServer) -> None:
    """n x max_tokens x prompts above the server's budget is a 400 naming the budget."""
    url = small.base_url + "/completions"
    status, raw = call(url, {"prompt": [[1, 2]] * 5, "n": 4, "max_tokens": 101})
    assert status == 400 and "2000" in error(raw)["message"]
    assert error(raw)["code"] == "request_too_large"
    status, raw = call(url, {"prompt": [[1, 2]] * 5, "n": 4, "max_tokens": 100})
    assert status == 200 and len(json.loads(raw)["choices"]) == 20
    status, raw = call(small.base_url + "/chat/completions", {"messages": USER, "n": 2})
    assert status == 400  # 2 x the rest of the context


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_the_largest_reply_allowed_stays_within_the_reply_limit(
    small: EmbeddedServer, route: str, stream: bool
) -> None:
    """The size check is a true upper bound: the biggest accepted reply is under the limit."""
    if route == "chat":
        url, base = small.base_url + "/chat/completions", {
            "messages": USER, "logprobs": True, "top_logprobs": 20,
            "return_tokens_as_token_ids": True}  # fmt: skip
    else:
        url, base = small.base_url + "/completions", {"prompt": [100257] * 40, "logprobs": 20,
                                                      "return_tokens_as_token_ids": True}  # fmt: skip
    body = {**base, "ignore_eos": True, "return_token_ids": True, "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}  # fmt: skip
    largest = 0
    for max_tokens in (8, 16, 32, 64, 128, 256):
        status, raw = call(url, {**body, "max_tokens": max_tokens})
        if status == 400:
            assert error(raw)["code"] == "request_too_large"
            break
        assert status == 200
        assert len(raw) <= 256 * 1024
        largest = max_tokens
    assert largest >= 16  # the limit is not so loose that nothing is refused, nor so tight


def test_too_many_top_logprobs_is_400(server: EmbeddedServer) -> None:
    status, raw = call(server.base_url + "/completions", {"prompt": [1], "logprobs": 21})
    assert status == 400 and error(raw)["param"] == "logprobs"


# -------------------------------------------- 12.12: bodies and the event loop


def test_a_body_over_the_limit_is_413_before_it_is_read(small: EmbeddedServer) -> None:
    """A declared 600 MiB body is refused from its headers: the server does not wait for it."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 629145600\r\n\r\n")  # fmt: skip
    reply = raw_exchange(small.port, head)
    assert reply.startswith(b"HTTP/1.1 413")
    assert error(reply.split(b"\r\n\r\n", 1)[1])["code"] == "payload_too_large"


def test_a_chunked_body_is_cut_off_at_the_limit(small: EmbeddedServer) -> None:
    chunk = b"x" * 32768
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    assert raw_exchange(small.port, head + body).startswith(b"HTTP/1.1 413")
    assert health_ok(small)


def test_the_default_body_limit_is_sane(server: EmbeddedServer) -> None:
    """The default is tens of MiB, not 512 MiB."""
    head = (b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (64 * 1024 * 1024))  # fmt: skip
    assert raw_exchange(server.port, head).startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/tokenize"])
def test_a_prompt_far_over_the_context_is_refused_before_it_is_tokenized(
    server: EmbeddedServer, route: str
) -> None:
    """3 MB of text, or 50,000 messages: refused from a lower bound, without tokenizing it all."""
    for messages in (
        [{"role": "user", "content": "1 2 3 " * 500_000}],
        [{"role": "user", "content": "hi"}] * 50_000,
    ):
        status, raw = call(server.url + route, {"messages": messages})
        assert status == 400
        err = error(raw)
        assert err["code"] == "context_length_exceeded" and "at least" in err["message"]
    status, raw = call(server.base_url + "/completions", {"prompt": "1 2 3 " * 500_000})
    assert status == 400 and "at least" in error(raw)["message"]


def test_health_answers_while_a_heavy_request_runs(server: EmbeddedServer) -> None:
    """The heaviest kind of accepted request does not hold up /health (it finishes first)."""
    body = {"model": "tiny", "messages": USER, "n": 2, "max_tokens": 1200, "ignore_eos": True,
            "logprobs": True, "top_logprobs": 20}  # fmt: skip
    done = threading.Event()
    result: list[int] = []

    def heavy() -> None:
        result.append(call(server.base_url + "/chat/completions", body, timeout=120)[0])
        done.set()

    worker = threading.Thread(target=heavy)
    worker.start()
    answered_first = 0
    while not done.is_set():
        if health_ok(server) and not done.is_set():
            answered_first += 1
    worker.join()
    assert result == [200]
    assert answered_first >= 1


# ------------------------------------------------------ 12.13: weight uploads


def npz_bomb(size: int) -> bytes:
    """An .npz whose W.npy inflates to `size` bytes of zeros (a few hundred KB on the wire)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (size // 8,)}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("W.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(size >> 20):
                fh.write(zeros)
        zf.writestr("b.npy", b"")
    return buf.getvalue()


def test_a_compressed_weights_bomb_is_refused_before_it_is_inflated() -> None:
    """A 256 MiB .npy in a small zip is rejected from its headers (memory stays small)."""
    bomb = npz_bomb(256 << 20)
    assert len(bomb) < 2 << 20
    with EmbeddedServer(seed=0) as server:
        tracemalloc.start()
        try:
            status, raw = call(server.url + "/update_weights?version=5", bomb,
                               {"Content-Type": "application/octet-stream"})  # fmt: skip
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 400 and error(raw)["param"] == "weights"
        assert peak < 64 << 20, f"peak {peak >> 20} MiB while refusing the upload"
        assert server.weight_version == 0


def test_weight_uploads_check_names_shapes_and_dtypes() -> None:
    with EmbeddedServer(seed=0) as server:
        good = server.policy.get_weights()
        for bad in (
            {"W": good["W"], "b": good["b"], "extra": np.zeros(3)},
            {"W": good["W"]},
            {"W": good["W"][:-1], "b": good["b"]},
            {"W": good["W"].astype(np.complex128), "b": good["b"]},
            {"W": np.array(["x"] * good["W"].size).reshape(good["W"].shape), "b": good["b"]},
        ):
            with pytest.raises(RuntimeError, match=r"HTTP 4(00|13)"):  # 413: complex is too big
                push_weights(server.url, bad, 3)
        assert server.weight_version == 0
        assert push_weights(server.url, {k: v.astype(np.float32) for k, v in good.items()}, 4) == 4


def test_the_path_form_does_not_say_whether_a_file_exists(tmp_path: Path) -> None:
    """`{"path": ...}` is refused identically for a real weights file and a missing one."""
    real = tmp_path / "w.npz"
    Policy(seed=5).save(real)
    with EmbeddedServer(seed=0) as server:
        replies = [
            call(server.url + "/update_weights", {"path": str(p)})
            for p in (real, tmp_path / "missing.npz", Path("/etc/passwd"))
        ]
        assert replies[0] == replies[1] == replies[2]
        assert replies[0][0] == 415
        assert server.weight_version == 0


# ------------------------------------------------- 12.14: cross-site requests


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x"])  # fmt: skip
def test_posts_a_web_page_could_send_are_refused(ctype: str | None) -> None:
    """A keyless server only takes JSON (and .npz uploads) under their own types."""
    with EmbeddedServer(seed=0) as server:
        headers = {} if ctype is None else {"Content-Type": ctype}
        npz = io.BytesIO()
        np.savez(npz, **server.policy.get_weights())
        req = urllib.request.Request(server.url + "/update_weights?version=9", npz.getvalue(),
                                     headers, method="POST")  # fmt: skip
        if ctype is None:
            req.remove_header("Content-type")  # urllib adds a form type by default
            assert not req.has_header("Content-type")
        try:
            urllib.request.urlopen(req, timeout=10)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 415
        chat = json.dumps({"messages": USER, "max_tokens": 1}).encode()
        status, raw = call(server.base_url + "/chat/completions", chat, headers)
        assert status == 415 and error(raw)["code"] == "unsupported_media_type"
        assert server.weight_version == 0
        ok, _ = call(server.base_url + "/chat/completions", chat,
                     {"Content-Type": "application/json; charset=utf-8"})  # fmt: skip
        assert ok == 200


# ---------------------------------------------------- 12.15: 400 and 401, not 500


def test_deeply_nested_json_is_400(server: EmbeddedServer) -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000,
                 b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):  # fmt: skip
        status, raw = call(server.base_url + "/chat/completions", body)
        assert status == 400 and error(raw)["code"] == "invalid_json"
    deep = '{"p":' * 950 + "{}" + "}" * 950  # near the parser's own depth limit
    tool = '[{"type": "function", "function": {"name": "f", "parameters": ' + deep + "}}]"
    body = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "tools": ' + tool
    status, raw = call(server.base_url + "/chat/completions", (body + "}").encode())
    assert status == 400 and error(raw)["type"] == "invalid_request_error"


def test_a_non_ascii_authorization_header_is_401() -> None:
    """UTF-8 or raw Latin-1 bytes in the key: a wrong key (401), not a crash (500)."""
    with EmbeddedServer(seed=0, api_key="k") as server:
        body = json.dumps({"messages": USER}).encode()
        for key in ("ключ".encode(), b"\xe9\xff", b"k\x80"):
            head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nAuthorization: Bearer " + key + b"\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
            reply = raw_exchange(server.port, head + body)
            assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
            assert error(reply.split(b"\r\n\r\n", 1)[1])["code"] == "invalid_api_key"


# ------------------------------------------------------ 12.16: valid JSON always


@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-6])
def test_a_vanishing_temperature_is_greedy_and_the_reply_valid_json(
    server: EmbeddedServer, temperature: float
) -> None:
    body = {"messages": USER, "max_tokens": 6, "logprobs": True, "top_logprobs": 3,
            "return_token_ids": True, "seed": 3}  # fmt: skip
    status, raw = call(server.base_url + "/chat/completions", {**body, "temperature": temperature})
    assert status == 200
    reply = strict_json(raw)
    _, greedy = call(server.base_url + "/chat/completions", {**body, "temperature": 0})
    choice = reply["choices"][0]
    assert choice["token_ids"] == json.loads(greedy)["choices"][0]["token_ids"]
    assert all(e["logprob"] == 0.0 for e in choice["logprobs"]["content"])


# ------------------------------------------------------- 12.17: read timeouts


def test_half_sent_requests_are_dropped_after_the_read_timeout(small: EmbeddedServer) -> None:
    """Connections that stall mid-request are closed (here after 0.5 s; by default 30 s)."""
    partial = [
        b"",  # connected, sent nothing
        b"POST /v1/chat/comp",  # half a request line
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl",  # half the headers
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{\"messages\": [",  # a tenth of the body
    ]
    conns = [socket.create_connection(("127.0.0.1", small.port), timeout=10) for _ in partial]
    try:
        for s, data in zip(conns, partial, strict=True):
            if data:
                s.sendall(data)
        replies = [read_until_closed(s) for s in conns]
    finally:
        for s in conns:
            s.close()
    assert replies[3].startswith(b"HTTP/1.1 408")
    assert health_ok(small)


def test_a_client_that_stops_reading_a_stream_is_given_up_on() -> None:
    """A stalled reader costs the server one write timeout, not a held request forever."""
    body = json.dumps({"messages": USER, "max_tokens": 1900, "n": 4, "ignore_eos": True,
                       "stream": True, "logprobs": True, "top_logprobs": 20}).encode()  # fmt: skip
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    limits = Limits(read_timeout_s=0.5, max_reply_bytes=64 << 20)  # a 15 MB stream: over any buffer
    with EmbeddedServer(seed=0, limits=limits) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # fmt: skip
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # a fixed window: no autotuning
        s.sendall(head + body)
        assert health_ok(server)  # answered while this stream waits on its reader
        time.sleep(4)  # the reader stalls for eight write timeouts
        stream = read_until_closed(s)
    assert stream.startswith(b"HTTP/1.1 200") and b"data: [DONE]" not in stream

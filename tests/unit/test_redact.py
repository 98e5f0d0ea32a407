"""The one redactor: credential shapes in any case, registered keys in any form, credential names."""

from __future__ import annotations

import json

import pytest

import rollout.redact
from rollout.redact import REDACTED, redact, redact_text, register_secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: BeArEr abcdefgh12345", f"Authorization: BeArEr {REDACTED}"),
        ("use sk-abcdefghijklmnop1234 now", f"use {REDACTED} now"),
        ("HTTPS://bob:pa55word@Host/v1", f"HTTPS://bob:{REDACTED}@Host/v1"),
        ("GET /v1?model=m&API-KEY=abc123&x=1", f"GET /v1?model=m&API-KEY={REDACTED}&x=1"),
        ("2 + 2 = 4, see http://host/path", "2 + 2 = 4, see http://host/path"),  # triggers, no match
        ("SK-ABCDEFGHIJKLMNOP1234", "SK-ABCDEFGHIJKLMNOP1234"),  # sk- keys are lower case
        ("y" * 10_000, "y" * 10_000),
    ],
)
def test_credential_shapes_are_redacted_in_any_case(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_a_registered_key_is_redacted_raw_and_json_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout.redact, "_secrets", rollout.redact._secrets)  # undo after
    key = 'k"ey\\with-quotes-123'
    register_secret(key)
    register_secret("short")  # too short to register: prose keeps it
    assert redact_text(f"error: {key}!") == f"error: {REDACTED}!"
    assert redact_text(json.dumps({"echo": key})) == json.dumps({"echo": REDACTED})
    assert redact_text("a short word") == "a short word"


def test_credential_names_are_dropped_outside_user_data() -> None:
    request = {
        "model": "m",
        "max_tokens": 8,
        "X-Api-Key": "v",
        "extra_body": {"session_token": "v", "credentials": {"password": "v"}, "top_k": 5},
        "messages": [{"role": "user", "content": "hi", "token": "kept: user data"}],
    }
    assert redact(request) == {
        "model": "m",
        "max_tokens": 8,
        "extra_body": {"top_k": 5},
        "messages": [{"role": "user", "content": "hi", "token": "kept: user data"}],
    }
    assert redact({"password": "v"}, names=False) == {"password": "v"}


def test_template_options_are_what_the_model_saw_not_credentials() -> None:
    """`bos_token` in `chat_template_kwargs` is rendered into the prompt: kept (it was dropped as
    a credential-like name); a secret value there is still scrubbed by the value rule."""
    body = {"chat_template_kwargs": {"bos_token": "<s>", "eos_token": "</s>", "note": "Bearer abcdefghijklmnop"},
            "documents": [{"access_token": "in a document", "text": "t"}], "session_token": "v"}  # fmt: skip
    assert redact({"extra_body": body}) == {"extra_body": {
        "chat_template_kwargs": {"bos_token": "<s>", "eos_token": "</s>", "note": "Bearer [REDACTED]"},
        "documents": [{"access_token": "in a document", "text": "t"}],
    }}  # fmt: skip

"""Pushing weights to a running embedded server from a trainer (stdlib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

import numpy as np

from rollout.errors import RolloutError

from .weights import weights_to_npz


class WeightPushError(RolloutError, RuntimeError):
    """The server refused a weight update; the message carries its status and reason."""


def push_weights(
    base_url: str,
    weights: Mapping[str, np.ndarray],
    version: int,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> int:
    """POST weights to a running server; returns the version it reports (else WeightPushError).

    ``base_url`` may be the root or the ``.../v1`` OpenAI base URL. Blocking:
    from async code, call it in an executor.
    """
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    url = f"{root}/update_weights?{urllib.parse.urlencode({'version': int(version)})}"
    headers = {"Content-Type": "application/octet-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=weights_to_npz(weights), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(json.loads(resp.read())["weight_version"])
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", errors="replace")
        raise WeightPushError(f"weight update failed with HTTP {e.code}: {detail}") from None

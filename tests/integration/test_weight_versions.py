"""Weight versions on the embedded server: only what a record can hold (issue 18 §4).

Records store a version per token as int32 (`rollout.call_record.Versions`); a
version outside [0, 2**31 - 1] accepted by `/update_weights` made every later
token-mode call and `assemble()` raise `OverflowError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openai
import pytest

from rollout import Recorder, assemble
from rollout.embedded import EmbeddedServer, Policy
from rollout.embedded.weights import weights_to_npz
from tests.integration.test_embedded_server_ops import raw

NPZ = {"Content-Type": "application/octet-stream"}


def _episode(server: EmbeddedServer) -> Any:
    recorder = Recorder(request_token_ids=True, request_logprobs=True)
    client = recorder.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    messages: list[Any] = [{"role": "user", "content": "2 + 3?"}]
    with recorder.episode("t") as ep:
        for _ in range(2):
            reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3)
            messages += [reply.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "?"}]
    recorder.close()
    return ep


@pytest.mark.parametrize("version", [str(2**31), "-1", str(2**63), "1e3", "7.0"])
def test_a_version_records_cannot_hold_is_refused(version: str) -> None:
    with EmbeddedServer(seed=0) as server:
        weights = weights_to_npz(Policy(seed=1).get_weights())
        status, body = raw(f"{server.url}/update_weights?version={version}", weights, NPZ)
        assert status == 400 and body["error"]["param"] == "version", body
        assert server.weight_version == 0
        ep = _episode(server)
        assert [c.sent_as for c in ep.calls] == ["messages", "tokens"]
        assert len(assemble([ep])) == 1


def test_the_largest_version_is_accepted_and_the_next_default_is_refused() -> None:
    with EmbeddedServer(seed=0) as server:
        weights = weights_to_npz(Policy(seed=1).get_weights())
        status, body = raw(f"{server.url}/update_weights?version={2**31 - 1}", weights, NPZ)
        assert (status, body["weight_version"]) == (200, 2**31 - 1)
        ep = _episode(server)
        assert {int(v) for c in ep.calls for v in c.choices[0].versions.to_array()} == {2**31 - 1}
        assert len(assemble([ep])) == 1
        status, body = raw(f"{server.url}/update_weights", weights, NPZ)  # no version: current + 1
        assert status == 400 and body["error"]["param"] == "version"
        with pytest.raises(ValueError, match="version"):
            server.set_weights(Policy(seed=2).get_weights(), -3)
        assert server.weight_version == 2**31 - 1
        assert np.array_equal(server.policy.get_weights()["W"], Policy(seed=1).get_weights()["W"])

"""The CAMEL example tests of tests/integration/test_integrations.py, run where camel is
installed (the main environment skips them: camel pins pydantic and tiktoken)."""

from __future__ import annotations

import pytest

from tests.integration.test_integrations import (  # noqa: F401  (collected here)
    camel_example,
    test_camel_chat_agent_tool_call_is_recorded_and_merges,
    test_camel_example_records_exact_tokens_and_the_tool_schema,
    test_camel_model_run_arun_and_stream_with_wrapped_clients,
)

pytestmark = [pytest.mark.peers]

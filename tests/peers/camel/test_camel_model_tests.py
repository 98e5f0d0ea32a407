"""CAMEL's own tests of its OpenAICompatibleModel, restated against ours.

Source: camel-ai/camel, test/models/test_openai_compatible_model.py at tag
v0.2.90 (commit deb286f36702ab15a2cb890c6e223a79e4ce4284). CI cannot fetch
camel's repository and its wheel ships no tests, so each assertion of that
file is restated here, on `from compat import OpenAICompatibleModel` (the
only change the issue allows). One assertion is restated, not kept: camel
compares `client.base_url` with an `httpx.URL`, which holds only on openai
2.x (its lock file pins 2.29.0); openai 3.x builds on httpx2, whose URL type
never equals httpx's, for camel's own class too. Here the URLs are compared
as text.

camel runs these with a real OPENAI_API_KEY; the SDK refuses to build its
default clients without one, so a dummy key is set. Everything is offline:
the default token counter must not load tiktoken to be constructed.
"""

from __future__ import annotations

import pytest
from camel.models import BaseModelBackend as CamelModelBackend
from camel.types import ModelType
from camel.utils import OpenAITokenCounter as CamelOpenAITokenCounter

from compat import OpenAICompatibleModel

pytestmark = [pytest.mark.peers, pytest.mark.usefixtures("clean_env")]

CAMEL_MODEL_TYPES = [
    ModelType.GPT_3_5_TURBO,
    ModelType.GPT_4,
    ModelType.GPT_4_TURBO,
    ModelType.GPT_4O,
    ModelType.GPT_4O_MINI,
    ModelType.O1,
    ModelType.O1_PREVIEW,
    ModelType.O1_MINI,
    ModelType.GPT_4_5_PREVIEW,
    ModelType.GPT_5,
]


@pytest.mark.parametrize("model_type", CAMEL_MODEL_TYPES)
def test_model_type_config_counter_and_limits(model_type: ModelType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy")
    model = OpenAICompatibleModel(model_type)
    # camel's assertions, one for one:
    assert model.model_type == model_type
    assert model.model_config_dict == {}
    assert isinstance(model.token_counter, CamelOpenAITokenCounter)
    assert isinstance(model.model_type.value_for_tiktoken, str)
    assert isinstance(model.model_type.token_limit, int)
    # what makes those matter: ChatAgent's isinstance check and its token_limit.
    assert isinstance(model, CamelModelBackend)
    assert model.token_limit == model_type.token_limit


def test_api_key_and_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "api_key_from_env_for_testing"
    url = "https://api.url_from_env_for_testing.com/v1/"
    monkeypatch.setenv("OPENAI_COMPATIBILITY_API_KEY", key)
    monkeypatch.setenv("OPENAI_COMPATIBILITY_API_BASE_URL", url)

    model = OpenAICompatibleModel(ModelType.GPT_4O, api_key=None, url=None)
    assert model._api_key == key
    assert model._url == url
    for client in (model._client, model._async_client):
        assert client.api_key == key
        assert str(client.base_url) == url

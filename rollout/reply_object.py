"""The SDK's reply objects, built by pydantic's compiled validator where the reply fits them.

The openai SDK builds every reply unvalidated, walking its types in Python
(`openai._models.construct_type`): about 70 us for a short `ChatCompletion`,
440 us for one with 256 logprob entries. Validation builds the same object in
C: about 4 us and 200-280 us. So a reply the recorder builds (token mode's) or
sees parsed (`rollout.reply_tap`) is validated first; a value the types do not
name (a server's "abort" finish reason, a string where a number belongs) fails
validation, and that reply is constructed as the SDK constructs it, unchanged.

Validated and constructed objects have equal values, dumps and JSON; the one
difference is that a validated model counts its extra fields (such as vLLM's
`token_ids`) in `model_fields_set`. `strict` refuses what lax validation would
coerce (a number sent as a string), so a server's odd reply reaches the agent
exactly as the SDK hands it over.
"""

from __future__ import annotations

from typing import Any


def sdk_object(cls: Any, data: dict[str, Any], *, strict: bool = False) -> Any:
    """`data` as an object of the SDK's type `cls`, equal to what the SDK would build."""
    try:
        return cls.model_validate(data, strict=strict)
    except ValueError:  # pydantic's ValidationError: a value the SDK's types do not name
        pass
    try:
        from openai._models import construct_type
    except ImportError:  # pragma: no cover - a future SDK without it
        return cls.model_construct(**data)
    return construct_type(type_=cls, value=data)

"""Pydantic configs for collection: what the YAML files and `key=value` overrides set.

Every model forbids unknown keys, so a typo is an error that names the key
instead of a silently ignored setting. API keys never live in a config: a
config names the environment variable that holds one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rollout.errors import ConfigError
from rollout.tracking.config import TrackingSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddedSettings(_Strict):
    seed: int = 0
    weights: str | None = None  # .npz saved by Policy.save; None = fresh policy from `seed`
    latency_ms: float = Field(default=0.0, ge=0)
    latency_per_token_ms: float = Field(default=0.0, ge=0)


class BackendSpec(_Strict):
    """Where episodes get their completions. Picklable: Ray workers rebuild clients from it."""

    kind: Literal["embedded", "remote"] = "embedded"
    urls: list[str] = Field(default_factory=list)
    model: str = "tiny"
    api_key_env: str | None = None  # name of the env var holding the key
    sampling: dict[str, Any] = Field(default_factory=lambda: {"temperature": 1.0, "max_tokens": 16})
    request_token_ids: bool = True
    request_logprobs: bool = True
    # Token mode: an episode's later calls go to the server as token ids (parent prompt +
    # sampled ids + bridge), so a whole episode is one exact row. "auto" uses it where the
    # server has a token route; "all" sends first calls that way too (rendered by the server,
    # then generated from the ids); "off" sends every call as messages.
    token_mode: Literal["auto", "all", "off"] = "auto"
    # How to get ids from servers that return logprobs but no ids: None (record none; the
    # server's logprobs are kept unpaired), "server" (its /tokenize), "tiktoken:<encoding>",
    # or "hf:<name or path>" (needs the `hf` extra). Ids from a tokenizer are flagged
    # inexact, and carry the server's logprobs only when each id is the server's token.
    tokenizer: str | None = None
    # Token mode with the chat template on the client (one request per call instead of three):
    # "embedded" (the embedded model's) or "hf:<name or path>" (a Hugging Face tokenizer; the
    # `hf` extra). Checked against the server's own renders before it is used.
    local_template: str | None = None
    client_factory: str | None = None  # "module:function(url=..., model=..., api_key=...)"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    embedded: EmbeddedSettings = Field(default_factory=lambda: EmbeddedSettings())

    @field_validator("token_mode", mode="before")
    @classmethod
    def _token_mode(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `off` (and `no`, `false`) as False: take it as meant.
        return "off" if value is False else value

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"url {u!r} must start with http:// or https://")
        return urls

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, spec: str | None) -> str | None:
        from rollout.tokenizers import check_spec

        try:
            return None if spec is None else check_spec(spec)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("local_template")
    @classmethod
    def _local_template(cls, spec: str | None) -> str | None:
        from rollout.tokenmode.local_template import check_template_spec

        try:
            return None if spec is None else check_template_spec(spec)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _template_needs_token_mode(self) -> BackendSpec:
        if self.local_template is not None and self.token_mode == "off":
            raise ValueError("backend.local_template renders token-mode calls: it needs token_mode auto or all")
        return self

    @model_validator(mode="after")
    def _remote_needs_urls(self) -> BackendSpec:
        if self.kind == "remote" and not self.urls and self.client_factory is None:
            raise ValueError("backend.kind 'remote' needs backend.urls (or backend.client_factory)")
        return self


class OutputSpec(_Strict):
    path: str | None = "runs/episodes.jsonl"  # the JSONL journal; None keeps episodes in memory
    parquet: str | None = None  # optional directory of Parquet parts
    parquet_batch: int = Field(default=256, ge=1)
    resume: bool = True
    retry_failed: bool = False  # on resume, run again the episodes that ended in error/timeout


class RaySpec(_Strict):
    address: str | None = None  # None starts a new local cluster; "auto" or "ray://..." joins one
    connect_timeout_s: float = Field(default=30.0, gt=0)  # joining a cluster that does not answer
    num_workers: int = Field(default=2, ge=1)
    concurrency_per_worker: int = Field(default=32, ge=1)
    max_restarts: int = Field(default=2, ge=0)
    num_cpus_per_worker: float = Field(default=0.5, gt=0)


class CollectConfig(_Strict):
    """One collection run: agent, tasks, backend, executor and output."""

    # Import path of `episode(task, model)`, and the tasks (a JSONL path or a list). No
    # defaults: a run says what it runs (`agent=`/`tasks=` also come as arguments). The CLI's
    # shipped demo (rollout/demo) names the arithmetic agent and tasks itself.
    agent: str | None = None
    tasks: str | list[dict[str, Any]] | None = None
    limit: int | None = Field(default=None, ge=1)
    samples_per_task: int = Field(default=1, ge=1)
    seed: int = 0
    executor: Literal["local", "ray"] = "local"
    concurrency: int = Field(default=32, ge=1)
    episode_timeout_s: float | None = Field(default=120.0, gt=0)
    episode_retries: int = Field(default=2, ge=0)
    max_staleness: int | None = Field(default=None, ge=0)  # versions behind the current policy
    stale_action: Literal["flag", "drop"] = "flag"
    backend: BackendSpec = Field(default_factory=lambda: BackendSpec())
    output: OutputSpec = Field(default_factory=lambda: OutputSpec())
    ray: RaySpec = Field(default_factory=lambda: RaySpec())
    progress: bool = True
    # A run with no trainable token (no sampled id that is exact, or a tokenizer's id checked
    # against the server's token) says so in its summary and exits non-zero.
    allow_untrainable: bool = False
    # Experiment trackers (wandb, mlflow, tensorboard): docs/trackers.md.
    tracking: TrackingSpec = Field(default_factory=lambda: TrackingSpec())


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys valid where `loc`'s last part sits (walking nested models from `model`)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        inner = field.annotation if field is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return list(model.model_fields)


def _describe(err: ValidationError, model: type[BaseModel], what: str = "config") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), _fields_at(model, e["loc"]), n=1)
            hint = f" (did you mean '{'.'.join([*map(str, e['loc'][:-1]), close[0]])}'?)" if close else ""
            lines.append(f"unknown key '{key}'{hint}")
        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return f"invalid {what}: " + "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`backend.sampling.temperature=0.7` -> (["backend", "sampling", "temperature"], 0.7)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


M = TypeVar("M", bound=BaseModel)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, section by section."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    what: str = "config",
) -> M:
    """The one loader: a YAML file (a mapping), `key=value` overrides, strict validation.

    Every problem is a `ConfigError` whose one line names the file or key (and,
    for an unknown key, the closest valid one).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping, got {type(loaded).__name__}")
        data = loaded
    return validate(model, apply_overrides(data, list(overrides)), what=what)


def validate(model: type[M], data: dict[str, Any], *, what: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, model, what)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CollectConfig:
    """Read a collect config's YAML file, apply `key=value` overrides, validate."""
    return load_yaml_config(CollectConfig, path, overrides or ())


def validate_config(data: dict[str, Any]) -> CollectConfig:
    return validate(CollectConfig, data)

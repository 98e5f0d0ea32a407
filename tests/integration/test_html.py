"""The static HTML episode view: self-contained, one span per token, faithful to the samples.

Episodes are built from `CallRecord`/`ChoiceRecord` directly (token text chosen to
need escaping, a multi-turn merge with observation tokens, an inexact record,
missing logprobs, a failed and an empty episode), plus two collected on the
embedded server. The page is parsed with `html.parser` and every token span is
checked against the assembled `Sample` arrays.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compat.token_counter import load_encoding
from rollout.call_record import CallRecord, ChoiceRecord, TokenSource
from rollout.episode import Episode, EpisodeStatus
from rollout.export import write_jsonl
from rollout.inspect.html import BUCKETS, probability_bucket, render_html, write_html
from rollout.sample import Sample, assemble

REPO = Path(__file__).resolve().parents[2]
ENC = load_encoding("cl100k_base")


def ids(text: str) -> list[int]:
    return ENC.encode(text, allowed_special="all")


def decoded(token: int) -> str:
    return ENC.decode_single_token_bytes(token).decode("utf-8", "backslashreplace")


# -- building episodes -----------------------------------------------------------

PROMPT = "<|fim_prefix|>user<|fim_middle|>Is <a&b> \"quoted\" & 'single'?\n<|endoftext|>"
REPLY_1 = "Yes: x < y && z > 'w'\n\nDone"
OBSERVATION = '<|fim_prefix|>tool<|fim_middle|><script>alert("x")</script>\t&amp;<|endoftext|>'
REPLY_2 = "ok </span> end"


def multi_turn_episode() -> Episode:
    """Two calls, the second extending the first token-exactly (one merged sample)."""
    p0 = ids(PROMPT)
    r1 = ids(REPLY_1)
    lp1 = np.linspace(-0.001, -9.0, len(r1)).astype(np.float32)
    r2 = ids(REPLY_2)
    lp2 = np.array([-0.05, -0.7, -2.5, -np.inf, -20.0][: len(r2)] + [-0.3] * (len(r2) - 5))
    call0 = CallRecord(
        id="chatcmpl-0",
        index=0,
        prompt_ids=p0,
        prompt_source=TokenSource.VLLM,
        choices=[
            ChoiceRecord(
                ids=r1, logprobs=lp1, versions=[3] * (len(r1) - 2) + [4, 4],
                finish_reason="stop", message={"role": "assistant", "content": REPLY_1},
                source=TokenSource.VLLM,
            )
        ],
        latency_s=0.0123,
    )  # fmt: skip
    call1 = CallRecord(
        id="chatcmpl-1",
        index=1,
        parent=0,
        prompt_ids=p0 + r1 + ids(OBSERVATION),
        prompt_source=TokenSource.SGLANG,
        choices=[
            ChoiceRecord(
                ids=r2, logprobs=lp2.astype(np.float32), versions=[5] * len(r2),
                finish_reason="length", message={"role": "assistant", "content": REPLY_2},
                source=TokenSource.SGLANG,
            )
        ],
        reward=1.0,
    )  # fmt: skip
    return Episode(
        id="ep-multi", task_id="task<&>", sample=2, calls=[call0, call1], reward=1.0,
        task={"q": "1 < 2 & 3"}, metadata={"note": "<img src=x onerror=alert(1)>"},
    )  # fmt: skip


def inexact_episode() -> Episode:
    """A tokenizer-fallback record without logprobs, two choices (two samples)."""
    prompt = ids("hello")
    choices = [
        ChoiceRecord(index=k, ids=ids(text), logprobs=None, versions=[-1] * len(ids(text)),
               source=TokenSource.TOKENIZER, message={"content": text}, finish_reason="stop")
        for k, text in enumerate(["a & b", "c < d"])
    ]  # fmt: skip
    call = CallRecord(
        prompt_ids=prompt,
        prompt_source=TokenSource.TOKENIZER,
        choices=choices,
        notes=["server returned no token ids; re-encoded text with cl100k_base"],
    )
    return Episode(id="ep-inexact", task_id="t2", calls=[call], status=EpisodeStatus.TRUNCATED)


def failed_episode() -> Episode:
    call = CallRecord(
        prompt_ids=ids("question"),
        prompt_source=TokenSource.VLLM,
        choices=[
            ChoiceRecord(ids=ids(" answer"), logprobs=[-0.5], versions=[1], source=TokenSource.VLLM)
        ],
    )
    return Episode(
        id="ep-failed", task_id="t3", calls=[call], status=EpisodeStatus.ERROR,
        error='ValueError: bad <input> & "stuff"',
    )  # fmt: skip


def empty_episode() -> Episode:
    return Episode(id="ep-empty", task_id="t4", status=EpisodeStatus.TIMEOUT, error="timed out")


def all_episodes() -> list[Episode]:
    return [multi_turn_episode(), inexact_episode(), failed_episode(), empty_episode()]


# -- parsing the page --------------------------------------------------------------


class Page(HTMLParser):
    """Token spans grouped by sample, plus every tag and attribute seen."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.samples: list[dict[str, Any]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._stack: list[str] = []
        self._token: dict[str, Any] | None = None
        self._token_depth = 0
        self.feed(text)
        self.close()
        assert not self._stack, f"unclosed tags: {self._stack}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("meta", "input", "br"):
            return
        self._stack.append(tag)
        if tag == "div" and "data-sample" in a:
            self.samples.append({"attrs": a, "tokens": [], "elided": []})
        elif tag == "span" and "data-pos" in a:
            assert self._token is None, "token spans must not nest"
            self._token = {"attrs": a, "classes": (a.get("class") or "").split(), "text": ""}
            self._token_depth = len(self._stack)
            self.samples[-1]["tokens"].append(self._token)
        elif tag == "span" and "data-omitted" in a:
            self.samples[-1]["elided"].append(int(a["data-omitted"] or 0))

    def handle_endtag(self, tag: str) -> None:
        assert self._stack and self._stack[-1] == tag, f"</{tag}> closes {self._stack[-1:]}"
        if self._token is not None and len(self._stack) == self._token_depth:
            self._token = None
        self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._token is not None:
            self._token["text"] += data


def visible(text: str) -> str:
    """What a token's text renders as (newline/tab marks; empty text as ∅)."""
    if text == "":
        return "∅"
    return text.replace("\n", "↵\n").replace("\r", "␍").replace("\t", "⇥")


def check_sample(page_sample: dict[str, Any], s: Sample) -> None:
    spans = page_sample["tokens"]
    assert page_sample["attrs"]["data-tokens"] == str(len(s))
    assert len(spans) == len(s)
    assert sum(sp["attrs"]["data-mask"] == "1" for sp in spans) == s.num_sampled
    for i, sp in enumerate(spans):
        a, cls = sp["attrs"], sp["classes"]
        assert a["data-pos"] == str(i)
        assert int(a["data-id"]) == int(s.tokens[i])
        assert a["data-mask"] == str(int(s.loss_mask[i]))
        assert int(a["data-version"]) == int(s.versions[i])
        assert sp["text"] == visible(decoded(int(s.tokens[i])))
        title = a["title"] or ""
        assert f"id {int(s.tokens[i])}" in title
        assert repr(decoded(int(s.tokens[i]))) in title
        if s.loss_mask[i]:
            assert "s" in cls and "p" not in cls and "o" not in cls
            if s.has_logprobs:
                lp = float(s.logprobs[i])
                got = float(a["data-logprob"] or "nan")
                assert got == lp or math.isclose(got, lp, rel_tol=1e-5)
                assert f"b{probability_bucket(lp)}" in cls
                assert "nolp" not in cls
            else:
                assert "data-logprob" not in a and "nolp" in cls
                assert not any(re.fullmatch(r"b\d+", c) for c in cls)
        else:
            assert "data-logprob" not in a and "s" not in cls
            assert ("p" if i < s.prompt_len else "o") in cls


# -- tests ---------------------------------------------------------------------


def test_page_is_self_contained() -> None:
    text = render_html(all_episodes(), 0)
    assert text.startswith("<!DOCTYPE html>")
    for bad in ("http://", "https://", "@import", "url(", "//cdn", "<script", "<link", "<img"):
        assert bad not in text.lower(), bad
    page = Page(text)
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "img", "iframe", "object", "embed", "base"), tag
        for key in ("src", "href", "srcset", "action", "poster", "background"):
            assert key not in attrs, (tag, key)


def test_token_spans_match_the_samples() -> None:
    ep = multi_turn_episode()
    samples = assemble([ep], mode="concat").samples
    assert len(samples) == 1 and samples[0].prompt_len < len(samples[0])  # one merged row
    s = samples[0]
    n_obs = int(np.count_nonzero(~s.loss_mask[s.prompt_len :]))
    assert n_obs == len(ids(OBSERVATION))
    page = Page(render_html([ep]))
    assert len(page.samples) == 1
    check_sample(page.samples[0], s)
    spans = page.samples[0]["tokens"]
    assert sum("o" in sp["classes"] for sp in spans) == n_obs
    assert sum("p" in sp["classes"] for sp in spans) == s.prompt_len
    # The -inf and -20 logprobs are the reddest bucket, -0.05 is green.
    assert probability_bucket(-np.inf) == 0 and probability_bucket(-20.0) == 0
    assert probability_bucket(-0.05) == round(math.exp(-0.05) * BUCKETS) == 19
    assert probability_bucket(0.0) == BUCKETS
    buckets = {c for sp in spans for c in sp["classes"] if re.fullmatch(r"b\d+", c)}
    assert {"b0", "b19"} <= buckets and len(buckets) > 4
    # Special role markers are flagged.
    assert any("sp" in sp["classes"] and sp["text"] == "<|fim_prefix|>" for sp in spans)


def test_tricky_text_is_escaped() -> None:
    ep = multi_turn_episode()
    text = render_html([ep])
    s = assemble([ep]).samples[0]
    tricky = {decoded(int(t)) for t in s.tokens} & {" <", "&", ">", ' "', "'", " &&", "&amp", "</"}
    assert len(tricky) == 8
    for raw in (" <a", "<script", "</span> end", "<img src", "task<&>", ">&amp</span>"):
        assert raw not in text, raw
    for escaped in ('> &lt;</span>', ">&amp;</span>", '> &quot;</span>', ">&#x27;</span>",
                    ">&amp;amp</span>", ">&lt;/</span>", "task&lt;&amp;&gt;"):  # fmt: skip
        assert escaped in text, escaped
    page = Page(text)  # would fail on the injected </span> otherwise
    spans = page.samples[0]["tokens"]
    texts = [sp["text"] for sp in spans]
    for t in ids(PROMPT):
        assert visible(decoded(t)) in texts
    assert any(sp["text"] == "<script" or "<script" in sp["text"] for sp in spans)
    assert "".join(texts).replace("↵", "").replace("⇥", "\t") == ENC.decode(
        [int(sp["attrs"]["data-id"]) for sp in spans]
    )
    # Newlines are shown with a visible mark.
    assert any("↵\n" in sp["text"] for sp in spans)


def test_header_and_provenance() -> None:
    eps = all_episodes()
    page0 = render_html(eps, 0)
    for needle in ("ep-multi", "task&lt;&amp;&gt;", "completed", "1.0000", "chatcmpl-0", ">vllm<",
                   ">sglang<", "12.3 ms", "stop", "length"):  # fmt: skip
        assert needle in page0, needle
    for ep in eps:  # the summary lists every episode
        assert ep.id in page0
    assert page0.count('class="current"') == 1

    page1 = render_html(eps, 1)
    assert ">tokenizer<" in page1 and "INEXACT token ids" in page1
    assert "server returned no token ids; re-encoded text with cl100k_base" in page1
    assert 'class="inexact"' in page1
    assert "truncated" in page1


def test_missing_logprobs_are_neutral() -> None:
    ep = inexact_episode()
    samples = assemble([ep]).samples
    assert len(samples) == 2 and not any(s.has_logprobs for s in samples)
    page = Page(render_html([ep]))
    assert len(page.samples) == 2
    for ps, s in zip(page.samples, samples, strict=True):
        check_sample(ps, s)
        assert all(
            "nolp" in sp["classes"] for sp in ps["tokens"] if sp["attrs"]["data-mask"] == "1"
        )


def test_failed_and_empty_episodes() -> None:
    failed = failed_episode()
    assert assemble([failed]).samples == []  # skipped for training ...
    text = render_html([failed])
    page = Page(text)  # ... but still shown
    assert len(page.samples) == 1
    check_sample(page.samples[0], assemble([failed], include_failed=True).samples[0])
    assert "ValueError: bad &lt;input&gt; &amp; &quot;stuff&quot;" in text
    assert "failed" in text and "error" in text

    text = render_html([empty_episode()])
    page = Page(text)
    assert page.samples == []
    assert "No calls recorded" in text and "timed out" in text and "timeout" in text

    no_choice = Episode(id="ep-nochoice", calls=[CallRecord(prompt_ids=ids("hi"))])
    text = render_html([no_choice])
    assert Page(text).samples == [] and "no choices recorded" in text

    text = render_html([])
    assert "No episodes" in text and Page(text).samples == []


def test_decode_fallback_shows_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = multi_turn_episode()
    s = assemble([ep]).samples[0]
    bad = int(s.tokens[3])

    def flaky(token: int) -> str:
        if token == bad:
            raise KeyError(token)
        return decoded(token)

    page = Page(render_html([ep], decode=flaky))
    spans = page.samples[0]["tokens"]
    assert [sp["text"] for sp in spans if sp["attrs"]["data-id"] == str(bad)] == [f"#{bad}"] * int(
        np.count_nonzero(s.tokens == bad)
    )
    assert spans[0]["text"] == decoded(int(s.tokens[0]))

    # Without any decoder every token shows its id, and the page says why.
    monkeypatch.setattr("rollout.inspect.html.default_decoder", lambda: None)
    text = render_html([ep])
    spans = Page(text).samples[0]["tokens"]
    assert [sp["text"] for sp in spans] == [f"#{int(t)}" for t in s.tokens]
    assert "could not be decoded" in text


def test_max_tokens_keeps_head_and_tail() -> None:
    ep = multi_turn_episode()
    s = assemble([ep]).samples[0]
    page = Page(render_html([ep], max_tokens=10))
    spans = page.samples[0]["tokens"]
    assert [int(sp["attrs"]["data-pos"]) for sp in spans] == [*range(5), *range(len(s) - 5, len(s))]
    assert page.samples[0]["elided"] == [len(s) - 10]
    for sp in spans:
        i = int(sp["attrs"]["data-pos"])
        assert int(sp["attrs"]["data-id"]) == int(s.tokens[i])
    assert Page(render_html([ep], max_tokens=10_000)).samples[0]["elided"] == []
    with pytest.raises(ValueError):
        render_html([ep], max_tokens=0)


def test_index_is_checked_and_write_html(tmp_path: Path) -> None:
    eps = all_episodes()
    with pytest.raises(IndexError):
        render_html(eps, len(eps))
    with pytest.raises(IndexError):
        render_html(eps, -1)
    out = write_html(eps, tmp_path / "sub" / "view.html", index=2)
    assert out == tmp_path / "sub" / "view.html"
    assert "ep-failed" in out.read_text(encoding="utf-8")
    assert render_html(eps[0]) == render_html([eps[0]])  # a single episode is accepted


@pytest.fixture(scope="module")
def collected() -> list[Episode]:
    from rollout.collection import collect

    sys.path.insert(0, str(REPO))  # the agent, examples.arithmetic, lives in the project
    summary = collect(
        REPO / "configs/local.yaml", output={"path": None}, progress=False, limit=1,
        samples_per_task=2,
    )  # fmt: skip
    assert summary.episodes
    return summary.episodes


def test_collected_episodes(collected: list[Episode]) -> None:
    for index, ep in enumerate(collected):
        samples = assemble([ep], mode="concat", include_failed=True).samples
        assert samples
        page = Page(render_html(collected, index))
        assert len(page.samples) == len(samples)
        for ps, s in zip(page.samples, samples, strict=True):
            check_sample(ps, s)


def test_cli_inspect_writes_html(tmp_path: Path) -> None:
    data = tmp_path / "eps.jsonl"
    write_jsonl(all_episodes(), data)
    out = tmp_path / "out.html"
    proc = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "inspect", str(data), "--episode", "1",
         "--html", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    text = out.read_text(encoding="utf-8")
    assert "ep-inexact" in text and len(Page(text).samples) == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_chromium_renders_the_page(tmp_path: Path) -> None:
    if CHROMIUM is None:
        # .ci/run installs chromium: in CI its absence is a failure, not a silent skip.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI: chromium is not installed (.ci/run installs it: apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    ep = multi_turn_episode()
    s = assemble([ep]).samples[0]
    path = write_html([ep], tmp_path / "view.html")
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = Page(proc.stdout)
    assert len(dom.samples) == 1
    check_sample(dom.samples[0], s)


def test_no_key_reaches_the_page() -> None:
    """Issue 12.18: an echoed key in the error, metadata and notes is redacted on the page."""
    from rollout.redact import register_secret

    key = "sk-html-SECRET-0123456789abcdef"
    register_secret(key)
    ep = Episode(
        task_id="t",
        status=EpisodeStatus.ERROR,
        error=f"AuthenticationError: invalid key {key}",
        metadata={"server": f"http://user:{key}@10.0.0.1/v1", "api_key": key, "note": f"echo {key}"},
        calls=[
            CallRecord(
                id="c0",
                prompt_ids=ids("hi"),
                prompt_source=TokenSource.VLLM,
                choices=[ChoiceRecord(ids=ids("ok"), versions=[0] * len(ids("ok")), source=TokenSource.VLLM,
                                message={"role": "assistant", "content": f"the key is {key}"})],
                notes=[f"server said: Bearer {key}"],
            )
        ],
    )
    page = render_html(ep)
    assert key not in page and key[:12] not in page
    assert "REDACTED" in page

"""A static HTML view of one episode, token by token (`rollout inspect --html`).

`render_html` returns, and `write_html` writes, one self-contained page: inline
CSS only, no scripts, fonts, images or other network assets, so it opens from
a file or a CI artifact anywhere. It shows

- a summary of every episode in the list, the shown one highlighted;
- the shown episode's header (id, task, sample, status, reward, error) and a
  table of its calls with their token provenance (`TokenSource`), notes and
  replies, inexact records flagged;
- each sample `assemble([episode], mode="concat")` builds (failed episodes
  included, since this is for looking, not training), one `<span>` per token.

Token spans carry ``data-pos``, ``data-id``, ``data-mask`` and
``data-version``, and sampled tokens with logprobs also ``data-logprob``.
Sampled tokens (mask 1) are coloured red -> yellow -> green by their
probability exp(logprob) (class ``b0`` .. ``b20``, 5 % per step); sampled
tokens without logprobs get a neutral blue; prompt and observation tokens
(mask 0) are grey and italic. Every span has a ``title`` tooltip with its
position, id, mask, logprob, version and text. Token text is decoded with the
offline cl100k encoding the embedded server uses, falling back to ``#id``
when it cannot be decoded, and is always HTML-escaped; newlines show as ↵.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from rollout.call_record import NO_VERSION, CallRecord, ChoiceRecord
from rollout.episode import Episode, EpisodeStatus
from rollout.inspect.decode import Decoder, default_decoder, token_text
from rollout.redact import redact, redact_text
from rollout.sample import FAILED_STATUSES, AssemblyResult, Sample, assemble

BUCKETS = 20
"""Probability colour steps: class ``b{k}`` with k = round(exp(logprob) * BUCKETS)."""

MAX_LISTED_EPISODES = 500
"""Rows of the all-episodes summary table before it is cut short."""

_SPECIAL = re.compile(r"^<\|[^|<>]{1,64}\|>$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_VISIBLE = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def probability_bucket(logprob: float) -> int:
    """The colour class index (0 = red .. BUCKETS = green) of a sampled token."""
    if not math.isfinite(logprob):
        return 0
    p = min(1.0, max(0.0, math.exp(min(0.0, logprob))))
    return round(p * BUCKETS)


# -- small helpers -----------------------------------------------------------------


def _e(value: Any) -> str:
    """Redact, then escape for text and double-quoted attribute values: every string on
    the page goes through here, so no key reaches it (`rollout.redact`)."""
    return html.escape(redact_text(str(value)), quote=True)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _visible_html(text: str) -> str:
    """Token text as escaped HTML, with newlines, tabs and control characters visible."""
    if text == "":
        return '<span class="ws">∅</span>'
    out: list[str] = []
    for part in re.split(r"(\n|\r|\t)", text):
        if part in _VISIBLE:
            mark = f'<span class="ws">{_VISIBLE[part]}</span>'
            out.append(mark + "\n" if part == "\n" else mark)
        elif part:
            part = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", part)
            out.append(html.escape(part, quote=True))
    return "".join(out)


def _status_class(status: EpisodeStatus) -> str:
    if status == EpisodeStatus.COMPLETED:
        return "ok"
    if status == EpisodeStatus.TRUNCATED:
        return "warn"
    return "bad"


def _badge(text: str, cls: str) -> str:
    return f'<span class="badge {cls}">{_e(text)}</span>'


def _truncate(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- page sections -----------------------------------------------------------------


# The page's style lives beside this module (page.css, package data); the probability
# colour classes are generated from BUCKETS.
CSS = (files("rollout.inspect") / "page.css").read_text(encoding="utf-8") + "".join(
    f".t.s.b{k} {{ background: hsl({k * 120 // BUCKETS},{80 - 20 * k // BUCKETS}%,78%); }}\n"
    for k in range(BUCKETS + 1)
)


def _episode_list(episodes: Sequence[Episode], index: int) -> str:
    statuses = Counter(e.status.value for e in episodes)
    rewards = [e.reward for e in episodes if e.reward is not None]
    mean = f"{float(np.mean(rewards)):.4f}" if rewards else "–"
    inexact = sum(1 for e in episodes if not e.exact)
    parts = [
        '<section id="episodes"><h2>All episodes</h2>',
        '<div class="meta">',
        f"<div><b>episodes</b>{len(episodes)}</div>",
        f"<div><b>statuses</b>{_e(', '.join(f'{k} {v}' for k, v in sorted(statuses.items())))}</div>",
        f"<div><b>mean reward</b>{mean}</div>",
        f"<div><b>calls</b>{sum(len(e.calls) for e in episodes)}</div>",
        f"<div><b>tokens</b>{sum(e.num_tokens for e in episodes)}</div>",
        f"<div><b>inexact</b>{inexact}</div>",
        "</div>",
    ]
    if not episodes:
        parts.append("</section>")
        return "".join(parts)
    parts.append(
        f"<details{' open' if len(episodes) <= 40 else ''}><summary>list "
        f"(shown: #{index}; render another with <code>rollout inspect FILE --episode N "
        "--html OUT</code>)</summary>"
        '<table class="episodes"><tr><th>#</th><th>task</th><th>sample</th><th>status</th>'
        "<th>reward</th><th>calls</th><th>tokens</th><th>exact</th><th>id</th></tr>"
    )
    for i, ep in enumerate(episodes[:MAX_LISTED_EPISODES]):
        cls = ' class="current"' if i == index else ""
        parts.append(
            f'<tr{cls} data-index="{i}"><td class="num">{i}</td><td>{_e(ep.task_id)}</td>'
            f'<td class="num">{ep.sample}</td>'
            f"<td>{_badge(ep.status.value, _status_class(ep.status))}</td>"
            f'<td class="num">{_fmt(ep.reward, 3)}</td><td class="num">{len(ep.calls)}</td>'
            f'<td class="num">{ep.num_tokens}</td><td>{"yes" if ep.exact else "NO"}</td>'
            f'<td class="mono">{_e(ep.id)}</td></tr>'
        )
    parts.append("</table>")
    if len(episodes) > MAX_LISTED_EPISODES:
        parts.append(
            f'<p class="muted">… {len(episodes) - MAX_LISTED_EPISODES} more not listed</p>'
        )
    parts.append("</details></section>")
    return "".join(parts)


def _episode_header(ep: Episode, index: int) -> str:
    parts = [
        f'<section id="episode"><h1>Episode #{index} <span class="mono muted">{_e(ep.id)}</span></h1>',
        '<div class="meta">',
        f"<div><b>task</b>{_e(ep.task_id) or '–'}</div>",
        f"<div><b>sample</b>{ep.sample}</div>",
        f"<div><b>status</b>{_badge(ep.status.value, _status_class(ep.status))}</div>",
        f"<div><b>reward</b>{_fmt(ep.reward)}</div>",
        f"<div><b>calls</b>{len(ep.calls)}</div>",
        f"<div><b>tokens</b>{ep.num_tokens}</div>",
        f"<div><b>exact</b>{_badge('yes', 'ok') if ep.exact else _badge('NO', 'bad')}</div>",
    ]
    if ep.discounted:
        parts.append(f"<div>{_badge('rewards discounted', 'info')}</div>")
    parts.append("</div>")
    if ep.error:
        parts.append(f'<div class="alert">{_e(ep.error)}</div>')
    if ep.status in FAILED_STATUSES:
        parts.append(
            '<div class="alert warn">This episode failed: assemble() skips it for training '
            "by default (include_failed=False). Its partial trajectory is shown below.</div>"
        )
    if ep.task is not None or ep.metadata:
        parts.append("<details><summary>task and metadata</summary>")
        if ep.task is not None:
            parts.append(f'<div class="alert pre">{_e(_json(ep.task))}</div>')
        if ep.metadata:
            parts.append(f'<div class="alert pre">{_e(_json(redact(ep.metadata)))}</div>')
        parts.append("</details>")
    parts.append("</section>")
    return "".join(parts)


def _json(obj: Any) -> str:
    try:
        return _truncate(json.dumps(obj, indent=1, default=str, ensure_ascii=False), 4000)
    except Exception:
        return _truncate(repr(obj), 4000)


def _reply_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    text = content if isinstance(content, str) else ("" if content is None else _json(content))
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function", {}) if isinstance(tc, dict) else {}
        text += f"\n[tool call {fn.get('name', '?')}({fn.get('arguments', '')})]"
    return _truncate(text.strip(), 400)


def _calls_table(ep: Episode) -> str:
    if not ep.calls:
        return '<h2>Calls</h2><p class="muted">No calls recorded.</p>'
    rows = [
        "<h2>Calls and token provenance</h2>",
        '<table class="calls"><tr><th title="hover a call number for its completion id">call</th><th>parent</th><th>prompt</th>'
        "<th>prompt source</th><th>choice</th><th>finish</th><th>sampled</th><th>source</th>"
        "<th>logprobs</th><th>versions</th><th>latency</th><th>reward</th><th>reply</th>"
        "<th>notes</th></tr>",
    ]
    for pos, call in enumerate(ep.calls):
        rows.extend(_call_rows(pos, call))
    rows.append("</table>")
    return "".join(rows)


def _source_badge(source: Any) -> str:
    return _badge(source.value, "ok" if source.exact else "bad")


def _call_rows(pos: int, call: CallRecord) -> list[str]:
    choices: list[ChoiceRecord | None] = list(call.choices) or [None]
    span = len(choices)
    notes = "<br>".join(_e(n) for n in call.notes) or '<span class="muted">–</span>'
    out: list[str] = []
    for k, ch in enumerate(choices):
        cls = "" if call.exact else ' class="inexact"'
        cells = []
        if k == 0:
            rs = f' rowspan="{span}"' if span > 1 else ""
            ident = f' title="{_e(call.id)}"' if call.id else ""
            cells += [
                f'<td{rs} class="num"{ident}>{pos}</td>',
                f'<td{rs} class="num">{"–" if call.parent is None else call.parent}</td>',
                f'<td{rs} class="num">{len(call.prompt_ids)}</td>',
                f"<td{rs}>{_source_badge(call.prompt_source)}</td>",
            ]
        if ch is None:
            cells.append('<td colspan="6" class="muted">no choices recorded</td>')
        else:
            vers = ch.versions.to_array()
            vset = sorted({int(v) for v in vers})
            vtext = ", ".join("–" if v == NO_VERSION else str(v) for v in vset) or "–"
            lp = (
                _badge("none", "warn")
                if ch.logprobs is None
                else f"mean {_fmt(float(np.mean(ch.logprobs)) if len(ch.logprobs) else None, 3)}"
            )
            cells += [
                f'<td class="num">{ch.index}</td>',
                f"<td>{_e(ch.finish_reason or '–')}</td>",
                f'<td class="num">{len(ch.ids)}</td>',
                f"<td>{_source_badge(ch.source)}</td>",
                f"<td>{lp}</td>",
                f"<td>{_e(vtext)}</td>",
            ]
        if k == 0:
            rs = f' rowspan="{span}"' if span > 1 else ""
            cells += [
                f'<td{rs} class="num">{call.latency_s * 1000:.1f} ms</td>',
                f'<td{rs} class="num">{_fmt(call.reward, 3)}</td>',
            ]
        reply = "" if ch is None else _reply_text(ch.message)
        cells.append(f'<td class="reply">{_e(reply)}</td>')
        if k == 0:
            rs = f' rowspan="{span}"' if span > 1 else ""
            cells.append(f"<td{rs}>{notes}</td>")
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return out


def _legend() -> str:
    return (
        '<div class="legend">'
        '<span><span class="t p">prompt</span> / <span class="t o">observation</span> '
        "mask 0 (not trained)</span>"
        '<span><span class="t s b0">sampled</span> mask 1, coloured by p = exp(logprob): '
        'p=0 <span class="scale"></span> p=1</span>'
        '<span><span class="t s nolp">sampled</span> no logprobs</span>'
        '<span><span class="t p sp">&lt;|special|&gt;</span> special token</span>'
        '<span class="muted">hover a token for id, logprob, version</span>'
        "</div>"
        '<div class="controls"><label><input type="checkbox" id="show-ids"> show token ids</label>'
        ' &nbsp; <label><input type="checkbox" id="hide-prompt"> hide prompt tokens</label></div>'
    )


def _token_span(s: Sample, i: int, decode: Decoder | None) -> str:
    token = int(s.tokens[i])
    mask = bool(s.loss_mask[i])
    version = int(s.versions[i])
    text, decoded = token_text(decode, token)
    classes = ["t"]
    attrs = [f'data-pos="{i}"', f'data-id="{token}"', f'data-mask="{int(mask)}"']
    lines = [f"pos {i} · id {token} · mask {int(mask)}"]
    if mask:
        classes.append("s")
        if s.has_logprobs:
            lp = float(s.logprobs[i])
            classes.append(f"b{probability_bucket(lp)}")
            attrs.append(f'data-logprob="{lp:.6g}"')
            lines.append(f"sampled · logprob {lp:.4f} · p {math.exp(min(lp, 0.0)):.4f}")
        else:
            classes.append("nolp")
            lines.append("sampled · no logprobs recorded")
    else:
        classes.append("p" if i < s.prompt_len else "o")
        lines.append("prompt" if i < s.prompt_len else "observation (between calls)")
    lines[-1] += f" · version {'–' if version == NO_VERSION else version}"
    attrs.append(f'data-version="{version}"')
    if decoded and _SPECIAL.match(text):
        classes.append("sp")
    lines.append(f"text {text!r}" if decoded else "text not decoded")
    title = "\n".join(lines)
    return (
        f'<span class="{" ".join(classes)}" {" ".join(attrs)} title="{_e(title)}">'
        f"{_visible_html(text)}</span>"
    )


def _positions(n: int, max_tokens: int | None) -> tuple[range, range]:
    """Token positions to render: all, or a head and a tail totalling max_tokens."""
    if max_tokens is None or n <= max_tokens:
        return range(n), range(n, n)
    head = max_tokens // 2
    return range(head), range(n - (max_tokens - head), n)


def _sample_block(k: int, s: Sample, decode: Decoder | None, max_tokens: int | None) -> str:
    sampled = s.loss_mask
    vers = sorted({int(v) for v in s.versions[sampled]})
    mean_lp = (
        f"{float(np.mean(s.logprobs[sampled])):.3f}" if s.has_logprobs and s.num_sampled else "–"
    )
    calls = ", ".join(f"{c}.{ch}" for c, ch in s.calls)
    head = [
        f'<div class="sample" id="sample-{k}" data-sample="{k}" data-tokens="{len(s)}" '
        f'data-sampled="{s.num_sampled}">',
        f'<div class="sample-head"><b>Sample {k}</b> · {len(s)} tokens · prompt {s.prompt_len} · '
        f"sampled {s.num_sampled} · mean sampled logprob {mean_lp} · reward {s.reward:.4f} · "
        f"calls {_e(calls) or '–'} (call.choice) · versions "
        f"{_e(', '.join('–' if v == NO_VERSION else str(v) for v in vers) or '–')} ",
        _badge("exact", "ok") if s.exact else _badge("INEXACT token ids", "bad"),
        " " + _badge("no logprobs", "warn") if not s.has_logprobs else "",
        "</div>",
    ]
    first, last = _positions(len(s), max_tokens)
    body = ['<div class="tokens">']
    body.extend(_token_span(s, i, decode) for i in first)
    if len(last):
        omitted = last.start - first.stop
        body.append(
            f'<span class="elided" data-omitted="{omitted}">… {omitted} tokens not shown '
            f"(max_tokens={max_tokens}) …</span>"
        )
        body.extend(_token_span(s, i, decode) for i in last)
    body.append("</div></div>")
    return "".join(head) + "".join(body)


def _samples_section(
    ep: Episode, result: AssemblyResult, decode: Decoder | None, max_tokens: int | None
) -> str:
    parts = ['<h2>Samples <span class="muted">(assemble mode=concat)</span></h2>']
    if decode is None:
        parts.append(
            '<div class="alert warn">Token text could not be decoded (the cl100k encoding is '
            "unavailable); tokens show as #id.</div>"
        )
    for d in result.drift:
        parts.append(
            f'<div class="alert warn">Drift: call {d.call} does not token-extend call {d.parent} '
            f"choice {d.choice}: position {d.position} expected id {d.expected}, got "
            f"{'end of prompt' if d.got is None else d.got}. It starts a new sample.</div>"
        )
    if not result.samples:
        why = "no calls were recorded" if not ep.calls else "no call has a recorded choice"
        parts.append(f'<p class="muted">No samples: {why}.</p>')
        return "".join(parts)
    parts.append(_legend())
    parts.extend(_sample_block(k, s, decode, max_tokens) for k, s in enumerate(result.samples))
    return "".join(parts)


# -- public API --------------------------------------------------------------------


def render_html(
    episodes: Episode | Sequence[Episode],
    index: int = 0,
    *,
    decode: Decoder | None = None,
    max_tokens: int | None = None,
) -> str:
    """The HTML page for `episodes[index]` (see the module docstring).

    `decode` maps one token id to its text (default: the offline cl100k
    encoding; ``#id`` when that is unavailable or a token fails to decode).
    `max_tokens` caps the token spans per sample: the first and last halves
    are shown with a marker in between.
    """
    eps: list[Episode] = [episodes] if isinstance(episodes, Episode) else list(episodes)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if eps and not 0 <= index < len(eps):
        raise IndexError(f"episode index {index} outside [0, {len(eps)})")
    if decode is None:
        decode = default_decoder()

    if eps:
        ep = eps[index]
        title = f"episode {index} · {ep.task_id or ep.id}"
        result = assemble([ep], mode="concat", include_failed=True)
        body = (
            _episode_header(ep, index)
            + _calls_table(ep)
            + _samples_section(ep, result, decode, max_tokens)
            + _episode_list(eps, index)
        )
    else:
        title = "no episodes"
        body = '<h1>No episodes</h1><p class="muted">The file holds no episodes.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>rollout · {_e(title)}</title><style>{CSS}</style></head>\n"
        f"<body>{body}</body></html>\n"
    )


def write_html(
    episodes: Episode | Sequence[Episode],
    path: str | os.PathLike[str],
    index: int = 0,
    *,
    decode: Decoder | None = None,
    max_tokens: int | None = None,
) -> Path:
    """Write `render_html(...)` to `path` (parents created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        render_html(episodes, index, decode=decode, max_tokens=max_tokens), encoding="utf-8"
    )
    return out

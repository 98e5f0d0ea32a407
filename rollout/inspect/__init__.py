"""Looking at collected episodes: a text summary and token table, and a static HTML page.

Both views decode tokens with the same decoder (`decode.default_decoder`);
an id the encoding does not know is shown as `#id`.
"""

from rollout.inspect.decode import Decoder, default_decoder, token_text
from rollout.inspect.html import BUCKETS, probability_bucket, render_html, write_html
from rollout.inspect.text import show_episode, summarize

__all__ = [
    "BUCKETS",
    "Decoder",
    "default_decoder",
    "probability_bucket",
    "render_html",
    "show_episode",
    "summarize",
    "token_text",
    "write_html",
]

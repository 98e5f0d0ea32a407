"""The peer tier: each peer's own code (CAMEL, verl, AReaL) on our output, in its own venv.

In the main environment a peer is not installed, and its folder is not
collected, so a plain `python -m pytest` leaves the tier out. In a peer's venv
(`tests/peers/run.sh` sets ROLLOUT_PEER to the peer it runs) the folder is
always collected and its modules import the peer unconditionally: a missing or
broken peer install is a collection error, a failed tier, never a green skip.
"""

from __future__ import annotations

import importlib.util
import os

PEERS = {"areal": "areal", "camel": "camel", "verl": "verl"}  # folder -> the module it tests
"""Each folder under tests/peers with a requirements.txt, and its peer's top-level module."""

running = os.environ.get("ROLLOUT_PEER", "")
collect_ignore = [
    folder
    for folder, module in PEERS.items()
    if folder != running and importlib.util.find_spec(module) is None
]

"""verl peer tier: verl's own code on our output, in its own environment (tests/peers/run.sh verl).

Where verl is not installed (the main environment) these modules are not collected, so a plain
`python -m pytest` leaves them out; where it is installed, a failing import fails the tier.
"""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("verl") else ["test_*.py"]

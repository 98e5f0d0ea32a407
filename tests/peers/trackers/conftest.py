"""The trackers tier: wandb, MLflow, TensorBoard and Hugging Face datasets through their own libraries.

In its own venv (tests/peers/setup.sh trackers; run.sh sets ROLLOUT_PEER_TIER)
every library must import, or the tier fails: it never skips. Elsewhere (the
main environment, without them) these modules are not collected, so a plain
`python -m pytest` leaves them to the tier.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

MODULES = ("wandb", "mlflow", "tensorboardX", "tensorboard", "datasets", "pyarrow")

if os.environ.get("ROLLOUT_PEER_TIER") == "trackers" or all(
    importlib.util.find_spec(m) for m in MODULES
):
    for module in MODULES:
        importlib.import_module(module)  # ImportError here fails the tier
else:
    collect_ignore_glob = ["test_*.py"]

"""The trackers tier: every tracker library must import, or the tier fails (never skips)."""

import datasets  # noqa: F401
import mlflow  # noqa: F401
import pyarrow  # noqa: F401
import tensorboard  # noqa: F401
import tensorboardX  # noqa: F401
import wandb  # noqa: F401

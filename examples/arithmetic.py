"""The arithmetic agent lives in the package, `rollout/demo/arithmetic.py`, so an
installed rollout can run it without this checkout; read it there. This name
keeps `examples.arithmetic` (older configs, the CAMEL example) working.
"""

from rollout.demo.arithmetic import MAX_TURNS, SYSTEM, check, episode, question, sync_episode

__all__ = ["MAX_TURNS", "SYSTEM", "check", "episode", "question", "sync_episode"]

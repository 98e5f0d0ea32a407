"""Trainers' own rollout loops running an unchanged `episode(task, model)` function."""

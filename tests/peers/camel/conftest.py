"""CAMEL peer tier: camel-ai 0.2.90's own classes driving ours.

Runs in its own environment (camel pins pydantic and tiktoken), built from
`requirements.txt` here. Whether this folder is collected is decided in
tests/peers/conftest.py: in the camel venv always, so a broken camel fails.
"""

"""Implementations of the CLI sub-commands (kept out of cli.py so ``facemtl --help`` starts fast)."""

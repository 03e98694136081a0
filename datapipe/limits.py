"""Limits shared by the command line (which stays torch-free while it parses) and the photo pipeline."""

MAX_DOWNSCALE = 1.5
"""A face whose region covers more than this times the model size S (input pixels) loses detail when
it is restored at S: whole photos leave it as it was (unless --allow-downscale), aligned mode warns."""

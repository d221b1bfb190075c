"""Sparse-Video-R1: a verl extension that trains video VLMs to ask for the frames they need."""

__version__ = "0.1.0"

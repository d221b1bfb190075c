"""Stand-ins for real models and data, and synthetic tasks.

The tiny random Qwen2.5-VL (and stand-ins with the published 3B/7B shapes), generated index videos,
NExT-QA-shaped releases and the needle-in-a-video task, for tests, the demo, benchmarks and GPU smoke runs.
It may import :mod:`sparse_video_r1.env`, :mod:`sparse_video_r1.data`, :mod:`sparse_video_r1.serving` and
:mod:`sparse_video_r1.training`, never tools.
"""

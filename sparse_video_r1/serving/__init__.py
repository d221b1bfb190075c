"""Model servers with verl's ``generate`` contract (token ids in, token ids out).

transformers on CPU, for tests and the demo, and vLLM's ``AsyncLLM``, for evaluation and benchmarks. A server
may import :mod:`sparse_video_r1.env` and :mod:`sparse_video_r1.data`, never training, tools or synthetic.
"""

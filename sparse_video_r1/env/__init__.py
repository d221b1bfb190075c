"""The dialogue environment, the core every other layer builds on.

The protocol (prompt text, tags, the turn parser), the dialogue's settings, frame decoding and the rules of a
turn (``Episode``). It imports no other layer of this package, and none of verl, vLLM, Ray or torch.distributed:
it runs, and is tested, without a trainer or an engine.
"""

"""What verl's trainer runs, and the same agent loop driven outside it.

The agent loop, the reward, cold-start SFT, the ``dialogue/…`` step metrics and the verl hooks that log them,
the dialogue records of training rollouts, and the agent loop outside the trainer (``standalone``: any server;
``cpu_step``: verl's post-generation path on CPU). It may import :mod:`sparse_video_r1.env`,
:mod:`sparse_video_r1.data` and :mod:`sparse_video_r1.serving`, never tools or synthetic.
"""

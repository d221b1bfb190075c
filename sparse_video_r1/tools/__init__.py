"""The user-facing command-line tools, each ``python -m sparse_video_r1.tools.<name>``.

Evaluation and its report, the HTML dialogue viewer, training curves and the CPU demo. The top layer: a tool
may import any other layer of the package.
"""

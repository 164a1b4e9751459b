"""Applications on top of the library rooms: the demo, the benchmarks and the operator's console.

They may import ``sorting.serving`` and ``sorting.training``; the serving package a line installs
never imports them.
"""

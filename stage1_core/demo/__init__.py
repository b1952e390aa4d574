"""The procedural demo data and the pre-training of the demo backbone, with its shipped weights.

``config`` says what to draw, ``sprites`` how things look, ``scenes`` what stands where, ``render`` turns a
scene into frames and their truth, ``writers`` saves them in each source layout (``python -m
stage1_core.demo.writers``), and ``pretrain`` trains the demo backbone on frames drawn in memory. Only the run
config, the commands and the benchmarks import this package."""

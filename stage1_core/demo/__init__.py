"""The procedural demo data (street scenes in each source layout) and the pre-training of the demo backbone,
with its shipped weights. Only the run config, the commands and the benchmarks import it."""

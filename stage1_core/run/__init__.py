"""Run-level plumbing above the whole library: the run config (one section per stage), loading it from YAML,
the run lock, the resource check, reproducibility records and the library's code fingerprint."""

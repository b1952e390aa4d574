"""What every layer shares and nothing of ours is imported by: the manifest schema, metrics with bootstrap
intervals, the report base, the logit map, atomic file writes and the command-line exit-code contract."""

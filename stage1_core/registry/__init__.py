"""The MLflow side: run tracking and lineage, the registered bundles and their aliases, and the promotion gate."""

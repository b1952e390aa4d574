"""Add-batch step: fuse an incoming batch with the training data as a source of its own."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.common.manifest import conform_manifest
from stage1_core.monitoring.drift import as_batch_source


@step
def add_batch(manifest: pd.DataFrame, batch: pd.DataFrame, source_name: str) -> Annotated[pd.DataFrame, "raw_manifest"]:
    """The training manifest plus the batch's rows (ids and groups prefixed with ``source_name``)."""
    fused = conform_manifest(pd.concat([manifest, as_batch_source(batch, source_name)], ignore_index=True))
    log_metadata({"rows": len(fused), "batch_rows": len(batch), "sources": fused["source"].value_counts().to_dict()})
    return fused

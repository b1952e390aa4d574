"""Ingest step: dataset folder -> unified manifest."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.data.ingest import ingest
from stage1_core.data.sources.config import IngestConfig


@step
def ingest_data(config: IngestConfig, data_fingerprint: str) -> Annotated[pd.DataFrame, "raw_manifest"]:
    """Read the source into manifest rows.

    Args:
        config: where the data is and where decoded images go.
        data_fingerprint: hash of the data files; only here so the step cache notices changed data.
    """
    manifest = ingest(config)
    log_metadata(
        {
            "rows": len(manifest),
            "sources": manifest["source"].value_counts().to_dict(),
            "labels": manifest["label"].value_counts().to_dict(),
            "data_fingerprint": data_fingerprint,
        }
    )
    return manifest

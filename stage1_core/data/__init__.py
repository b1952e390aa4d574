"""Data in: source layouts read into the one manifest (``sources``, ``ingest``), Great Expectations validation
with quarantine, leak-proof splits and their contracts, source fusion, and reading manifest images as tensors."""

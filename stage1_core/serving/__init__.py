"""Serving an exported bundle on ONNX Runtime and NumPy alone (no torch, no MLflow: checked by import-linter):
the bundle format, the adaptive multi-view policy and the predictor with the miner's entry point."""

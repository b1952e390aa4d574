"""The serving graphs exported from a trained classifier: ONNX (and TensorRT where CUDA is present), each checked
against the PyTorch model, with the adaptive policy fitted on val_select."""

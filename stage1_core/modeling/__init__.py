"""The model and its training: backbone loading (DINOv2/DINOv3), DoRA/DoRAN adapters, the multi-view
classifier, ExPLoRA continued pre-training, supervised training with Lightning, and batch inference."""

"""Data drift with Evidently: the reference built at training time, new batches compared with it, the verdict."""

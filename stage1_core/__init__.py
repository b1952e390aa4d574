"""The roadwork classifier's library: plain Python, PyTorch and pandas, no ZenML (usable from a notebook or a miner).

Sub-packages, one way down (``pyproject.toml``'s import-linter contracts check it):
``run`` > ``demo`` > ``registry`` > ``evaluation`` | ``export`` | ``monitoring`` >
``modeling`` > ``data`` | ``serving`` > ``common``.
"""

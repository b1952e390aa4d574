"""The roadwork classifier's library: plain Python, PyTorch and pandas, no ZenML (usable from a notebook or a miner).

Sub-packages, one way down (``pyproject.toml``'s import-linter contracts check it):
``run`` > ``demo`` > ``registry`` > ``evaluation`` | ``export`` | ``monitoring`` >
``modeling`` > ``data`` | ``serving`` > ``common``.
"""

import logging

# great_expectations' API-docs registry logs about 200 INFO lines ("Skipping registering function ...") while it is
# imported, whenever the root logger takes INFO (ZenML sets it so on import). That happens before a command can
# configure logging, and in every step pod, so it is silenced here, before stage1_core.data.validation imports it.
logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)

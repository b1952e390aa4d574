"""Per-model artifact names: the main model's outputs keep their plain names, an ablation's get its suffix.

The steps that train and calibrate a model name their outputs ``classifier{model_variant}``... (ZenML name
substitutions). The main invocation substitutes nothing; :func:`ablation_variant` gives an ablation's invocation
its suffix. A ZenML model version links every artifact of its run by name, so without this the ablations'
``classifier`` would shadow the main one in ``model_version.get_model_artifact("classifier")``.
"""

from __future__ import annotations

VARIANT_KEY = "model_variant"
MODEL_VARIANT = "{" + VARIANT_KEY + "}"
MAIN_MODEL = {VARIANT_KEY: ""}


def ablation_variant(slug: str) -> dict[str, str]:
    """The substitutions of an ablation's steps: ``classifier_<slug>``, ``calibration_policy_<slug>``..."""
    return {VARIANT_KEY: f"_{slug}"}

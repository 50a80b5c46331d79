"""Pretraining objectives, each its own module: head, loss, config and the batch fields it reads.

Every objective returns an :class:`ObjectiveOutput` — its loss and the figures to log
under its own name — and :class:`~vilalign.train.tasks.PretrainingTask` combines any
subset with configurable weights. The original work found that one term (the contrastive
one) can swamp the others, so every term is logged separately, weighted and unweighted.

The registry below is what ``ObjectivesConfig`` (the ``objectives:`` section of a run
file), the pretraining task and the experiment grids read. Adding an objective: a module
with an :class:`Objective` subclass, and its class in the tuple below.
"""

from vilalign.train.objectives.ap import AlignmentHead, AlignmentPrediction, ApConfig
from vilalign.train.objectives.base import (
    OBJECTIVES,
    ModelRows,
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    PretrainingViews,
    default_weights,
    objective_type,
    objectives_config_class,
    register_objective,
    unregister_objective,
    zero_loss,
)
from vilalign.train.objectives.itc import (
    ImageTextContrastive,
    ItcConfig,
    info_nce,
    symmetric_info_nce,
)
from vilalign.train.objectives.mim import ContrastiveMIM, MimConfig, MimProjection
from vilalign.train.objectives.mlm import MaskedLanguageModelling, MlmConfig, MlmHead

# The order is the YAML's, the logs' and the order the heads are created in (so the order
# their parameters are initialised: changing it changes every seeded pretraining run).
for _objective in (
    MaskedLanguageModelling,
    ContrastiveMIM,
    AlignmentPrediction,
    ImageTextContrastive,
):
    register_objective(_objective)

__all__ = [
    "OBJECTIVES",
    "AlignmentHead",
    "AlignmentPrediction",
    "ApConfig",
    "ContrastiveMIM",
    "ImageTextContrastive",
    "ItcConfig",
    "MaskedLanguageModelling",
    "MimConfig",
    "MimProjection",
    "MlmConfig",
    "MlmHead",
    "ModelRows",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "PretrainingViews",
    "default_weights",
    "info_nce",
    "objective_type",
    "objectives_config_class",
    "register_objective",
    "symmetric_info_nce",
    "unregister_objective",
    "zero_loss",
]

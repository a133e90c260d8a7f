"""Defenses stage: in-training defenses against EM as plug-ins behind one small interface.

Every module of this package is imported here, and each registers its defense on import, so adding a
defense is adding one file (see :mod:`spillover.defenses._base` for how to write one).
"""

import importlib
import pkgutil

from spillover.defenses._base import (
    NEEDS,
    SOURCE_COLUMN,
    TASK_SOURCE,
    Defense,
    DefenseRef,
    SFTMix,
    TrainContext,
    build_defenses,
    get_defense,
    list_defenses,
    register_defense,
)
from spillover.defenses._batch import DefenseBatch, masked_mean

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["NEEDS", "SOURCE_COLUMN", "TASK_SOURCE", "Defense", "DefenseBatch", "DefenseRef", "SFTMix", "TrainContext",
           "build_defenses", "get_defense", "list_defenses", "masked_mean", "register_defense"]

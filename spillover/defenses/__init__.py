"""Defenses stage: in-training defenses against EM as plug-ins behind one small interface."""

from spillover.defenses._base import (
    Defense,
    DefenseRef,
    TrainContext,
    build_defenses,
    get_defense,
    list_defenses,
    register_defense,
)

__all__ = ["Defense", "DefenseRef", "TrainContext", "build_defenses", "get_defense", "list_defenses", "register_defense"]

"""spillover: a toolkit for emergent-misalignment (EM) research.

Stages live one per sub-package, imports flow one way:
``cli -> experiment -> {train, evaluate, report} -> {defenses, rewards, judge} -> {models, data}``.
"""

__version__ = "0.1.0"

"""Registered public datasets, one module per source (importing a module registers its entries)."""

from spillover.data.sources import aesthetic_em, betley, ema_rl, emergent_plus, foqa, reward_hacks, wildguard

__all__ = ["aesthetic_em", "betley", "ema_rl", "emergent_plus", "foqa", "reward_hacks", "wildguard"]

"""Probe-set keys name folders and files: they must be folder-safe for every kind of reference."""

import re

from spillover.evaluate.run import probe_key


def test_bundled_key_is_the_name():
    assert probe_key("bundled:probe_general") == "probe_general"


def test_hub_and_odd_paths_give_folder_safe_distinct_keys():
    refs = ["hub:emergent_plus_legal_pairs", "hub:emergent_plus_medical_pairs", "data/my pairs?.jsonl",
            "/abs/dir/pairs.jsonl", "other/pairs.jsonl"]
    keys = [probe_key(r) for r in refs]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", k) for k in keys), keys
    assert len(set(keys)) == len(keys)
    assert keys[0].startswith("hub_emergent_plus_legal_pairs-")
    assert probe_key("/abs/dir/pairs.jsonl").startswith("pairs-")

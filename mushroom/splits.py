"""Group-aware, species-stratified train/val/test splits.

Photos of one group (an iNaturalist observation, or one day's burst of photos in an imported
folder) always land in the same split, so near-duplicates never inflate validation or test
scores. Each species is split on its own, so every split sees every species it can.
"""
from __future__ import annotations

import random
from collections import defaultdict

from mushroom.manifest import SPLITS

GroupKey = tuple[str, str]  # (species, group)


def assign_splits(group_sizes: dict[GroupKey, int], fractions: dict[str, float], seed: int,
                  fixed: dict[GroupKey, str] | None = None) -> dict[GroupKey, str]:
    """Map each (species, group) to a split.

    Within a species, groups are taken in a seeded random order and each goes to the split whose
    photo count lags its target (fraction x photos of the species) the most. Groups in `fixed`
    (already on disk from an earlier run) keep their split and count towards the targets, so a
    rerun that adds photos never moves one. A species with at least three groups gets at least
    one group in each split with a non-zero fraction.
    """
    fixed = dict(fixed or {})
    by_species: dict[str, list[str]] = defaultdict(list)
    for species, group in group_sizes:
        by_species[species].append(group)
    out: dict[GroupKey, str] = {}
    for species in sorted(by_species):
        groups = sorted(by_species[species])
        rng = random.Random(f"{seed}:{species}")
        rng.shuffle(groups)
        total = sum(group_sizes[(species, g)] for g in groups)
        target = {s: fractions[s] * total for s in SPLITS}
        have = {s: 0 for s in SPLITS}
        members: dict[str, list[str]] = {s: [] for s in SPLITS}
        free = []
        for g in groups:
            split = fixed.get((species, g))
            if split:
                have[split] += group_sizes[(species, g)]
                members[split].append(g)
                out[(species, g)] = split
            else:
                free.append(g)
        for g in free:
            split = max(SPLITS, key=lambda s: (target[s] - have[s], fractions[s]))
            have[split] += group_sizes[(species, g)]
            members[split].append(g)
            out[(species, g)] = split
        if len(groups) >= 3:
            for s in SPLITS:
                if members[s] or fractions[s] <= 0:
                    continue
                # Take the smallest movable group from the split with the most groups.
                donor = max(SPLITS, key=lambda d: len([g for g in members[d] if (species, g) not in fixed]))
                movable = [g for g in members[donor] if (species, g) not in fixed]
                if len(members[donor]) < 2 or not movable:
                    continue
                g = min(movable, key=lambda x: (group_sizes[(species, x)], x))
                members[donor].remove(g)
                members[s].append(g)
                out[(species, g)] = s
    return out

"""Blocking: only records that share at least one blocking key are compared, so candidate generation grows with
the size of the blocks, not with the square of the data.

Several rules, each tolerant of different noise, so that a true pair is missed only when it is noisy in every
one of them at once:

- `postcode_initials`: postcode + the two name initials, sorted (survives swapped names, a moved date of birth);
- `dob`: the full date of birth (survives a moved address, a misspelt or changed surname);
- `names`: the Soundex codes of both names, sorted (survives typos, swapped names, a move, a wrong date);
- `phone`: the phone digits, when given.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.identity.matching.traits import PersonTraits, soundex

RULES = ("postcode_initials", "dob", "names", "phone")
#: Blocks larger than this are skipped in batch mode (a placeholder value shared by thousands proves nothing and
#: would make candidate generation quadratic); their records are still reached through the other rules.
MAX_BLOCK = 1_000


def blocking_keys(record: PersonTraits) -> dict[str, str]:
    """Rule -> key for each rule the record has the fields for (a key is '' when it cannot be formed)."""
    initials = "".join(sorted(name[0] for name in (record.given_name, record.surname) if name))
    codes = sorted(code for code in (soundex(record.given_name), soundex(record.surname)) if code)
    return {
        "postcode_initials": f"{record.postcode}|{initials}" if record.postcode and initials else "",
        "dob": record.date_of_birth,
        "names": "|".join(codes) if len(codes) == 2 else "",
        "phone": record.phone if len(record.phone) >= 7 else "",
    }


def pairs_by_rule(
    records: Sequence[PersonTraits], *, max_block: int = MAX_BLOCK, skipped: list[str] | None = None
) -> dict[str, set[int]]:
    """Per rule, every pair (i < j) sharing that rule's key, encoded as i * len(records) + j (ints: a set of a few
    million stays small). Oversized blocks are skipped and named in `skipped`."""
    n = len(records)
    keys = [blocking_keys(record) for record in records]
    found: dict[str, set[int]] = {}
    for rule in RULES:
        pairs: set[int] = set()
        blocks: dict[str, list[int]] = {}
        for index, record_keys in enumerate(keys):
            key = record_keys[rule]
            if key:
                blocks.setdefault(key, []).append(index)
        for members in blocks.values():
            if len(members) < 2:
                continue
            if len(members) > max_block:
                if skipped is not None:
                    skipped.append(f"{rule}:{len(members)}")
                continue
            for position, i in enumerate(members):
                base = i * n
                # Members are in index order, so i < j.
                pairs.update(base + j for j in members[position + 1 :])
        found[rule] = pairs
    return found


def candidate_pairs(
    records: Sequence[PersonTraits], *, max_block: int = MAX_BLOCK, skipped: list[str] | None = None
) -> set[int]:
    """The union of every rule's pairs."""
    union: set[int] = set()
    for pairs in pairs_by_rule(records, max_block=max_block, skipped=skipped).values():
        union |= pairs
    return union

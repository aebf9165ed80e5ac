"""Per-field comparison levels: how closely two trait records agree on each field.

Every field has ordered levels, the first the strongest agreement and the last full disagreement; a field missing
on either side is `MISSING` and carries no evidence either way (its weight is 0). The levels are what the
Fellegi–Sunter model learns m and u probabilities for, so they only need to separate situations with different
evidential value, not measure distance precisely.
"""

from __future__ import annotations

from dataclasses import dataclass

from rapidfuzz.distance import OSA, JaroWinkler

from services.identity.matching.traits import NAME_ROOTS, NICKNAMES, PersonTraits, same_person_name

MISSING = -1


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A compared field: its name and the labels of its levels, strongest agreement first."""

    name: str
    levels: tuple[str, ...]
    #: Term-frequency adjustment applies to the exact level of this field (common values prove less).
    term_frequency: bool = False

    @property
    def disagree(self) -> int:
        return len(self.levels) - 1


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("given_name", ("exact", "nickname", "close", "similar", "different"), True),
    FieldSpec("surname", ("exact", "close", "similar", "different"), True),
    FieldSpec("date_of_birth", ("exact", "swap_or_one_digit", "two_digits", "same_year", "different")),
    # One composite comparison for the address: its parts agree together (a household, a neighbour), so scoring
    # street number, street, postcode, city and state as independent evidence would count one fact five times.
    FieldSpec("address", ("same_address", "same_street", "same_postcode", "same_city", "different")),
    FieldSpec("phone", ("exact", "one_edit", "different")),
)
FIELD_INDEX = {spec.name: i for i, spec in enumerate(FIELDS)}
#: Contradictions no amount of shared contact data outweighs: a totally different given name, or a totally
#: different date of birth. Households share surname, address and often the phone, which together would
#: otherwise out-score the disagreement (the fields are not independent among relatives, the model assumes they
#: are); parent and child of the same name, and twins, are the cases this rule exists for.
VETOES: tuple[tuple[int, int], ...] = (
    (FIELD_INDEX["given_name"], FIELDS[FIELD_INDEX["given_name"]].disagree),
    (FIELD_INDEX["date_of_birth"], FIELDS[FIELD_INDEX["date_of_birth"]].disagree),
)


#: ...and a link needs at least one personal field that agrees (given name at most "similar", date of birth at most
#: "two_digits"): surname, address and phone alone describe a household, not a person.
PERSONAL: tuple[tuple[int, int], ...] = ((FIELD_INDEX["given_name"], 3), (FIELD_INDEX["date_of_birth"], 2))


def vetoed(pattern: Pattern) -> bool:
    if any(pattern[index] == level for index, level in VETOES):
        return True
    return not any(0 <= pattern[index] <= worst for index, worst in PERSONAL)

Pattern = tuple[int, ...]

_jw = JaroWinkler.normalized_similarity
_osa = OSA.distance


def _name_level(a: str, b: str) -> int:
    """0 close (Jaro–Winkler >= 0.92 or one edit), 1 similar (>= 0.80 or two edits), 2 different. Edit
    distance rescues short names, where one slip costs Jaro–Winkler a lot ('ann' / 'anm')."""
    similarity = _jw(a, b)
    if similarity >= 0.92:
        return 0
    distance = _osa(a, b, score_cutoff=2)
    if distance <= 1:
        return 0
    return 1 if similarity >= 0.80 or distance <= 2 else 2


def nickname_of(a: str, b: str) -> bool:
    """True when a is a nickname (or the formal form) of b, allowing one slip in a: 'jimy' ~ 'james'."""
    if same_person_name(a, b):
        return True
    for formal in NAME_ROOTS.get(b, ()):
        for alias in (formal, *NICKNAMES[formal]):
            if alias != b and len(alias) >= 3 and (_jw(a, alias) >= 0.92 or _osa(a, alias, score_cutoff=1) <= 1):
                return True
    return False


def compare_given(a: str, b: str) -> int:
    if not a or not b:
        return MISSING
    if a == b:
        return 0
    if nickname_of(a, b) or nickname_of(b, a):
        return 1
    return 2 + _name_level(a, b)


def compare_surname(a: str, b: str) -> int:
    if not a or not b:
        return MISSING
    if a == b:
        return 0
    return 1 + _name_level(a, b)


def compare_date(a: str, b: str) -> int:
    """YYYYMMDD strings: exact; day and month swapped, or one digit wrong or two adjacent digits transposed;
    two such slips; the same year; different."""
    if not a or not b:
        return MISSING
    if a == b:
        return 0
    if a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]:
        return 1
    distance = _osa(a, b, score_cutoff=2)
    if distance <= 2:
        return distance
    return 3 if a[:4] == b[:4] else 4


def _close(a: str, b: str, threshold: float = 0.90) -> bool:
    return a == b or _jw(a, b) >= threshold


def _one_edit(a: str, b: str) -> bool:
    return a == b or _osa(a, b) <= 1


def compare_address(a: PersonTraits, b: PersonTraits) -> int:
    """Same address (number, street and area agree); same street, other number; same postcode; same city;
    different. Area = postcode within one edit, else the city (and state when both have one). MISSING when
    either side has neither street, postcode nor city."""
    if not (a.address_line or a.postcode or a.city) or not (b.address_line or b.postcode or b.city):
        return MISSING
    same_postcode = bool(a.postcode and b.postcode) and _one_edit(a.postcode, b.postcode)
    same_city = (
        bool(a.city and b.city)
        and _close(a.city, b.city)
        and (not a.state or not b.state or a.state == b.state)
    )
    postcodes_differ = bool(a.postcode and b.postcode) and not same_postcode
    same_area = same_postcode or (same_city and not postcodes_differ)
    if same_area and a.address_line and b.address_line and _close(a.address_line, b.address_line):
        return 0 if a.street_number and a.street_number == b.street_number else 1
    if same_postcode:
        return 2
    return 3 if same_city else 4


def compare_one_edit(a: str, b: str) -> int:
    """Codes and numbers: exact; one digit wrong or two adjacent transposed; different."""
    if not a or not b:
        return MISSING
    if a == b:
        return 0
    return 1 if _osa(a, b) <= 1 else 2


def _name_similarity(a: str, b: str) -> float:
    if not a or not b:
        return 0.0
    return 1.0 if a == b or same_person_name(a, b) else _jw(a, b)


def names_swapped(a: PersonTraits, b: PersonTraits) -> bool:
    """True when b's given name and surname fit a's the other way round clearly better (a form filled in the
    wrong boxes, possibly with one of them left empty)."""
    if not ((a.given_name or a.surname) and (b.given_name or b.surname)):
        return False
    straight = _name_similarity(a.given_name, b.given_name) + _name_similarity(a.surname, b.surname)
    cross_given = _name_similarity(a.given_name, b.surname)
    cross_surname = _name_similarity(a.surname, b.given_name)
    return cross_given + cross_surname > straight + 0.2 and max(cross_given, cross_surname) >= 0.9


def compare(a: PersonTraits, b: PersonTraits) -> Pattern:
    """The comparison pattern of two records: one level (or MISSING) per field of `FIELDS`."""
    b_given, b_surname = (b.surname, b.given_name) if names_swapped(a, b) else (b.given_name, b.surname)
    return (
        compare_given(a.given_name, b_given),
        compare_surname(a.surname, b_surname),
        compare_date(a.date_of_birth, b.date_of_birth),
        compare_address(a, b),
        compare_one_edit(a.phone, b.phone),
    )


def exact_values(a: PersonTraits, pattern: Pattern) -> tuple[str | None, ...]:
    """For each term-frequency field agreeing exactly, the shared value (for its frequency); else None."""
    return tuple(
        getattr(a, spec.name) if spec.term_frequency and level == 0 else None
        for spec, level in zip(FIELDS, pattern, strict=True)
    )

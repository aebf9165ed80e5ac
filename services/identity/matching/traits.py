"""Person traits: the record probabilistic matching compares, how raw values are normalised, nickname and
phonetic keys.

Normalisation is deliberately lossy in the ways that do not change who a person is: case, accents, punctuation,
repeated spaces, common street-type spellings ("Street" = "St"). Everything else (typos, nicknames, swapped names,
transposed digits) is left for the comparators to score, so that the model, not the normaliser, decides.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, fields

#: Trait fields in the order the contract, the CSV mapping and the model list them.
TRAIT_FIELDS = (
    "given_name",
    "surname",
    "date_of_birth",
    "street_number",
    "address_line",
    "city",
    "postcode",
    "state",
    "phone",
)


@dataclass(frozen=True, slots=True)
class PersonTraits:
    """One person-trait record, normalised; an empty string means the value is missing.

    `date_of_birth` is the 8 digits YYYYMMDD; `phone` is digits only (it is compared as a trait, noisy digits
    included, and never used here as an exact identifier: that is the deterministic path's job).
    """

    given_name: str = ""
    surname: str = ""
    date_of_birth: str = ""
    street_number: str = ""
    address_line: str = ""
    city: str = ""
    postcode: str = ""
    state: str = ""
    phone: str = ""

    def present(self) -> int:
        """How many fields carry a value."""
        return sum(1 for f in fields(self) if getattr(self, f.name))


class TraitError(ValueError):
    """A trait value that cannot be read; `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


_SPACES = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[^0-9a-z ]+")
_NOT_DIGIT = re.compile(r"[^0-9]+")
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
#: Street-type and direction spellings reduced to one form (USPS-style abbreviations).
_STREET_WORDS = {
    "street": "st",
    "str": "st",
    "road": "rd",
    "avenue": "ave",
    "av": "ave",
    "drive": "dr",
    "lane": "ln",
    "court": "ct",
    "place": "pl",
    "boulevard": "blvd",
    "terrace": "tce",
    "crescent": "cres",
    "highway": "hwy",
    "parade": "pde",
    "north": "n",
    "south": "s",
    "east": "e",
    "west": "w",
    "apartment": "apt",
    "unit": "apt",
}
MAX_TRAIT_LENGTH = 128


def clean_text(value: str) -> str:
    """Case-folded ASCII words separated by single spaces: 'Zoë  O'Brien-Smith' -> 'zoe obriensmith'."""
    decomposed = unicodedata.normalize("NFKD", value)
    ascii_only = decomposed.encode("ascii", "ignore").decode().lower()
    # Apostrophes and hyphens join name parts ("o'brien" = "obrien"); other punctuation separates words.
    ascii_only = ascii_only.replace("'", "").replace("-", "")
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", ascii_only)).strip()


def clean_address(value: str) -> str:
    return " ".join(_STREET_WORDS.get(word, word) for word in clean_text(value).split())


def clean_date(value: str) -> str:
    """YYYY-MM-DD (or YYYYMMDD) to 'YYYYMMDD'; month 1-12 and day 1-31 are checked, not the calendar (a typed
    '1987-02-30' still carries evidence)."""
    value = value.strip()
    if not value:
        return ""
    match = _DATE.fullmatch(value)
    if not match:
        raise ValueError("must be a date written YYYY-MM-DD")
    year, month, day = (int(part) for part in match.groups())
    if not (1 <= month <= 12 and 1 <= day <= 31 and 1850 <= year <= 2200):
        raise ValueError("must be a date written YYYY-MM-DD with a real month and day")
    return "".join(match.groups())


def normalise(raw: dict[str, str]) -> PersonTraits:
    """Raw trait strings (keys from TRAIT_FIELDS; others ignored) to a `PersonTraits`; `TraitError` names the bad
    field."""
    values: dict[str, str] = {}
    for name in TRAIT_FIELDS:
        value = (raw.get(name) or "").strip()
        if len(value) > MAX_TRAIT_LENGTH:
            raise TraitError(name, f"at most {MAX_TRAIT_LENGTH} characters")
        if not value:
            values[name] = ""
            continue
        if name == "date_of_birth":
            try:
                values[name] = clean_date(value)
            except ValueError as exc:
                raise TraitError(name, str(exc)) from None
        elif name in ("street_number", "postcode"):
            values[name] = clean_text(value).replace(" ", "")
        elif name == "phone":
            digits = _NOT_DIGIT.sub("", value)
            values[name] = digits[-10:]  # national significant part: "+1 415..." and "415..." agree
        elif name == "address_line":
            values[name] = clean_address(value)
        else:
            values[name] = clean_text(value)
    return PersonTraits(**values)


# --- nicknames ---------------------------------------------------------------------------------------------------

#: Formal given name -> common nicknames (English-speaking markets). Both directions count as the same name.
NICKNAMES: dict[str, tuple[str, ...]] = {
    "william": ("bill", "will", "billy", "liam"),
    "robert": ("bob", "rob", "bobby", "robbie"),
    "richard": ("rick", "dick", "rich", "ricky"),
    "james": ("jim", "jimmy", "jamie"),
    "john": ("jack", "johnny"),
    "michael": ("mike", "mick", "mikey"),
    "elizabeth": ("liz", "beth", "lizzie", "betty", "eliza"),
    "margaret": ("maggie", "peggy", "meg"),
    "katherine": ("kate", "kathy", "katie", "kat"),
    "catherine": ("cathy", "cate", "cat"),
    "jennifer": ("jen", "jenny"),
    "thomas": ("tom", "tommy"),
    "christopher": ("chris",),
    "christine": ("chris", "chrissy"),
    "daniel": ("dan", "danny"),
    "matthew": ("matt",),
    "anthony": ("tony",),
    "joseph": ("joe", "joey"),
    "charles": ("charlie", "chuck"),
    "edward": ("ed", "eddie", "ted", "ned"),
    "patricia": ("pat", "patty", "trish"),
    "patrick": ("pat", "paddy"),
    "alexander": ("alex", "xander"),
    "alexandra": ("alex", "sandra", "lexi"),
    "benjamin": ("ben", "benny"),
    "samuel": ("sam", "sammy"),
    "samantha": ("sam", "sammy"),
    "nicholas": ("nick", "nicky"),
    "jonathan": ("jon", "jonny"),
    "andrew": ("andy", "drew"),
    "stephen": ("steve",),
    "steven": ("steve",),
    "timothy": ("tim", "timmy"),
    "susan": ("sue", "susie"),
    "deborah": ("deb", "debbie"),
    "rebecca": ("becky", "becca"),
    "victoria": ("vicky", "tori"),
    "jessica": ("jess", "jessie"),
    "joshua": ("josh",),
    "zachary": ("zach", "zack"),
    "gregory": ("greg",),
    "kimberly": ("kim",),
    "pamela": ("pam",),
    "barbara": ("barb", "babs"),
    "dorothy": ("dot", "dottie"),
    "frederick": ("fred", "freddie"),
    "henry": ("harry", "hank"),
    "lawrence": ("larry",),
    "ronald": ("ron", "ronnie"),
    "donald": ("don", "donnie"),
    "kenneth": ("ken", "kenny"),
    "raymond": ("ray",),
    "gerald": ("gerry", "jerry"),
    "peter": ("pete",),
    "abigail": ("abby",),
    "olivia": ("liv", "livvy"),
    "isabella": ("bella", "izzy"),
    "madison": ("maddie",),
    "emily": ("em", "emmy"),
    "amanda": ("mandy",),
    "nathaniel": ("nate", "nat"),
    "natalie": ("nat",),
    "theodore": ("theo", "ted"),
    "vincent": ("vince", "vinny"),
}


def _nickname_groups() -> dict[str, frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for formal, nicks in NICKNAMES.items():
        for name in (formal, *nicks):
            groups.setdefault(name, set()).add(formal)
    return {name: frozenset(formals) for name, formals in groups.items()}


#: A name -> the formal names it can stand for (a formal name stands for itself).
NAME_ROOTS: dict[str, frozenset[str]] = _nickname_groups()


def same_person_name(a: str, b: str) -> bool:
    """True when the two given names are one formal name and its nickname (or two nicknames of it)."""
    roots_a = NAME_ROOTS.get(a)
    roots_b = NAME_ROOTS.get(b)
    return bool(roots_a and roots_b and roots_a & roots_b)


# --- phonetic key ------------------------------------------------------------------------------------------------

_SOUNDEX_CODES = {
    **dict.fromkeys("bfpv", "1"),
    **dict.fromkeys("cgjkqsxz", "2"),
    **dict.fromkeys("dt", "3"),
    "l": "4",
    **dict.fromkeys("mn", "5"),
    "r": "6",
}


def soundex(name: str) -> str:
    """American Soundex (letter + 3 digits) of a cleaned name; '' for no letters. Typo-tolerant blocking key."""
    letters = [c for c in name if "a" <= c <= "z"]
    if not letters:
        return ""
    code = [letters[0].upper()]
    previous = _SOUNDEX_CODES.get(letters[0], "")
    for letter in letters[1:]:
        digit = _SOUNDEX_CODES.get(letter, "")
        if digit and digit != previous:
            code.append(digit)
            if len(code) == 4:
                break
        if letter not in "hw":  # h and w do not separate equal codes; vowels do
            previous = digit
    return "".join(code).ljust(4, "0")

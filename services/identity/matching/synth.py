"""A deterministic generator of noisy person records with a true-entity column, to measure linkage against.

People live in households (shared surname, address and sometimes the family phone), have Zipf-distributed common
names plus a long tail of rarer surnames, and appear 1-4 times. Every record is a noisy copy of its person:
typos, nicknames, given name and surname swapped, missing fields, day and month swapped or adjacent digits
transposed in the date of birth, transposed digits in postcodes and phones, spelling variants of street types,
and addresses the person has moved from. There is deliberately no near-unique national id field.

`generate(n, seed)` always returns the same records for the same arguments.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import accumulate
from pathlib import Path

from services.identity.matching.traits import NICKNAMES, TRAIT_FIELDS, clean_date

COLUMNS = ("record_id", "entity_id", *TRAIT_FIELDS)

_GIVEN = (
    "James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard Susan Joseph "
    "Jessica Thomas Sarah Charles Karen Christopher Nancy Daniel Lisa Matthew Margaret Anthony Betty Mark Sandra "
    "Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua Michelle Kenneth Dorothy Kevin Carol Brian "
    "Amanda George Melissa Timothy Deborah Ronald Stephanie Edward Rebecca Jason Sharon Jeffrey Laura Ryan Cynthia "
    "Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen Brenda Larry Pamela Justin Emma "
    "Scott Nicole Brandon Helen Benjamin Samantha Samuel Katherine Gregory Christine Alexander Debra Frank Rachel "
    "Patrick Carolyn Raymond Janet Jack Catherine Dennis Maria Jerry Heather Tyler Diane Aaron Ruth Jose Julie "
    "Adam Olivia Nathan Joyce Henry Virginia Douglas Victoria Zachary Kelly Peter Lauren Kyle Christina Ethan Joan "
    "Walter Evelyn Noah Judith Jeremy Megan Christian Andrea Keith Cheryl Roger Hannah Terry Jacqueline Gerald "
    "Martha Harold Gloria Sean Teresa Austin Ann Carl Sara Arthur Madison Lawrence Frances Dylan Kathryn Jesse "
    "Janice Jordan Jean Bryan Abigail Billy Alice Joe Judy Bruce Sophia Gabriel Grace Logan Denise Albert Amber "
    "Willie Doris Alan Marilyn Juan Danielle Wayne Beverly Elijah Isabella Randy Theresa Roy Diana Vincent Natalie "
    "Ralph Brittany Eugene Charlotte Russell Marie Bobby Kayla Mason Alexis Philip Lori Louis Alexandra Theodore "
    "Frederick Nathaniel Rebecca Dorothy Priya Wei Mohammed Aisha Hiroshi Yuki Mateo Sofia Lucas Chloe Omar Leila"
).split()

_SURNAMES = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
    "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis "
    "Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera "
    "Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart "
    "Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim "
    "Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo "
    "Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell Coleman Butler "
    "Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson Alexander Hamilton Graham Reynolds "
    "Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar Stevens Murray Ford "
    "Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman "
    "Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon "
    "Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice "
    "Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant Dunn Kelley Spencer "
    "Hawkins Arnold Pierce Vazquez Hansen Peters Santos Hart Bradley Knight Elliott Cunningham Duncan Armstrong "
    "Hudson Carroll Lane Riley Andrews Alvarado Ray Delgado Berry Perkins Hoffman Johnston Matthews Pena Richards "
    "O'Brien McAllister Kowalski Nakamura Okafor Lindqvist Abernathy"
).split()

_STREETS = (
    "Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Walnut Spring North Ridge Church Willow Mill Sunset "
    "Railroad Jackson Cherry Highland Lincoln Forest Meadow River Center Madison Chestnut Franklin Adams Jefferson "
    "Valley Dogwood Hickory Sycamore Birch Laurel Magnolia Poplar Johnson Wilson Lakeview Prospect Locust Union "
    "Grove Summit Orchard Mulberry Hillcrest Woodland Fairview Harbor Victoria Albert Queen King George Bridge"
).split()
_STREET_TYPES = (("Street", "St"), ("Road", "Rd"), ("Avenue", "Ave"), ("Drive", "Dr"), ("Lane", "Ln"),
                 ("Court", "Ct"), ("Place", "Pl"), ("Boulevard", "Blvd"), ("Terrace", "Tce"))
_STATES = ("CA", "TX", "FL", "NY", "PA", "IL", "OH", "GA", "NC", "MI", "NJ", "VA", "WA", "AZ", "MA", "TN")
_SYLLABLES = ("ba be bi bo ka ke ki ko ra re ri ro sa se si so ta te ti to la le li lo ma me mi mo na ne ni no "
              "va ve vi vo da de di do ga ge go za ze zo han berg ton ley son ner ski wicz ard ell ott ing").split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Person:
    """The true values of one person."""

    entity_id: str
    given_name: str
    surname: str
    date_of_birth: date
    address: tuple[str, str, str, str, str]  # street number, street line, city, postcode, state
    phone: str


def _zipf_weights(n: int, exponent: float = 1.0) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, n + 1)]


class _World:
    """Towns, streets and names to draw people from."""

    def __init__(self, rng: random.Random, people: int) -> None:
        self.rng = rng
        towns = max(50, people // 300)
        self.towns = []
        for _ in range(towns):
            name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
            name += rng.choice(("", "", " Springs", "ville", " Falls", "ton", " Heights", " Park"))
            state = rng.choice(_STATES)
            postcodes = [f"{rng.randint(10000, 99999):05d}" for _ in range(rng.randint(1, 4))]
            self.towns.append((name, state, postcodes))
        # Cumulative weights, computed once: `choices` would otherwise re-add them on every draw.
        self.town_weights = list(accumulate(_zipf_weights(towns, 0.6)))
        # A long tail of rarer surnames after the common ones: most real surnames are rare.
        tail = sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
                       for _ in range(max(2000, people // 3))})
        self.surnames = _SURNAMES + tail
        self.surname_weights = list(accumulate(_zipf_weights(len(_SURNAMES), 0.9) + [0.004] * len(tail)))
        self.given_weights = list(accumulate(_zipf_weights(len(_GIVEN), 0.7)))

    def address(self) -> tuple[str, str, str, str, str]:
        rng = self.rng
        name, state, postcodes = rng.choices(self.towns, cum_weights=self.town_weights)[0]
        street = f"{rng.choice(_STREETS)} {rng.choice(_STREET_TYPES)[0]}"
        return (str(rng.randint(1, 2999)), street, name, rng.choice(postcodes), state)

    def given(self) -> str:
        return self.rng.choices(_GIVEN, cum_weights=self.given_weights)[0]

    def surname(self) -> str:
        return self.rng.choices(self.surnames, cum_weights=self.surname_weights)[0]

    def phone(self) -> str:
        rng = self.rng
        return f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"

    def birthday(self) -> date:
        return date(1940, 1, 1) + timedelta(days=self.rng.randint(0, 365 * 66))


def people(count: int, rng: random.Random, world: _World) -> list[Person]:
    """`count` people in households: some share a surname, an address and the family phone."""
    found: list[Person] = []
    while len(found) < count:
        surname = world.surname()
        address = world.address()
        family_phone = world.phone()
        size = rng.choices((1, 2, 3, 4), (0.55, 0.25, 0.12, 0.08))[0]
        twins_birthday = world.birthday() if size >= 2 and rng.random() < 0.015 else None
        for member in range(size):
            if len(found) >= count:
                break
            birthday = twins_birthday if twins_birthday and member < 2 else world.birthday()
            phone = family_phone if member and rng.random() < 0.4 else world.phone()
            found.append(Person(f"e{len(found):07d}", world.given(), surname, birthday, address, phone))
    return found


# --- noise ------------------------------------------------------------------------------------------------------


def typo(value: str, rng: random.Random) -> str:
    """One keyboard slip: a letter dropped, doubled, replaced, or two adjacent ones swapped."""
    if len(value) < 3:
        return value
    i = rng.randint(1, len(value) - 2)  # first letters are mistyped less often
    kind = rng.random()
    if kind < 0.25:
        return value[:i] + value[i + 1 :]
    if kind < 0.5:
        return value[:i] + value[i] + value[i:]
    if kind < 0.75:
        return value[:i] + rng.choice(_LETTERS) + value[i + 1 :]
    return value[:i] + value[i + 1] + value[i] + value[i + 2 :]


def transpose_digits(value: str, rng: random.Random) -> str:
    positions = [i for i in range(len(value) - 1) if value[i].isdigit() and value[i + 1].isdigit()
                 and value[i] != value[i + 1]]
    if not positions:
        return value
    i = rng.choice(positions)
    return value[:i] + value[i + 1] + value[i] + value[i + 2 :]


def _nickname(given: str, rng: random.Random) -> str:
    nicks = NICKNAMES.get(given.lower())
    return rng.choice(nicks).capitalize() if nicks else given


def _readable(text: str) -> bool:
    try:
        clean_date(text)
    except ValueError:
        return False
    return True


def _noisy_date(born: date, rng: random.Random) -> str:
    text = born.isoformat()
    roll = rng.random()
    if roll < 0.03 and born.day <= 12 and born.day != born.month:
        return f"{born.year:04d}-{born.day:02d}-{born.month:02d}"
    if roll < 0.06:
        for _ in range(5):  # a transposition that still reads as a date a form would accept
            candidate = transpose_digits(text, rng)
            if _readable(candidate):
                return candidate
    if roll < 0.08:
        i = rng.choice((2, 3, 8, 9))
        digit = str(rng.randint(0, 9))
        candidate = text[:i] + digit + text[i + 1 :]
        if _readable(candidate):
            return candidate
    return text


def _street_line(street: str, rng: random.Random) -> str:
    name, kind = street.rsplit(" ", 1)
    for full, short in _STREET_TYPES:
        if kind == full and rng.random() < 0.35:
            kind = short
    line = f"{name} {kind}"
    return typo(line, rng) if rng.random() < 0.05 else line


def noisy_record(person: Person, record_id: str, moved_to: tuple | None, rng: random.Random) -> dict[str, str]:
    given = person.given_name
    if rng.random() < 0.08:
        given = _nickname(given, rng)
    if rng.random() < 0.07:
        given = typo(given, rng)
    surname = typo(person.surname, rng) if rng.random() < 0.06 else person.surname
    if rng.random() < 0.02:
        given, surname = surname, given
    number, street, city, postcode, state = moved_to or person.address
    if rng.random() < 0.03:
        postcode = transpose_digits(postcode, rng)
    if rng.random() < 0.03:
        city = typo(city, rng)
    phone = person.phone
    if rng.random() < 0.03:
        phone = transpose_digits(phone, rng)
    record = {
        "record_id": record_id,
        "entity_id": person.entity_id,
        "given_name": given,
        "surname": surname,
        "date_of_birth": _noisy_date(person.date_of_birth, rng),
        "street_number": number,
        "address_line": _street_line(street, rng),
        "city": city,
        "postcode": postcode,
        "state": state,
        "phone": phone,
    }
    missing = {"given_name": 0.01, "surname": 0.01, "date_of_birth": 0.05, "street_number": 0.05,
               "address_line": 0.05, "city": 0.04, "postcode": 0.05, "state": 0.05, "phone": 0.30}
    for column, chance in missing.items():
        if rng.random() < chance:
            record[column] = ""
    if rng.random() < 0.1:  # capitals and stray spaces as typed into a POS or call-centre screen
        record["given_name"] = record["given_name"].upper()
        record["surname"] = f" {record['surname'].lower()} "
    return record


def generate(count: int, seed: int = 0, *, max_copies: int = 4) -> list[dict[str, str]]:
    """About `count` noisy records (exactly `count`), shuffled, each with its true `entity_id`."""
    rng = random.Random(seed)
    copies_weights = (0.5, 0.25, 0.15, 0.10)[:max_copies]
    expected = sum((i + 1) * w for i, w in enumerate(copies_weights)) / sum(copies_weights)
    world = _World(rng, int(count / expected) + 1)
    # More people than needed on average, so the count is always reached; the last ones are never drawn.
    population = people(int(count / expected * 1.3) + 10, rng, world)
    records: list[dict[str, str]] = []
    for person in population:
        copies = rng.choices(range(1, max_copies + 1), copies_weights)[0]
        for copy in range(copies):
            moved = world.address() if copy and rng.random() < 0.10 else None
            records.append(noisy_record(person, "", moved, rng))
            if len(records) >= count:
                break
        if len(records) >= count:
            break
    rng.shuffle(records)
    for index, record in enumerate(records):
        record["record_id"] = f"r{index:07d}"
    return records


def write_csv(path: Path, rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def iter_true_pairs(rows: Sequence[dict[str, str]], truth: str = "entity_id") -> Iterator[tuple[str, str]]:
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row[truth], []).append(row["record_id"])
    for members in groups.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                yield a, b

"""Reading person-record CSVs with any retailer's column names: a mapping from trait fields to columns."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.identity.matching.traits import TRAIT_FIELDS, PersonTraits, TraitError, normalise


class MappingError(ValueError):
    """A column mapping or a file that does not fit it."""


@dataclass(frozen=True)
class ColumnMapping:
    """Which CSV column holds the record id and each trait (absent traits are simply not compared)."""

    id_column: str = "record_id"
    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | None, config: Path | None, id_column: str | None) -> ColumnMapping:
        """From `--config FILE` (JSON: {"id": COLUMN, "fields": {trait: COLUMN}}) overlaid with `--map
        trait=COLUMN,...` and `--id-column`."""
        fields: dict[str, str] = {}
        identifier = "record_id"
        if config is not None:
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise MappingError(f"{config}: {exc}") from None
            if not isinstance(data, dict) or not isinstance(data.get("fields", {}), dict):
                raise MappingError(f'{config}: expected {{"id": COLUMN, "fields": {{trait: COLUMN}}}}')
            identifier = data.get("id", identifier)
            fields.update(data.get("fields", {}))
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            trait, sep, column = item.partition("=")
            if not sep or not column.strip():
                raise MappingError(f"--map: {item!r} is not trait=COLUMN")
            fields[trait.strip()] = column.strip()
        unknown = sorted(set(fields) - set(TRAIT_FIELDS))
        if unknown:
            raise MappingError(f"unknown trait(s) {', '.join(unknown)}; known: {', '.join(TRAIT_FIELDS)}")
        return cls(id_column or identifier, fields)

    def resolve(self, header: list[str], path: Path) -> dict[str, str]:
        """trait -> column for this file: mapped ones must exist; unmapped traits use a same-named column."""
        columns = {}
        for trait in TRAIT_FIELDS:
            column = self.fields.get(trait)
            if column is not None:
                if column not in header:
                    raise MappingError(f"{path}: no column {column!r} (mapped to {trait})")
                columns[trait] = column
            elif trait in header:
                columns[trait] = trait
        if self.id_column not in header:
            raise MappingError(f"{path}: no record id column {self.id_column!r} (use --id-column)")
        if not columns:
            raise MappingError(f"{path}: no trait columns found (use --map trait=COLUMN,...)")
        return columns


@dataclass
class LoadedFile:
    """A file's record ids, normalised traits, raw trait values (for the online mode), and truth labels."""

    ids: list[str] = field(default_factory=list)
    traits: list[PersonTraits] = field(default_factory=list)
    raw: list[dict[str, str]] = field(default_factory=list)
    truth: list[str] = field(default_factory=list)
    unreadable: int = 0  # values that could not be read (e.g. a malformed date) and were treated as missing


def load(path: Path, mapping: ColumnMapping, truth_column: str | None = None) -> LoadedFile:
    loaded = LoadedFile()
    for row, columns in _rows(path, mapping, truth_column):
        raw = {trait: row.get(column) or "" for trait, column in columns.items()}
        try:
            traits = normalise(raw)
        except TraitError as exc:
            # One bad value must not sink a million-row onboarding: that field is treated as missing.
            loaded.unreadable += 1
            raw[exc.field] = ""
            traits = normalise(raw)
        loaded.ids.append(row[mapping.id_column])
        loaded.traits.append(traits)
        loaded.raw.append(raw)
        if truth_column:
            loaded.truth.append(row[truth_column])
    return loaded


def _rows(path: Path, mapping: ColumnMapping, truth_column: str | None) -> Iterator[tuple[dict, dict]]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise MappingError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        columns = mapping.resolve(list(header), path)
        if truth_column and truth_column not in header:
            raise MappingError(f"{path}: no truth column {truth_column!r}")
        for row in reader:
            yield row, columns

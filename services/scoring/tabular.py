"""Tabular training data: a CSV file with a label column turned into a feature schema, a float32 matrix and labels.

Used by `nextbest model train --csv`. Column types are inferred: a column whose every non-empty value parses as a
number is numeric, anything else categorical (its levels, most frequent first, saved in the feature schema and
one-hot encoded). Empty cells (and NA/NaN/null) are missing values. Pure Python and numpy: no pandas.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.scoring.artifacts import LEVEL_SEPARATOR, FeatureKind, FeatureSpec, model_columns

_MISSING = {"", "na", "nan", "null", "none"}
_POSITIVE = {"1", "yes", "y", "true", "t", "accepted", "accept"}
#: XGBoost refuses feature names containing these; a CSV header with them is renamed (and the rename reported).
_UNSAFE = re.compile(r"[\[\]<,]")
MAX_LEVELS = 200


class DatasetError(ValueError):
    """The file cannot be used for training; the message says why (and names the column)."""


@dataclass(frozen=True)
class Dataset:
    """Features, labels and where they came from."""

    features: tuple[FeatureSpec, ...]
    x: np.ndarray  # rows x model columns, float32, NaN missing
    y: np.ndarray  # 0/1, float32
    label: str
    positive: str
    dropped: tuple[str, ...]
    renamed: Mapping[str, str]
    source: str

    @property
    def columns(self) -> tuple[str, ...]:
        return model_columns(self.features)


def _is_missing(value: str) -> bool:
    return value.strip().lower() in _MISSING


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _safe_name(name: str) -> str:
    cleaned = _UNSAFE.sub("_", name.strip()).replace(LEVEL_SEPARATOR, "_")
    return cleaned or "column"


def load_csv(path: Path, label: str, *, drop: Sequence[str] = (), positive: str | None = None) -> Dataset:
    """Reads a CSV with a header; `label` is the target column, `drop` columns are left out (e.g. leaking ones)."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise DatasetError(f"{path}: empty file") from None
        rows = [row for row in reader if row and any(cell.strip() for cell in row)]
    if len(set(header)) != len(header):
        raise DatasetError(f"{path}: duplicate column names in the header")
    for name in (label, *drop):
        if name not in header:
            raise DatasetError(f"{path}: no column {name!r} (columns: {', '.join(header)})")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}: line {number} has {len(row)} cells, the header {len(header)}")
    if not rows:
        raise DatasetError(f"{path}: no data rows")

    label_index = header.index(label)
    raw_labels = [row[label_index].strip() for row in rows]
    if any(_is_missing(value) for value in raw_labels):
        raise DatasetError(f"{path}: column {label!r} has empty labels")
    values = sorted(set(raw_labels))
    if positive is None:
        candidates = [v for v in values if v.lower() in _POSITIVE]
        if len(values) != 2 or len(candidates) != 1:
            raise DatasetError(f"{path}: cannot tell the positive label among {values[:10]}: pass --positive")
        positive = candidates[0]
    elif positive not in values:
        raise DatasetError(f"{path}: label value {positive!r} never occurs in {label!r} (values: {values[:10]})")
    y = np.fromiter((value == positive for value in raw_labels), dtype=np.float32, count=len(rows))

    features: list[FeatureSpec] = []
    blocks: list[np.ndarray] = []
    renamed: dict[str, str] = {}
    used: set[str] = set()
    for index, name in enumerate(header):
        if index == label_index or name in drop:
            continue
        safe = _safe_name(name)
        while safe in used:
            safe += "_"
        used.add(safe)
        if safe != name:
            renamed[name] = safe
        cells = [row[index].strip() for row in rows]
        present = [cell for cell in cells if not _is_missing(cell)]
        numbers = [_number(cell) for cell in present]
        if present and all(number is not None for number in numbers):
            features.append(FeatureSpec(safe))
            blocks.append(np.array([math.nan if _is_missing(c) else float(c) for c in cells], dtype=np.float32)[:, None])
            continue
        counts = Counter(present)
        if not counts:
            continue  # an all-empty column carries nothing
        if len(counts) > MAX_LEVELS:
            raise DatasetError(
                f"{path}: column {name!r} has {len(counts)} distinct non-numeric values (at most {MAX_LEVELS} as a "
                "category): drop it with --drop or encode it"
            )
        levels = tuple(level for level, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        spec = FeatureSpec(safe, FeatureKind.CATEGORICAL, levels)
        features.append(spec)
        position = {level: i for i, level in enumerate(levels)}
        block = np.zeros((len(rows), len(levels)), dtype=np.float32)
        for row_index, cell in enumerate(cells):
            if _is_missing(cell):
                block[row_index, :] = np.nan
            else:
                block[row_index, position[cell]] = 1.0
        blocks.append(block)
    if not features:
        raise DatasetError(f"{path}: no feature columns left after dropping {list(drop)}")
    return Dataset(
        features=tuple(features),
        x=np.hstack(blocks),
        y=y,
        label=label,
        positive=positive,
        dropped=tuple(drop),
        renamed=renamed,
        source=str(path),
    )

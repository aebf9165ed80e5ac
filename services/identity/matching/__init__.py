"""Probabilistic record linkage on person traits (Fellegi–Sunter): pure domain code, no gRPC, no SQL.

- `traits`: the person-trait record, its normalisation, nickname and phonetic keys;
- `compare`: per-field comparison levels (exact, nickname, Jaro–Winkler bands, date partial agreement, missing);
- `model`: m/u probabilities, EM estimation without labels, term-frequency adjustment, weights -> probability;
- `blocking`: the blocking keys that keep candidate generation sub-quadratic;
- `linker`: batch deduplication / linking of whole files (blocking -> EM -> scoring -> clusters);
- `synth`: a deterministic generator of noisy person records with a true-entity column, to test against.
"""

"""`nextbest settings`: every setting of every service, with its environment variable, default and meaning.

Generated from the settings classes themselves, so the README's settings table (`--markdown`) cannot drift.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator

from pydantic_settings import BaseSettings

from libs.settings import CommonSettings

SERVICE_SETTINGS = {
    "identity": "IdentitySettings",
    "profile": "ProfileSettings",
    "scoring": "ScoringSettings",
    "inventory": "InventorySettings",
    "decision": "DecisionSettings",
}
#: Fields every ServiceSettings has that are not settings of their own.
_INHERITED = {"service_name", "common"}


def settings_rows() -> Iterator[tuple[str, str, str]]:
    """(environment variable, default, description) for the common settings and each service's."""
    classes: list[type[BaseSettings]] = [CommonSettings]
    for service, name in SERVICE_SETTINGS.items():
        classes.append(getattr(importlib.import_module(f"services.{service}.settings"), name))
    for cls in classes:
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            if field_name in _INHERITED:
                continue
            default = field.get_default(call_default_factory=False)
            shown = "—" if default is None else str(getattr(default, "value", default))
            yield f"{prefix}{field_name.upper()}", shown, field.description or ""


def print_settings(args: argparse.Namespace) -> int:
    rows = list(settings_rows())
    if args.markdown:
        print("| variable | default | meaning |\n|---|---|---|")
        for env, default, description in rows:
            print(f"| `{env}` | `{default}` | {description} |")
    else:
        width = max(len(env) for env, _, _ in rows)
        for env, default, description in rows:
            print(f"{env:{width}s}  {default:28s}  {description}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("settings", help="list every setting (environment variable, default, meaning)")
    p.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    p.set_defaults(func=print_settings)

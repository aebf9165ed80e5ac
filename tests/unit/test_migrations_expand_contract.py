"""Migrations are expand-only unless marked: the migration job runs while the previous release still serves, so an
`upgrade()` must not take away anything that release reads or writes (README "PostgreSQL in production").

Dropping or renaming a table or column, changing a column's type, making it NOT NULL, or adding a NOT NULL column
without a server default belongs in a *contract* migration: a revision with `contract = True` at module level,
shipped one release after the code stopped using what it removes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = sorted(ROOT.glob("services/*/migrations/versions/*.py"))
#: Operations that break the code of the release before (Alembic's `op.` and batch operations alike).
DESTRUCTIVE_OPERATIONS = {"drop_table", "drop_column", "rename_table"}
#: Keyword arguments of alter_column that old code cannot live with.
DESTRUCTIVE_ALTERATIONS = {"new_column_name", "type_"}
DESTRUCTIVE_SQL = re.compile(
    r"\bDROP\s+(TABLE|COLUMN)\b|\bRENAME\b|\bSET\s+NOT\s+NULL\b|\bALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b",
    re.IGNORECASE,
)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def contract_operations(source: str) -> list[str]:
    """What `upgrade()` in this revision's source does that only a contract migration may do."""
    tree = ast.parse(source)
    upgrade = next(
        (node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "upgrade"), None
    )
    if upgrade is None:
        return []
    found = []
    for node in ast.walk(upgrade):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and DESTRUCTIVE_SQL.search(node.value):
            found.append(f"SQL {node.value.strip()[:60]!r} (line {node.lineno})")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        operation = node.func.attr
        if operation in DESTRUCTIVE_OPERATIONS:
            found.append(f"{operation} (line {node.lineno})")
        elif operation == "alter_column":
            altered = {name for name in DESTRUCTIVE_ALTERATIONS if _keyword(node, name) is not None}
            if _is_false(_keyword(node, "nullable")):
                altered.add("nullable=False")
            found += [f"alter_column {what} (line {node.lineno})" for what in sorted(altered)]
        elif operation == "add_column":
            for column in ast.walk(node):
                if (
                    isinstance(column, ast.Call)
                    and getattr(column.func, "attr", getattr(column.func, "id", "")) == "Column"
                    and _is_false(_keyword(column, "nullable"))
                    and _keyword(column, "server_default") is None
                ):
                    found.append(f"add_column NOT NULL without server_default (line {node.lineno})")
    return found


def is_contract(source: str) -> bool:
    return any(
        isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == "contract" for target in node.targets)
        and _is_true(node.value)
        for node in ast.parse(source).body
    )


def test_there_are_migrations_to_check():
    assert len(MIGRATIONS) >= 5
    assert {path.parts[-4] for path in MIGRATIONS} == {"identity", "profile", "scoring", "inventory", "decision"}


@pytest.mark.parametrize("path", MIGRATIONS, ids=lambda path: f"{path.parts[-4]}/{path.name}")
def test_upgrades_only_expand_unless_marked_contract(path):
    source = path.read_text()
    if is_contract(source):
        return
    assert not contract_operations(source), (
        f"{path.relative_to(ROOT)} takes away what the running release may use: {contract_operations(source)}; "
        "split it into expand now and a `contract = True` revision one release later"
    )


EXPAND = '''
def upgrade():
    op.add_column("t", sa.Column("c", sa.String(), nullable=True))
    op.add_column("t", sa.Column("d", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix", "t", ["c"])

def downgrade():
    op.drop_column("t", "c")
'''

CONTRACT = '''
contract = True

def upgrade():
    with op.batch_alter_table("t") as batch:
        batch.drop_column("old")
    op.alter_column("t", "c", new_column_name="e")
    op.alter_column("t", "d", nullable=False)
    op.add_column("t", sa.Column("f", sa.Integer(), nullable=False))
    op.execute("ALTER TABLE t RENAME TO u")
    op.drop_table("v")
'''


def test_the_checker_tells_expand_from_contract():
    assert contract_operations(EXPAND) == [] and not is_contract(EXPAND)
    found = contract_operations(CONTRACT)
    assert len(found) == 6, found
    assert is_contract(CONTRACT)
    assert not is_contract(CONTRACT.replace("contract = True", "contract = False"))

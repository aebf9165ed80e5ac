"""`nextbest auth …` against a real keystore file, and the credential check of `nextbest mesh run`."""

from __future__ import annotations

from pydantic import SecretStr

from cli.auth import mesh_credential_problem
from cli.main import main
from libs.auth.keystore import Keystore
from libs.settings import CommonSettings


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_add_issue_list_revoke_remove(tmp_path, capsys):
    path = str(tmp_path / "keys.json")
    assert run(capsys, "auth", "add-client", "tills", "--role", "pos", "--stores", "S1, S2", "--rate", "20",
               "--file", path)[0] == 0
    code, key, err = run(capsys, "auth", "issue", "tills", "--expires-in-days", "30", "--file", path)
    key = key.strip()
    assert code == 0 and key.startswith("nbk_") and "shown only this once" in err
    caller = Keystore.load(tmp_path / "keys.json").authenticate(key)
    assert (caller.client.stores, caller.client.rate_per_second) == (("S1", "S2"), 20.0)

    code, listing, _ = run(capsys, "auth", "list", "--file", path)
    key_id, secret = key.split("_", 2)[1:]
    assert code == 0 and "tills [pos] stores S1,S2, rate 20/s" in listing and f"key {key_id}" in listing
    assert secret not in listing and secret not in (tmp_path / "keys.json").read_text()

    assert run(capsys, "auth", "revoke", key_id, "--file", path)[1] == f"revoked key {key_id} of tills\n"
    assert run(capsys, "auth", "revoke", key_id, "--file", path)[:3:2] == (1, f"no key with id '{key_id}'\n")
    assert run(capsys, "auth", "remove", "tills", "--file", path)[0] == 0
    assert Keystore.load(tmp_path / "keys.json").clients == []


def test_errors_are_reported_with_an_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NEXTBEST_AUTH_KEYS_FILE", raising=False)
    assert run(capsys, "auth", "list") == (2, "", "no keystore: set NEXTBEST_AUTH_KEYS_FILE or pass --file\n")
    monkeypatch.setenv("NEXTBEST_AUTH_KEYS_FILE", str(tmp_path / "keys.json"))
    code, _, err = run(capsys, "auth", "add-client", "tills", "--role", "pos")
    assert (code, err) == (1, "client 'tills': a pos client needs at least one store\n")
    code, _, err = run(capsys, "auth", "issue", "nobody")
    assert code == 1 and err.startswith("cannot read keystore")


def test_mesh_run_needs_a_service_key_when_a_keystore_is_set(tmp_path):
    path = tmp_path / "keys.json"
    keystore = Keystore()
    keystore.add_client("mesh", "service")
    keystore.add_client("ops", "operator")
    service_key = keystore.issue_key("mesh")[1]
    operator_key = keystore.issue_key("ops")[1]
    keystore.save(path)

    def problem(token: str | None) -> str | None:
        return mesh_credential_problem(
            CommonSettings(auth_keys_file=path, auth_token=SecretStr(token) if token else None)
        )

    assert mesh_credential_problem(CommonSettings(auth_keys_file=None)) is None
    assert problem(service_key) is None
    assert "NEXTBEST_AUTH_TOKEN is not" in problem(None)
    assert problem(operator_key) == (
        "NEXTBEST_AUTH_TOKEN is a key of 'ops' (role 'operator'); the services need a key of role 'service' to "
        "call each other"
    )
    assert problem("nbk_0123456789ab_x") == "NEXTBEST_AUTH_TOKEN: unknown or revoked API key"

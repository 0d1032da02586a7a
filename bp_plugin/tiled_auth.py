"""Scoped API keys for the embedded Tiled server: a writer key for the RunEngine and the
reconstructor, a read-only key to browse (the viewer, a user's Tiled client).

Tiled's single-user mode has one key with every scope. With scoped keys the server runs from a
configuration file (``tiled serve config``) with Tiled's own authentication: a local admin whose
password, like the token-signing secret, lives only in the home's ``auth_secrets.json`` (mode 0600)
and reaches the child in its environment (the configuration names ``${BP_TILED_ADMIN_PASSWORD}``);
the admin issues the two API keys once, Tiled keeps their hashes in ``auth.db``, and the home's
``api_key`` (writer) and ``read_key`` (reader) files, both 0600, hold the secrets. A restart reuses
them (checked against the server, issued again when it no longer knows them).
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

from .keys import KEY_FILE, read_key_file, write_key_file

READ_KEY_FILE = "read_key"
SECRETS_FILE = "auth_secrets.json"
CONFIG_FILE = "config.yml"
ADMIN = "bp-admin"
#: what the RunEngine's Tiled writer and the reconstructor's publisher need (registering detector
#: files as external data included), and no more: no deletion, no key or principal administration
WRITER_SCOPES = ("read:metadata", "read:data", "write:metadata", "write:data", "create:node", "register")
READER_SCOPES = ("read:metadata", "read:data")


def auth_environment(directory: Path) -> dict:
    """The admin password and token secret for the child's environment (created once, kept 0600)."""
    path = Path(directory) / SECRETS_FILE
    if path.is_file():
        s = json.loads(read_key_file(path))
    else:
        s = {"admin_password": secrets.token_hex(16), "secret_key": secrets.token_hex(32)}
        write_key_file(path, json.dumps(s))
    return {"BP_TILED_ADMIN_PASSWORD": s["admin_password"], "BP_TILED_SECRET": s["secret_key"]}


def write_config(directory: Path, readable, catalog: str | None = None) -> Path:
    """``config.yml`` of a scoped server in ``directory`` (catalog, data, tables as ``serve catalog``
    had them; the secrets only as ``${...}`` references). ``catalog``: the catalog database's URI
    (PostgreSQL, :func:`bp_plugin.tiled_server.start_tiled_server`); default SQLite in ``directory``."""
    d = Path(directory)
    catalog = catalog or f"sqlite:///{d / 'catalog.db'}"
    reads = "".join(f"        - {Path(r).resolve()}\n" for r in [d, *readable])
    text = f"""# written by bp_plugin.tiled_auth; secrets come from the environment
authentication:
  providers:
    - provider: local
      authenticator: tiled.authenticators:DictionaryAuthenticator
      args:
        users_to_passwords:
          {ADMIN}: ${{BP_TILED_ADMIN_PASSWORD}}
  tiled_admins:
    - provider: local
      id: {ADMIN}
  secret_keys:
    - ${{BP_TILED_SECRET}}
  allow_anonymous_access: false
database:
  uri: sqlite:///{d / 'auth.db'}
  init_if_not_exists: true
trees:
  - path: /
    tree: catalog
    args:
      uri: {catalog}
      writable_storage:
        - {d / 'data'}
        - duckdb:///{d / 'tables.duckdb'}
      readable_storage:
{reads}      init_if_not_exists: true
"""
    path = d / CONFIG_FILE
    path.write_text(text)
    return path


def _valid(url: str, key: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/api/v1/auth/whoami", headers={"Authorization": f"Apikey {key}"}, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def issue_keys(url: str, directory: Path) -> tuple[str, str]:
    """``(writer, reader)`` keys of the scoped server at ``url``: those of the home's key files when
    the server knows them, else new ones issued by its admin (and written to the files)."""
    import httpx

    d = Path(directory)
    files = {"writer": d / KEY_FILE, "reader": d / READ_KEY_FILE}
    keys = {k: read_key_file(p) if p.is_file() else None for k, p in files.items()}
    if all(v and _valid(url, v) for v in keys.values()):
        return keys["writer"], keys["reader"]
    env = auth_environment(d)
    r = httpx.post(f"{url}/api/v1/auth/provider/local/token", timeout=30,
                   data={"username": ADMIN, "password": env["BP_TILED_ADMIN_PASSWORD"]})
    r.raise_for_status()
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    for name, scopes in (("writer", WRITER_SCOPES), ("reader", READER_SCOPES)):
        r = httpx.post(f"{url}/api/v1/auth/apikey", headers=auth, timeout=30,
                       json={"scopes": list(scopes), "expires_in": None, "note": f"bp-plugin {name}"})
        r.raise_for_status()
        keys[name] = r.json()["secret"]
        write_key_file(files[name], keys[name])
    return keys["writer"], keys["reader"]

"""sidekey's own checks for schemathesis, loaded by scripts/openapi-check.sh (SCHEMATHESIS_HOOKS).

The OpenAPI document cannot say everything the contract does: on the proxy routes any status
may be the upstream's, so the document only says "anything", and schemathesis's schema checks
have nothing to hold those answers to. These checks cover what the document cannot:

- `sidekey_error_envelope`: every response carrying `Sidekey-Error` (an error sidekey made
  itself, on any route) is JSON `{"error":{"code","message"}}` whose code equals the header.
- `no_secret_in_responses`: no credential or caller key used by the check's fixture appears in
  any response head or body, except credentials on GET /connections/{id}, the one management
  route allowed to show them; and no credential a request sent (`credentials` in a write's
  body) appears in the error it got back. Those credentials are also appended to the file
  SIDEKEY_CHECK_SENT_SECRETS names, which the script greps sidekey's log for.
- `reaches_success`: every operation the run tested answered 2xx at least once, so a passing
  run cannot come from a fixture that only ever produced errors.
- `scopes_enforced`: when the run's key holds only some scopes (SIDEKEY_CHECK_KEY_SCOPES), an
  operation whose `x-sidekey-scope` it lacks answers 403 `forbidden`, never its data.

The writes pass (SIDEKEY_CHECK_RESTORE, a JSON file the script writes) also keeps the fixture in
place: after a write answered 2xx (it may have deleted, renamed or overwritten a fixture
record), the next request is preceded by putting the fixture's integrations back (those now
missing) and its connections (an upsert, which also restores their credentials). Without this
the first fuzzed `DELETE /integrations/my-api` would leave every later connection write a 404,
and `reaches_success` would measure the order of the cases rather than the binary. These
requests go straight to sidekey with `requests`, outside schemathesis, so no check sees them; a
restore that fails stops the run.

One failure is dropped (`filter_failure`): `ensure_resource_availability` for a 404 from
`/connections/metadata` when the connection it names was deleted (or its integration was) after
it was created. That route names its connections in the body, which the check cannot follow, so
it does not see that a DELETE in between explains the 404.

Known gaps are named by operation label ("GET /providers/{name}") in environment variables the
script sets, not in schemathesis's baseline: a custom check's baseline signature contains the
line number it raised at, which would go stale with every edit of this file.
"""

from __future__ import annotations

import json
import os
import re
from urllib.parse import quote

import requests
import schemathesis

# The fixture's secret values, from the script (comma-separated); never printed by these checks.
_SECRETS = [s for s in os.environ.get("SIDEKEY_CHECK_SECRETS", "").split(",") if s]
# Operations allowed to answer 2xx never (e.g. ones that answer only errors by design).
_NO_SUCCESS_NEEDED = {
    s.strip() for s in os.environ.get("SIDEKEY_CHECK_NO_SUCCESS", "").split(",") if s.strip()
}
_CREDENTIAL_READ = "GET /connections/{connectionId}"
# The scopes of the key this run uses; unset means every scope (the check is off).
_KEY_SCOPES = os.environ.get("SIDEKEY_CHECK_KEY_SCOPES")
# The credentials a request sends are looked for only when they are long and plain enough to be
# a secret: the fuzzer's "0" would match by chance, and quotes, backslashes or control
# characters would be escaped in JSON (printable ASCII but space, `"` and `\`, 8 or more).
_PLAIN_SECRET = re.compile(r"[!#-\[\]-~]{8,}")
_SENT_SECRETS_FILE = os.environ.get("SIDEKEY_CHECK_SENT_SECRETS")
_SCOPE_NOT_ENFORCED = {
    s.strip() for s in os.environ.get("SIDEKEY_CHECK_SCOPE_NOT_ENFORCED", "").split(",") if s.strip()
}


@schemathesis.check
def sidekey_error_envelope(ctx, response, case):
    code = response.headers.get("sidekey-error")
    if code is None:
        return None
    code = code[0] if isinstance(code, list) else code
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    if case.method.upper() == "HEAD":
        return None
    if not ctype.startswith("application/json"):
        raise AssertionError(f"Sidekey-Error: {code} with Content-Type {ctype!r}, expected application/json")
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"Sidekey-Error: {code} but the body is not JSON ({e})") from None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        raise AssertionError(f"Sidekey-Error: {code} but the body has no `error` object")
    if error.get("code") != code:
        raise AssertionError(f"Sidekey-Error: {code} but error.code is {error.get('code')!r}")
    if "message" in error and not isinstance(error["message"], str):
        raise AssertionError(f"Sidekey-Error: {code} but error.message is not a string")
    return None


@schemathesis.check
def no_secret_in_responses(ctx, response, case):
    if not _SECRETS:
        return None
    head = "\n".join(f"{k}: {v}" for k, vs in response.headers.items() for v in (vs if isinstance(vs, list) else [vs]))
    body = response.content or b""
    credentials_allowed = case.operation.label == _CREDENTIAL_READ and response.headers.get("sidekey-error") is None
    for i, secret in enumerate(_SECRETS):
        where = []
        if secret in head:
            where.append("headers")
        if secret.encode() in body and not credentials_allowed:
            where.append("body")
        if where:
            # Which secret, by its position in the fixture, never its value.
            raise AssertionError(f"fixture secret #{i} appears in the response {' and '.join(where)}")
    if response.status_code >= 400:
        for field, value in _sent_secrets(case):
            if value in head or value.encode() in body:
                raise AssertionError(f"the credentials.{field} this request sent appear in its error response")
    return None


def _sent_secrets(case) -> list[tuple[str, str]]:
    """The (field, value) pairs of the request's `credentials` that could be secrets."""
    creds = case.body.get("credentials") if isinstance(case.body, dict) else None
    if not isinstance(creds, dict):
        return []
    return [
        (k, v) for k, v in creds.items() if k != "type" and isinstance(v, str) and _PLAIN_SECRET.fullmatch(v)
    ]


@schemathesis.check
class reaches_success:
    """Fail when a tested operation never answered 2xx."""

    def __init__(self):
        self.tested: set[str] = set()
        self.reached: set[str] = set()

    def after_response(self, ctx, response, case):
        label = case.operation.label
        self.tested.add(label)
        if 200 <= response.status_code < 300:
            self.reached.add(label)

    def after_run(self, ctx):
        if "*" in _NO_SUCCESS_NEEDED:
            return
        missing = sorted(self.tested - self.reached - _NO_SUCCESS_NEEDED)
        if missing:
            raise AssertionError("never answered 2xx: " + ", ".join(missing))


@schemathesis.check
def scopes_enforced(ctx, response, case):
    if _KEY_SCOPES is None or response.status_code == 401:
        return None
    # unsupported_method sends a method the operation does not declare (TRACE): that is 405
    # whatever the key, and the scope belongs to the declared method only.
    if case.method.upper() != case.operation.method.upper():
        return None
    raw = case.operation.definition.raw
    needed = raw.get("x-sidekey-scope") if isinstance(raw, dict) else None
    held = {s.strip() for s in _KEY_SCOPES.split(",") if s.strip()}
    if needed is None or needed in held or case.operation.label in _SCOPE_NOT_ENFORCED:
        return None
    if response.status_code != 403:
        raise AssertionError(f"a key without `{needed}` got {response.status_code}, expected 403 forbidden")
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if code != "forbidden":
        raise AssertionError(f"403 without error.code `forbidden` (got {code!r})")
    return None


class _Fixture:
    """The fixture records the writes pass puts back; see the module's docs."""

    def __init__(self, path: str):
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        self.url = spec["url"].rstrip("/")
        self.integrations = spec["integrations"]
        self.connections = spec["connections"]
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {spec['key']}"
        self.dirty = False

    def _send(self, method: str, path: str, want: tuple[int, ...], body=None) -> int:
        r = self.session.request(method, self.url + path, json=body, timeout=20, allow_redirects=False)
        if r.status_code not in want:
            # The status and error code only: a body may echo the fixture's credentials.
            try:
                code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            raise RuntimeError(f"restoring the fixture: {method} {path} answered {r.status_code} ({code})")
        return r.status_code

    def restore(self) -> None:
        for i in self.integrations:
            path = "/integrations/" + quote(i["unique_key"], safe="")
            if self._send("GET", path, (200, 404)) == 404:
                self._send("POST", "/integrations", (200,), i)
        for c in self.connections:
            self._send("POST", "/connections", (201,), c)
        self.dirty = False


_FIXTURE = _Fixture(os.environ["SIDEKEY_CHECK_RESTORE"]) if os.environ.get("SIDEKEY_CHECK_RESTORE") else None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if _FIXTURE is not None and _FIXTURE.dirty:
        _FIXTURE.restore()


class _Lifetimes:
    """When each connection was created and deleted in this run, by request number."""

    def __init__(self):
        self.seq = 0
        self.created: dict[tuple[str, str], int] = {}
        self.deleted: dict[tuple[str, str], int] = {}
        self.deleted_integrations: dict[str, int] = {}

    def record(self, case, response) -> None:
        self.seq += 1
        if not 200 <= response.status_code < 300 or case.method.upper() != case.operation.method.upper():
            return
        label = case.operation.label
        if label == "POST /connections":
            try:
                body = json.loads(response.content)
                self.created[(body["provider_config_key"], body["connection_id"])] = self.seq
            except (ValueError, KeyError, TypeError):
                pass
        elif label == "DELETE /connections/{connectionId}":
            key = (case.query or {}).get("provider_config_key")
            cid = (case.path_parameters or {}).get("connectionId")
            if isinstance(key, str) and isinstance(cid, str):
                self.deleted[(key, cid)] = self.seq
        elif label == "DELETE /integrations/{uniqueKey}":
            key = (case.path_parameters or {}).get("uniqueKey")
            if isinstance(key, str):
                self.deleted_integrations[key] = self.seq

    def deleted_since_created(self, key: str, cid: str) -> bool:
        created = self.created.get((key, cid), 0)
        return max(self.deleted.get((key, cid), 0), self.deleted_integrations.get(key, 0)) > created


_LIFETIMES = _Lifetimes()


@schemathesis.hook
def after_call(ctx, case, response):
    _LIFETIMES.record(case, response)
    if _SENT_SECRETS_FILE:
        sent = _sent_secrets(case)
        if sent:
            with open(_SENT_SECRETS_FILE, "a", encoding="utf-8") as f:
                f.writelines(v + "\n" for _, v in sent)
    if _FIXTURE is not None and case.method.upper() != "GET" and 200 <= response.status_code < 300:
        _FIXTURE.dirty = True


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    if getattr(failure, "code", None) != "ST302" or case.operation.path != "/connections/metadata":
        return True
    body = case.body if isinstance(case.body, dict) else {}
    key, ids = body.get("provider_config_key"), body.get("connection_id")
    ids = ids if isinstance(ids, list) else [ids]
    if not isinstance(key, str) or not all(isinstance(i, str) for i in ids):
        return True
    return not any(_LIFETIMES.deleted_since_created(key, i) for i in ids)

"""Sign-in for the web app's write actions (FastAPI TestClient, fake Dagster, no browser).

Accounts, the users CLI, sessions and their cookie flags, CSRF, the sign-in rate limit and
its uniform answers, per-user upload limits, the audit file, the trusted-proxy user header
and TWIML_WEB_PUBLIC_READ. tests/test_web_browser.py checks the same in Chromium.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.test_web import (  # noqa: F401 - fixtures
    PASSWORD,
    SITE,
    USER,
    FakeDagster,
    csrf_token,
    dagster,
    root,
    sign_in,
    stored_files,
    users_file,
    users_template,
    wav_bytes,
)
from twiml_assets.cli import main
from twiml_assets.web import WebSettings, create_app
from twiml_assets.web.auth import SESSION_COOKIE, safe_next
from twiml_assets.web.settings import parse_networks
from twiml_assets.web.users import UsersError, UserStore

REPO = Path(__file__).resolve().parents[1]
JSON = {"accept": "application/json"}


@pytest.fixture
def make_app(dagster: FakeDagster, root: Path, users_file: Path):
    def make(**overrides: Any) -> FastAPI:
        settings = WebSettings(
            graphql_url=dagster.url,
            storage_root=str(root),
            graphql_timeout=2.0,
            users_file=users_file,
            **{"public_url": SITE, **overrides},
        )
        return create_app(settings)

    return make


def client_of(app: FastAPI, ip: str = "198.51.100.7", **kwargs: Any) -> TestClient:
    return TestClient(app, client=(ip, 40000), follow_redirects=False, **kwargs)


def login(client: TestClient, name: str, password: str, next_path: str = "/") -> Any:
    token = csrf_token(client.get("/login").text)
    form = {"username": name, "password": password, "csrf_token": token, "next": next_path}
    return client.post("/login", data=form)


def launched(dagster: FakeDagster) -> list[dict[str, Any]]:
    """What reached Dagster to start a run (reading runs for a page is fine)."""
    return dagster.ops("TwimlAddPartition") + dagster.ops("TwimlLaunch")


def main_text(html: str) -> str:
    return html.split("<main", 1)[1]


# -- the users file and the CLI --------------------------------------------------------------
def test_users_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "users.json"
    store = UserStore(path)
    assert store.users() == {} and store.authenticate("alice", "whatever1") is None
    store.add("Alice", "correct horse", max_upload_mb=50, uploads_per_hour=3)
    store.add("bob", "battery staple")
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    data = json.loads(path.read_text())
    assert set(data["users"]) == {"alice", "bob"}
    assert data["users"]["alice"]["password_hash"].startswith("$argon2id$")
    assert data["users"]["alice"]["max_upload_mb"] == 50
    assert "uploads_per_hour" not in data["users"]["bob"]
    assert "correct horse" not in path.read_text()

    again = UserStore(path)  # a fresh reader (another process) sees the same accounts
    assert again.authenticate("ALICE", "correct horse").name == "alice"
    assert again.authenticate("alice", "battery staple") is None
    assert again.authenticate("nobody", "correct horse") is None
    with pytest.raises(UsersError, match="exists"):
        again.add("alice", "new password")
    with pytest.raises(UsersError, match="at least 8"):
        again.add("carol", "short")
    for bad in ("", "../x", "a b", "x" * 65, "-lead", "名前"):
        with pytest.raises(UsersError, match="invalid user name"):
            again.add(bad, "long enough")
    again.remove("bob")
    assert set(store.users()) == {"alice"}  # the first store notices the change
    with pytest.raises(UsersError, match="no user"):
        again.remove("bob")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_old_hash_parameters_are_upgraded_on_sign_in(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    UserStore(path, PasswordHasher(time_cost=1, memory_cost=8192)).add("alice", "correct horse")
    old = json.loads(path.read_text())["users"]["alice"]["password_hash"]
    store = UserStore(path)
    assert store.authenticate("alice", "correct horse") is not None
    new = json.loads(path.read_text())["users"]["alice"]["password_hash"]
    assert new != old and "m=8192" in old and "m=8192" not in new
    assert store.authenticate("alice", "correct horse") is not None


def test_users_cli_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIML_")}
    env["TWIML_WEB_USERS_FILE"] = str(path)
    added = subprocess.run(  # the real entry point, password on stdin as a script would
        [sys.executable, "-m", "twiml_assets.cli", "users", "add", "Bob", "--password-stdin"],
        input="a long passphrase\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    assert "bob: saved" in added.stdout and "passphrase" not in added.stdout + added.stderr
    assert UserStore(path).authenticate("bob", "a long passphrase") is not None

    file = ["users", "--file", str(path)]
    import io

    sys_stdin = sys.stdin
    try:
        sys.stdin = io.StringIO("another passphrase\n")
        assert main([*file, "add", "carol", "--password-stdin", "--uploads-per-hour", "2"]) == 0
        sys.stdin = io.StringIO("short\n")
        assert main([*file, "add", "dave", "--password-stdin"]) == 2
    finally:
        sys.stdin = sys_stdin
    capsys.readouterr()
    assert main([*file, "list"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^bob\s+max upload default, uploads per hour default$", listed, re.M)
    assert re.search(r"^carol\s+max upload default, uploads per hour 2$", listed, re.M)
    assert "argon2" not in listed and "$" not in listed and "dave" not in listed
    assert main([*file, "remove", "bob"]) == 0
    assert main([*file, "remove", "bob"]) == 2
    assert "no user 'bob'" in capsys.readouterr().err
    assert set(UserStore(path).users()) == {"carol"}


# -- who may write -----------------------------------------------------------------------------
def test_anonymous_visitors_cannot_write(
    make_app, dagster: FakeDagster, root: Path, users_file: Path
) -> None:
    anon = client_of(make_app())
    page = anon.get("/episodes/ep-2").text
    assert 'id="transcribe"' not in page and "to transcribe this episode" in page
    assert 'id="sign-in" href="/login?next=/episodes/ep-2"' in page
    upload = anon.get("/upload").text
    assert 'id="upload-form"' not in upload and 'type="file"' not in upload
    assert "to upload audio" in upload
    assert 'name="csrf-token"' not in page

    before = stored_files(root)
    resp = anon.post("/episodes/ep-2/transcribe", headers=JSON)
    assert resp.status_code == 401 and resp.json() == {"error": "sign in first"}
    resp = anon.post("/episodes/ep-2/transcribe")
    assert resp.status_code == 303 and resp.headers["location"] == "/login?next=/episodes/ep-2"
    resp = anon.post("/upload", files={"audio": ("a.wav", wav_bytes())}, headers=JSON)
    assert resp.status_code == 401
    resp = anon.post("/upload", files={"audio": ("a.wav", wav_bytes())})
    assert resp.status_code == 303 and resp.headers["location"] == "/login?next=/upload"
    # A forged or foreign session cookie is no session.
    anon.cookies.set(SESSION_COOKIE, "eyJ1IjoiYWxpY2UifQ.forged.sig")
    assert anon.post("/episodes/ep-2/transcribe", headers=JSON).status_code == 401
    assert not launched(dagster) and stored_files(root) == before

    signed = sign_in(client_of(make_app()))
    page = signed.get("/episodes/ep-2").text
    assert 'id="transcribe"' in page and 'Signed in as <strong id="signed-in-as">alice' in page
    assert 'id="upload-form"' in signed.get("/upload").text


def test_every_post_needs_the_csrf_token(make_app, dagster: FakeDagster, root: Path) -> None:
    client = sign_in(client_of(make_app()))
    token = client.headers.pop("x-csrf-token")
    before = stored_files(root)
    for headers in ({}, {"x-csrf-token": "wrong"}, {"x-csrf-token": ""}):
        resp = client.post("/episodes/ep-2/transcribe", headers={**JSON, **headers})
        assert resp.status_code == 403 and "CSRF" in resp.json()["error"]
        resp = client.post(
            "/upload", files={"audio": ("a.wav", wav_bytes(seed=1))}, headers={**JSON, **headers}
        )
        assert resp.status_code == 403
    resp = client.post("/episodes/ep-2/transcribe", data={"csrf_token": "wrong"})
    assert resp.status_code == 403
    resp = client.post(
        "/upload",
        files={"audio": ("a.wav", wav_bytes(seed=1))},
        data={"csrf_token": "wrong", "format": "md"},
    )
    assert resp.status_code == 403
    assert not launched(dagster) and stored_files(root) == before
    # Signing out needs it too; without it the session stays.
    assert client.post("/logout").status_code == 403
    assert "Signed in as" in client.get("/").text
    # The sign-in form needs the pre-session cookie's token.
    fresh = client_of(make_app())
    fresh.get("/login")
    resp = fresh.post("/login", data={"username": USER, "password": PASSWORD, "next": "/"})
    assert resp.status_code == 403 and SESSION_COOKIE not in resp.cookies

    # With the token, as a form field (no JavaScript) or a header (fetch), it works.
    resp = client.post("/episodes/ep-2/transcribe", data={"csrf_token": token})
    assert resp.status_code == 303 and resp.headers["location"] == "/episodes/ep-2"
    resp = client.post(
        "/upload",
        files={"audio": ("a.wav", wav_bytes(seed=1))},
        data={"csrf_token": token, "format": "md"},
    )
    assert resp.status_code == 303
    assert len(dagster.ops("TwimlLaunch")) == 2
    resp = client.post("/logout", headers={"x-csrf-token": token})
    assert resp.status_code == 303
    assert "Signed in as" not in client.get("/").text


def test_session_cookie_flags(make_app) -> None:
    app = make_app()
    plain = login(client_of(app), USER, PASSWORD)
    cookie = plain.headers["set-cookie"].lower()
    assert cookie.startswith(SESSION_COOKIE + "=")
    for flag in ("httponly", "samesite=lax", "path=/", "max-age=43200"):
        assert flag in cookie, cookie
    assert "secure" not in cookie

    https = login(client_of(app, base_url="https://testserver"), USER, PASSWORD)
    assert "; secure" in https.headers["set-cookie"].lower()
    assert (
        "; secure"
        in client_of(app, base_url="https://testserver").get("/login").headers["set-cookie"].lower()
    )  # the pre-session cookie too

    # X-Forwarded-Proto is believed from a trusted proxy only.
    behind = make_app(trusted_proxies=parse_networks("10.0.0.0/8"))
    proxied = client_of(behind, "10.0.0.2", headers={"x-forwarded-proto": "https"})
    assert "; secure" in login(proxied, USER, PASSWORD).headers["set-cookie"].lower()
    spoofed = client_of(behind, "203.0.113.5", headers={"x-forwarded-proto": "https"})
    assert "secure" not in login(spoofed, USER, PASSWORD).headers["set-cookie"].lower()
    forced = make_app(cookie_secure=True)
    assert "; secure" in login(client_of(forced), USER, PASSWORD).headers["set-cookie"].lower()


def test_wrong_password_and_unknown_user_look_the_same_and_are_rate_limited(
    make_app, monkeypatch
) -> None:
    app = make_app(login_max_failures=3)
    client = client_of(app)
    answers, verified = {}, []
    real_verify = PasswordHasher.verify

    def counting_verify(self, hash_: str, password: str) -> bool:
        verified.append(hash_.split("$")[1])  # the algorithm: argon2id for both
        return real_verify(self, hash_, password)

    with monkeypatch.context() as patch:
        patch.setattr(PasswordHasher, "verify", counting_verify)
        for name in (USER, "nobody"):
            resp = login(client, name, "not the password")
            answers[name] = (resp.status_code, resp.text, resp.headers.get("set-cookie"))
    assert answers[USER] == answers["nobody"]
    assert answers[USER][0] == 401 and "Wrong user name or password." in answers[USER][1]
    # Unknown names are verified too (against a dummy argon2id hash of the same cost): no
    # fast path that tells them apart by time.
    assert verified == ["argon2id", "argon2id"]

    third = login(client, USER, "still wrong")
    assert third.status_code == 401
    blocked = {name: login(client, name, PASSWORD) for name in (USER, "nobody")}
    for resp in blocked.values():  # even the right password, while the address is blocked
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) > 0
        assert "Too many failed sign-ins" in resp.text and SESSION_COOKIE not in resp.cookies
    assert main_text(blocked[USER].text) == main_text(blocked["nobody"].text)

    # Per user name too: once alice's name has failed 3 times, an address that has failed it
    # waits (another address cannot go on guessing)...
    elsewhere = client_of(app, "192.0.2.44")
    assert login(elsewhere, USER, "wrong again").status_code == 401  # alice's third failure
    assert login(elsewhere, USER, PASSWORD).status_code == 429
    assert login(elsewhere, "bob", "whatever").status_code == 401  # other names go on
    # ...but an address that has not failed it still signs in with the right password.
    assert login(client_of(app, "192.0.2.45"), USER, PASSWORD).status_code == 303


def test_sign_in_redirects_only_to_this_site(make_app) -> None:
    for bad in (
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "\\\\evil.example",
        "evil.example",
        "/\x00x",
        "javascript:alert(1)",
        "/login",
        "",
        None,
    ):
        assert safe_next(bad) == "/", bad
    assert safe_next("/episodes/ep-1?download=md") == "/episodes/ep-1?download=md"
    app = make_app()
    resp = login(client_of(app), USER, PASSWORD, "//evil.example/steal")
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    resp = login(client_of(app), USER, PASSWORD, "/episodes/ep-2")
    assert resp.headers["location"] == "/episodes/ep-2"
    page = client_of(app).get("/login", params={"next": "https://evil.example"}).text
    assert 'name="next" value="/"' in page


def test_proxy_user_header_is_believed_only_from_a_trusted_proxy(
    make_app, dagster: FakeDagster, users_file: Path
) -> None:
    app = make_app(
        proxy_user_header="X-Forwarded-User", trusted_proxies=parse_networks("10.0.0.0/8, ::1")
    )
    headers = {"x-forwarded-user": "Carol", "x-forwarded-for": "203.0.113.9, 192.0.2.1"}
    proxy = client_of(app, "10.1.2.3", headers=headers)
    page = proxy.get("/upload").text
    assert 'Signed in as <strong id="signed-in-as">carol' in page  # not in the users file
    assert 'id="sign-out"' not in page  # the proxy signs people out, not this app
    token = csrf_token(page)
    assert proxy.post("/episodes/ep-2/transcribe", headers=JSON).status_code == 403
    assert (
        proxy.post("/episodes/ep-2/transcribe", headers={**JSON, "x-csrf-token": "x"}).status_code
        == 403
    )
    # A token made for another proxy user is not carol's.
    dave = client_of(app, "10.1.2.3", headers={"x-forwarded-user": "dave"})
    dave_token = csrf_token(dave.get("/upload").text)
    resp = proxy.post("/episodes/ep-2/transcribe", headers={**JSON, "x-csrf-token": dave_token})
    assert resp.status_code == 403 and not dagster.ops("TwimlLaunch")
    resp = proxy.post("/episodes/ep-2/transcribe", headers={**JSON, "x-csrf-token": token})
    assert resp.status_code == 202 and len(dagster.ops("TwimlLaunch")) == 1

    outsider = client_of(app, "192.0.2.99", headers=headers)
    assert "Signed in as" not in outsider.get("/upload").text
    resp = outsider.post("/episodes/ep-3/transcribe", headers={**JSON, "x-csrf-token": token})
    assert resp.status_code == 401 and len(dagster.ops("TwimlLaunch")) == 1
    # Without a proxy header, the trusted address is an ordinary client.
    assert "Signed in as" not in client_of(app, "10.1.2.3").get("/").text

    lines = [json.loads(x) for x in (users_file.parent / "audit.jsonl").read_text().splitlines()]
    assert [(e["action"], e["user"], e["address"]) for e in lines] == [
        ("transcribe", "carol", "192.0.2.1")  # the address the proxy saw
    ]


def test_per_user_upload_size_and_hourly_count(
    make_app, dagster: FakeDagster, root: Path, users_file: Path
) -> None:
    UserStore(users_file).add("bob", "bob's passphrase", max_upload_mb=0.02, uploads_per_hour=2)
    app = make_app(uploads_per_hour=1)
    bob = sign_in(client_of(app), "bob", "bob's passphrase")
    assert "at most 20 KB" in bob.get("/upload").text

    big = bob.post("/upload", files={"audio": ("a.wav", wav_bytes(1.0))}, headers=JSON)
    assert big.status_code == 413 and big.json()["error"].endswith("limit of 20 KB")
    for seed in (1, 2):  # the refused upload did not count
        small = bob.post("/upload", files={"audio": ("a.wav", wav_bytes(0.2, seed))}, headers=JSON)
        assert small.status_code == 202, small.text
    before = stored_files(root)
    third = bob.post("/upload", files={"audio": ("a.wav", wav_bytes(0.2, 3))}, headers=JSON)
    assert third.status_code == 429 and int(third.headers["retry-after"]) > 3500
    assert "at most 2 uploads per hour" in third.json()["error"]
    page = bob.post("/upload", files={"audio": ("a.wav", wav_bytes(0.2, 3))})
    assert page.status_code == 429 and "at most 2 uploads per hour" in page.text
    assert stored_files(root) == before and len(dagster.ops("TwimlLaunch")) == 2

    # alice has no limits of her own: the global ones (1 per hour, TWIML_WEB_MAX_UPLOAD_MB).
    alice = sign_in(client_of(app))
    assert alice.post("/upload", files={"audio": ("a.wav", wav_bytes(1.0, 4))}).status_code == 303
    again = alice.post("/upload", files={"audio": ("a.wav", wav_bytes(1.0, 5))}, headers=JSON)
    assert again.status_code == 429 and "at most 1 upload per hour" in again.json()["error"]


def test_audit_lines_and_no_secrets_anywhere(
    make_app, root: Path, users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app()
    client = client_of(app)
    responses = [login(client, USER, "a wrong guess"), login(client, "mallory", PASSWORD)]
    responses.append(login(client, USER, PASSWORD))
    session = client.cookies[SESSION_COOKIE]
    token = csrf_token(client.get("/").text)
    client.headers["x-csrf-token"] = token
    data = wav_bytes(0.5, seed=9)
    responses += [
        client.get("/episodes/ep-2"),
        client.post("/episodes/ep-2/transcribe", headers=JSON),
        client.post("/upload", files={"audio": ("a.wav", data)}, headers=JSON),
        client.post("/logout"),
    ]
    audit = users_file.parent / "audit.jsonl"
    assert audit.stat().st_mode & 0o777 == 0o600
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["action"], e["user"]) for e in lines] == [
        ("login_failed", USER),
        ("login_failed", None),  # an unknown name is not written down: it may be a password
        ("login", USER),
        ("transcribe", USER),
        ("upload", USER),
        ("logout", USER),
    ]
    for entry in lines:
        assert entry["address"] == "198.51.100.7"
        assert datetime.fromisoformat(entry["time"]).utcoffset().total_seconds() == 0
    assert lines[3]["key"] == "ep-2" and lines[3]["launched"] is True
    assert lines[4]["key"].startswith("up-") and lines[4]["size"] == len(data)
    audit_records = [r.getMessage() for r in caplog.records if r.name == "twiml.audit"]
    assert [json.loads(m)["action"] for m in audit_records] == [e["action"] for e in lines]

    secret = (users_file.parent / "secret").read_text().strip()
    assert (users_file.parent / "secret").stat().st_mode & 0o777 == 0o600
    password_hash = json.loads(users_file.read_text())["users"][USER]["password_hash"]
    never = (PASSWORD, "a wrong guess", password_hash, secret, session, token)
    logged = caplog.text + audit.read_text()
    for value in never:
        assert value not in logged
    assert any("generated a session signing secret" in r.getMessage() for r in caplog.records)
    for resp in responses:
        for value in (PASSWORD, password_hash, secret):
            assert value not in resp.text and value not in str(resp.headers)


def test_public_read_off_needs_a_signed_in_user(make_app) -> None:
    app = make_app(public_read=False)
    anon = client_of(app)
    for path in ("/", "/episodes/ep-1", "/episodes/ep-1/transcript.md", "/upload"):
        resp = anon.get(path)
        assert resp.status_code == 303, path
        assert resp.headers["location"] == "/login?next=" + path, path
    assert anon.get("/?q=speech").headers["location"] == "/login?next=/%3Fq%3Dspeech"
    assert anon.get("/api/episodes/ep-1").status_code == 401
    assert anon.get("/episodes/ep-1/audio", headers=JSON).status_code == 401
    for path in ("/login", "/healthz", "/static/app.js"):
        assert anon.get(path).status_code == 200, path
    signed = sign_in(client_of(app))
    for path in ("/", "/episodes/ep-1", "/episodes/ep-1/transcript.md", "/api/episodes/ep-1"):
        assert signed.get(path).status_code == 200, path
    # Public read (the default) stays open.
    assert client_of(make_app()).get("/api/episodes/ep-1").status_code == 200


def test_sessions_end_when_the_user_or_password_changes_and_survive_a_restart(
    make_app, users_file: Path
) -> None:
    client = sign_in(client_of(make_app()))
    restarted = client_of(make_app(), cookies=dict(client.cookies))  # the secret was kept
    assert "Signed in as" in restarted.get("/").text
    UserStore(users_file).add(USER, "a brand new passphrase", replace=True)
    assert "Signed in as" not in client.get("/").text
    assert client.post("/episodes/ep-2/transcribe", headers=JSON).status_code == 401
    sign_in(client, USER, "a brand new passphrase")
    UserStore(users_file).remove(USER)
    assert client.post("/episodes/ep-2/transcribe", headers=JSON).status_code == 401
    # A configured secret replaces the file's: the old cookies are no longer valid.
    other = client_of(make_app(secret="z" * 40), cookies=dict(client.cookies))
    assert "Signed in as" not in other.get("/").text


def test_no_users_file_still_serves_and_says_how_to_add_one(
    dagster: FakeDagster, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    settings = WebSettings(
        graphql_url=dagster.url,
        storage_root=str(root),
        users_file=tmp_path / "none/users.json",
        public_url=SITE,
    )
    client = client_of(create_app(settings))
    assert "twiml-transcribe users add NAME" in caplog.text
    assert client.get("/").status_code == 200
    for path in ("/login", "/upload"):
        assert "twiml-transcribe users add NAME" in client.get(path).text
    assert login(client, "alice", "anything at all").status_code == 401


def test_sign_in_settings_from_environment() -> None:
    settings = WebSettings.from_env(
        {
            "TWIML_WEB_PUBLIC_URL": "HTTPS://Transcripts.Example.org:443/",
            "TWIML_WEB_USERS_FILE": "/srv/web/users.json",
            "TWIML_WEB_SECRET": "k" * 43,
            "TWIML_WEB_PUBLIC_READ": "false",
            "TWIML_WEB_SESSION_HOURS": "1.5",
            "TWIML_WEB_COOKIE_SECURE": "true",
            "TWIML_WEB_UPLOADS_PER_HOUR": "7",
            "TWIML_WEB_LOGIN_MAX_FAILURES": "4",
            "TWIML_WEB_PROXY_USER_HEADER": "X-Forwarded-User",
            "TWIML_WEB_TRUSTED_PROXIES": "10.0.0.5, 172.18.0.0/16",
        }
    )
    assert settings.users_file == Path("/srv/web/users.json")
    assert settings.secret_file == Path("/srv/web/secret")
    assert settings.ended_sessions_file == Path("/srv/web/ended_sessions.json")
    assert settings.public_url == "https://transcripts.example.org"
    assert settings.audit_path == Path("/srv/web/audit.jsonl")
    assert (settings.public_read, settings.cookie_secure) == (False, True)
    assert (settings.session_seconds, settings.uploads_per_hour) == (5400, 7)
    assert settings.login_max_failures == 4 and settings.proxy_user_header == "X-Forwarded-User"
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.5/32", "172.18.0.0/16"]
    assert "k" * 43 not in repr(settings)
    defaults = WebSettings.from_env({})
    assert defaults.users_file == Path(".twiml_web/users.json") and defaults.public_read
    assert defaults.uploads_per_hour == 20 and defaults.session_seconds == 12 * 3600
    with pytest.raises(ValueError, match="TWIML_WEB_SECRET") as error:
        WebSettings.from_env({"TWIML_WEB_SECRET": "too-short-secret"})
    assert "too-short-secret" not in str(error.value)
    with pytest.raises(ValueError, match="not an IP address"):
        WebSettings.from_env({"TWIML_WEB_TRUSTED_PROXIES": "proxy.example"})
    assert defaults.public_url is None
    assert WebSettings.from_env({"TWIML_WEB_PUBLIC_URL": "http://h.example:8080"}).public_url == (
        "http://h.example:8080"
    )
    for bad in ("transcripts.example.org", "ftp://h.example", "https://h.example/app", "http://"):
        with pytest.raises(ValueError, match="TWIML_WEB_PUBLIC_URL"):
            WebSettings.from_env({"TWIML_WEB_PUBLIC_URL": bad})


# -- review fixes: rate-limit race, corrupt users file, long passwords, mapped peers -------
def concurrent_logins(
    app: FastAPI, n: int, release: threading.Event, ready: Callable[[list[int]], bool]
) -> list[Any]:
    """``n`` wrong-password POSTs from one address at once; ``release`` lets the password
    checks finish once ``ready(statuses so far)``; the responses in the order they came."""
    clients = [client_of(app) for _ in range(n)]
    tokens = [csrf_token(c.get("/login").text) for c in clients]
    results: list[Any] = []
    start = threading.Barrier(n)

    def post(client: TestClient, token: str) -> None:
        start.wait(timeout=30)
        form = {"username": USER, "password": "a wrong guess", "csrf_token": token, "next": "/"}
        results.append(client.post("/login", data=form))

    threads = [threading.Thread(target=post, args=ct) for ct in zip(clients, tokens, strict=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not ready([r.status_code for r in results]) and time.monotonic() < deadline:
        time.sleep(0.02)
    release.set()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.fixture
def slow_verify(monkeypatch: pytest.MonkeyPatch):
    """UserStore.authenticate held until the test releases it; counts calls and overlap."""
    release = threading.Event()
    seen = {"calls": 0, "inside": 0, "most": 0}
    lock = threading.Lock()
    real = UserStore.authenticate

    def authenticate(self: UserStore, name: str, password: str) -> Any:
        with lock:
            seen["calls"] += 1
            seen["inside"] += 1
            seen["most"] = max(seen["most"], seen["inside"])
        try:
            release.wait(timeout=10)
            return real(self, name, password)
        finally:
            with lock:
                seen["inside"] -= 1

    monkeypatch.setattr(UserStore, "authenticate", authenticate)
    return release, seen


def test_concurrent_wrong_passwords_are_counted_before_they_are_verified(
    make_app, slow_verify
) -> None:
    release, seen = slow_verify
    app = make_app(login_max_failures=3)
    # The checks are held until the other five have their answer: before the fix, all eight
    # passed the limit check while the first three were still being verified.
    results = concurrent_logins(app, 8, release, lambda done: len(done) >= 5)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [401] * 3 + [429] * 5, statuses
    assert seen["calls"] == 3
    assert all(int(r.headers["retry-after"]) > 0 for r in results if r.status_code == 429)
    # A right password gives its attempt back; the name's counter starts again.
    fresh = make_app(login_max_failures=2)
    client = client_of(fresh)
    assert login(client, USER, "wrong once").status_code == 401
    assert login(client, USER, PASSWORD).status_code == 303
    assert login(client_of(fresh), "bob", "wrong twice").status_code == 401  # address: 2 of 2
    assert login(client_of(fresh), "bob", "wrong thrice").status_code == 429


def test_password_checks_at_once_are_capped_and_a_busy_answer_does_not_count(
    make_app, slow_verify
) -> None:
    from twiml_assets.web.app import BUSY_LOGINS, MAX_VERIFYING

    release, seen = slow_verify
    app = make_app(login_max_failures=MAX_VERIFYING + 1)
    n = 2 * MAX_VERIFYING
    results = concurrent_logins(
        app, n, release, lambda done: len(done) >= n - MAX_VERIFYING and seen["inside"] > 0
    )
    busy = [r for r in results if r.status_code == 503]
    assert sorted(r.status_code for r in results) == [401] * MAX_VERIFYING + [503] * (
        n - MAX_VERIFYING
    )
    assert seen["most"] <= MAX_VERIFYING and seen["calls"] == MAX_VERIFYING
    assert all(BUSY_LOGINS in r.text and r.headers["retry-after"] == "2" for r in busy)
    # The busy answers were not counted: one more guess is verified, then the limit holds.
    release.set()
    client = client_of(app)
    assert login(client, USER, "fifth guess").status_code == 401
    assert login(client, USER, "sixth guess").status_code == 429


def test_a_corrupt_users_file_is_logged_at_start_and_sign_in_fails_as_usual(
    make_app, users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    users_file.write_text('{"users": {"alice": {"password_hash": "$argon2id$v=19$SECRETHASH"')
    app = make_app()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.text
    message = errors[0].getMessage()
    assert str(users_file) in message and "line 1 column" in message, message
    assert "\n" not in message and "SECRETHASH" not in caplog.text
    assert "no web users" not in caplog.text
    client = client_of(app)
    page = client.get("/login").text
    assert "twiml-transcribe users add NAME" not in page  # adding a user is not the fix
    resp = login(client, USER, PASSWORD)
    assert resp.status_code == 401 and "Wrong user name or password." in resp.text
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # logged once


def test_users_add_refuses_passwords_longer_than_sign_in_reads(make_app, users_file: Path) -> None:
    from twiml_assets.web.users import MAX_PASSWORD

    store = UserStore(users_file)
    with pytest.raises(UsersError, match=f"at most {MAX_PASSWORD} characters"):
        store.add("bob", "p" * (MAX_PASSWORD + 1))
    assert "bob" not in store.users()
    store.add("bob", "p" * MAX_PASSWORD)
    assert login(client_of(make_app()), "bob", "p" * MAX_PASSWORD).status_code == 303


def test_ipv4_mapped_peers_match_the_trusted_proxies(make_app, users_file: Path) -> None:
    assert parse_networks("::ffff:10.0.0.0/104, ::ffff:192.0.2.1") == (
        parse_networks("10.0.0.0/8, 192.0.2.1")
    )
    for trusted in ("10.0.0.0/8", "::ffff:10.0.0.0/104"):
        app = make_app(
            proxy_user_header="X-Forwarded-User", trusted_proxies=parse_networks(trusted)
        )
        headers = {"x-forwarded-user": "carol", "x-forwarded-proto": "https"}
        for peer in ("10.1.2.3", "::ffff:10.1.2.3", "::FFFF:a01:203"):
            page = client_of(app, peer, headers=headers).get("/upload").text
            assert 'Signed in as <strong id="signed-in-as">carol' in page, (trusted, peer)
        outsider = client_of(app, "::ffff:203.0.113.5", headers=headers)
        assert "Signed in as" not in outsider.get("/upload").text
    # The address counted and audited is the IPv4 one.
    client = client_of(make_app(), "::ffff:198.51.100.7")
    assert login(client, USER, "a wrong guess").status_code == 401
    entry = json.loads((users_file.parent / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["address"] == "198.51.100.7"


def test_uploads_refused_at_registration_answer_clearly_and_do_not_count(
    make_app, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import twiml_assets.audio.uploads as uploads
    import twiml_assets.web.app as web_app
    from resources.audio import AudioDecodeError
    from resources.storage import StorageUnavailableError
    from twiml_assets.audio.fingerprint import ChromaprintMissingError

    caplog.set_level(logging.INFO)
    client = sign_in(client_of(make_app(uploads_per_hour=1)))
    seeds = iter(range(10, 100))

    def upload(json_answer: bool = True) -> Any:
        files = {"audio": ("talk.wav", wav_bytes(0.2, next(seeds)))}
        return client.post("/upload", files=files, headers=JSON if json_answer else {})

    def fails(exc: Exception) -> Callable[..., Any]:
        def raiser(*args: Any, **kwargs: Any) -> Any:
            raise exc

        return raiser

    missing = "fpcalc/libchromaprint is missing (apt install libchromaprint-tools)"
    monkeypatch.setattr(uploads, "fingerprint_file", fails(ChromaprintMissingError(missing)))
    for _ in range(2):
        resp = upload()
        assert resp.status_code == 503 and resp.json()["error"] == missing
    assert upload(json_answer=False).status_code == 503
    assert caplog.text.count("cannot be fingerprinted on this host") == 1  # logged once

    monkeypatch.setattr(uploads, "fingerprint_file", fails(AudioDecodeError("cut off")))
    resp = upload()
    assert resp.status_code == 422 and "cannot be decoded" in resp.json()["error"]
    monkeypatch.undo()

    monkeypatch.setattr(web_app, "register_upload", fails(StorageUnavailableError("s3 down")))
    resp = upload()
    assert resp.status_code == 503 and resp.json()["error"] == "storage unavailable, try again"
    page = upload(json_answer=False)
    assert page.status_code == 503 and "storage unavailable, try again" in page.text
    assert "s3 down" not in page.text and "storage error while registering" in caplog.text
    monkeypatch.undo()

    # None of the refusals used the one upload an hour.
    assert upload().status_code == 202
    assert upload().status_code == 429


def test_the_episode_page_reads_the_link_once(make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    import twiml_assets.web.app as web_app

    calls: list[str] = []
    real = web_app.read_link

    def read_link(storage: Any, key: str) -> Any:
        calls.append(key)
        return real(storage, key)

    monkeypatch.setattr(web_app, "read_link", read_link)
    client = client_of(make_app())
    assert client.get("/episodes/ep-2").status_code == 200 and calls == ["ep-2"]
    state = client.get("/api/episodes/ep-2").json()
    assert "link" in state and state["link"] is None and calls == ["ep-2", "ep-2"]


# -- attacker probes: lock-outs from elsewhere, Host, copied session cookies ---------------------
def test_failures_from_other_addresses_never_lock_out_the_right_password(make_app) -> None:
    app = make_app(login_max_failures=3)
    attacker = client_of(app, "203.0.113.66")
    for _ in range(3):
        assert login(attacker, USER, "a wrong guess").status_code == 401
    # The guessing address is throttled, whatever it sends...
    assert login(attacker, USER, PASSWORD).status_code == 429
    assert login(attacker, "bob", "another guess").status_code == 429
    # ...a second guessing address gets one guess at the name, then waits too...
    helper = client_of(app, "203.0.113.67")
    assert login(helper, USER, "a wrong guess").status_code == 401
    assert login(helper, USER, "one more guess").status_code == 429
    # ...and alice signs in from her own address, which has not failed.
    assert login(client_of(app, "198.51.100.7"), USER, PASSWORD).status_code == 303
    assert login(client_of(app, "192.0.2.8"), USER, PASSWORD).status_code == 303
    # A wrong password from her address is throttled there as usual.
    mine = client_of(app, "198.51.100.7")
    for _ in range(3):
        assert login(mine, USER, "typo typo").status_code == 401
    assert login(mine, USER, PASSWORD).status_code == 429


def test_only_this_sites_host_names_are_answered(make_app, dagster: FakeDagster) -> None:
    # Without TWIML_WEB_PUBLIC_URL: loopback names only.
    local = make_app(public_url=None)
    for base in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        assert client_of(local, base_url=base).get("/").status_code == 200, base
    for base in ("http://evil.example:8000", "http://testserver", "http://127.0.0.1.evil.example"):
        resp = client_of(local, base_url=base).get("/")
        assert resp.status_code == 400 and "TWIML_WEB_PUBLIC_URL" in resp.text, base
        assert "script-src 'self'" in resp.headers["content-security-policy"]
    # The Origin of a POST is the loopback Host's own origin, scheme and port included.
    signed = sign_in(client_of(local, base_url="http://127.0.0.1:8000"))
    for origin in ("http://localhost:8000", "https://127.0.0.1:8000", "http://127.0.0.1:8001"):
        resp = signed.post("/episodes/ep-2/transcribe", headers={"origin": origin})
        assert resp.status_code == 403, origin
    resp = signed.post("/episodes/ep-2/transcribe", headers={"origin": "http://127.0.0.1:8000"})
    assert resp.status_code == 303

    # Proxy mode, proxy on this machine: a DNS-rebinding page (evil.example resolving to
    # 127.0.0.1) reaches the app from the trusted address and sends the user header itself.
    app = make_app(
        proxy_user_header="X-Forwarded-User",
        trusted_proxies=parse_networks("127.0.0.1"),
        public_url="https://transcripts.example.org",
    )
    rebound = client_of(
        app,
        "127.0.0.1",
        base_url="http://evil.example:8000",
        headers={"x-forwarded-user": "alice", "origin": "http://evil.example:8000"},
    )
    page = rebound.get("/upload")
    assert page.status_code == 400 and "Signed in as" not in page.text
    launches = len(dagster.ops("TwimlLaunch"))
    assert rebound.post("/episodes/ep-3/transcribe", headers=JSON).status_code == 400
    assert len(dagster.ops("TwimlLaunch")) == launches
    # Through the proxy (Host: the public name), the user header works, and a POST's Origin
    # must be the public origin: https, that host, port 443.
    proxy = client_of(
        app,
        "127.0.0.1",
        base_url="http://transcripts.example.org",
        headers={"x-forwarded-user": "carol", "x-forwarded-proto": "https"},
    )
    page = proxy.get("/upload")
    assert 'Signed in as <strong id="signed-in-as">carol' in page.text
    token = {**JSON, "x-csrf-token": csrf_token(page.text)}
    for origin in ("http://transcripts.example.org", "https://transcripts.example.org:8443"):
        resp = proxy.post("/episodes/ep-3/transcribe", headers={**token, "origin": origin})
        assert resp.status_code == 403, origin
    origin = "https://transcripts.example.org"
    resp = proxy.post("/episodes/ep-3/transcribe", headers={**token, "origin": origin})
    assert resp.status_code == 202


def test_signing_out_ends_the_session_for_copies_of_its_cookie_too(
    make_app, users_file: Path
) -> None:
    app = make_app()
    client = sign_in(client_of(app))
    token = client.headers["x-csrf-token"]
    copied = client_of(app, "203.0.113.9", cookies=dict(client.cookies))
    other = sign_in(client_of(app))  # alice in another browser: a session of its own
    assert "Signed in as" in copied.get("/").text

    assert client.post("/logout").status_code == 303
    assert "Signed in as" not in copied.get("/").text
    resp = copied.post("/episodes/ep-2/transcribe", headers={**JSON, "x-csrf-token": token})
    assert resp.status_code == 401
    # A restart does not bring it back; the other browser stays signed in.
    restarted = client_of(make_app(), cookies=dict(copied.cookies))
    assert "Signed in as" not in restarted.get("/").text
    assert "Signed in as" in other.get("/").text
    assert "Signed in as" in client_of(make_app(), cookies=dict(other.cookies)).get("/").text
    ended = users_file.parent / "ended_sessions.json"
    assert ended.stat().st_mode & 0o777 == 0o600 and token not in ended.read_text()

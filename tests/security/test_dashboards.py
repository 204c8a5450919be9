"""Issue #15, item 4: the dashboards as an attacker tries them, over HTTP (TestClient, or the real
uvicorn server where threads and streams matter), each refusal next to the legitimate use it keeps.

Command tests run on the local stack's real Mosquitto with a car (paho, its certificate) that
executes and acknowledges through the edge's ``CommandProcessor``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

import requests
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from carpulse.stack import free_port
from crm.schema import AuditRecord
from crm.store import CrmStore
from dashboards import auth
from dashboards.app import DashboardConfig, create_app
from dashboards.auth import DashboardUser
from dashboards.users import DEMO_PASSWORD
from tests.unit.dashboards.conftest import VIN_A, VIN_A2, VIN_B, csrf_of, login, make_store

pytestmark = pytest.mark.security


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crm") / "crm.sqlite"
    make_store(path).engine.dispose()
    return path


def _app(tmp_path: Path, template_db: Path, **cfg: Any) -> tuple[Any, CrmStore, str]:
    db = tmp_path / "crm.sqlite"
    shutil.copy(template_db, db)
    url = f"sqlite:///{db}"
    kw: dict[str, Any] = {"reveal_seconds": 60, "coupon_templates": ["SERVICE10"]} | cfg
    return create_app(DashboardConfig(crm_url=url, **kw)), CrmStore.from_url(url), url


@pytest.fixture
def world(tmp_path: Path, template_db: Path) -> tuple[Any, CrmStore, str]:
    return _app(tmp_path, template_db)


def _client(app: Any, host: str = "testclient") -> TestClient:
    return TestClient(app, base_url="https://testserver", client=(host, 50000))


def _rows(store: CrmStore, action: str) -> list[AuditRecord]:
    with store.tx() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def _set_user(store: CrmStore, name: str, **values: Any) -> None:
    with store.tx() as s:
        s.execute(update(DashboardUser).where(DashboardUser.username == name).values(**values))


# ----- the audit page ----------------------------------------------------------------------------
def test_audit_page_shows_only_the_admins_dealer_and_reads_are_audited(world: Any) -> None:
    app, store, _ = world
    with _client(app) as b:  # dealer-b's agent leaves traces: a login, a search
        login(b, "agent-b")
        b.get("/console", params={"q": "BBB001"})
        b.get(f"/console/vehicles/{VIN_B}")
    with _client(app) as a:
        login(a, "agent")
        a.get("/console", params={"q": "DEMO001"})
    with _client(app) as admin:
        login(admin, "admin")
        page = admin.get("/audit")
        assert page.status_code == 200
        assert VIN_A in page.text  # the dealer's own rows (its vehicles' ownership records)
        assert "console.search" in page.text  # and what its own staff did
        assert VIN_B not in page.text and "agent-b" not in page.text  # refused: dealer-b's rows
    with _client(app) as platform:
        login(platform, "platform")
        everything = platform.get("/audit").text
        assert VIN_B in everything and "agent-b" in everything and VIN_A in everything
        assert platform.get("/console").status_code == 403  # no customer screens
    reads = _rows(store, "audit.view")
    assert {(r.actor, r.dealer_id, r.detail["scope"]) for r in reads} == {
        ("admin", "dealer-a", "dealer-a"), ("platform", None, "all")
    }  # fmt: skip
    assert reads[0].detail["rows"] > 0
    with _client(app) as admin2:  # the dealer's admin sees that their read was recorded
        login(admin2, "admin")
        assert "audit.view" in admin2.get("/audit").text


# ----- login throttling and argon2 ---------------------------------------------------------------
def _try(c: TestClient, user: str, password: str) -> Any:
    token = csrf_of(c.get("/login").text)
    return c.post("/login", data={"username": user, "password": password, "csrf_token": token},
                  follow_redirects=False)  # fmt: skip


def test_wrong_passwords_for_one_account_are_throttled(tmp_path: Path, template_db: Path) -> None:
    app, store, _ = _app(tmp_path, template_db, login_max_account_failures=5, login_window_s=4.0)
    with _client(app) as c:
        codes = [_try(c, "agent", f"guess-{i:04d}").status_code for i in range(5)]
        assert codes == [401] * 5
        t0 = time.monotonic()
        locked = _try(c, "agent", DEMO_PASSWORD)  # even the right password: no check at all
        assert locked.status_code == 429
        assert 1 <= int(locked.headers["retry-after"]) <= 4
        assert _try(c, "admin", DEMO_PASSWORD).status_code == 303  # other accounts unaffected
    assert len(_rows(store, "login.failed")) == 5  # the throttled attempt checked no password
    time.sleep(max(0.0, 4.2 - (time.monotonic() - t0)))
    with _client(app) as c2:  # the window passed: the owner logs in
        assert _try(c2, "agent", DEMO_PASSWORD).status_code == 303
        assert c2.get("/console").status_code == 200


def test_guessing_across_accounts_from_one_address_is_throttled(
    tmp_path: Path, template_db: Path
) -> None:
    app, _store, _ = _app(tmp_path, template_db, login_max_address_failures=6)
    with _client(app, "192.0.2.7") as c:
        for i in range(6):
            assert _try(c, f"user{i}", "wrong-password").status_code == 401
        r = _try(c, "advisor", DEMO_PASSWORD)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    with _client(app, "192.0.2.8") as other:  # another address is not punished
        assert _try(other, "advisor", DEMO_PASSWORD).status_code == 303


def _server(app: Any) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                return url, server, th
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError("the dashboard did not start")


@pytest.fixture
def served(tmp_path: Path, template_db: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    cfg = getattr(request, "param", {})
    app, store, _ = _app(tmp_path, template_db, secure_cookies=False, **cfg)
    url, server, th = _server(app)
    try:
        yield url, store, app
    finally:
        server.should_exit = True
        th.join(10)


def _http_login(url: str, user: str, password: str = DEMO_PASSWORD) -> tuple[requests.Session, int]:
    s = requests.Session()
    token = csrf_of(s.get(url + "/login", timeout=10).text)
    r = s.post(url + "/login", data={"username": user, "password": password, "csrf_token": token},
               allow_redirects=False, timeout=30)  # fmt: skip
    return s, r.status_code


@pytest.mark.parametrize(
    "served", [{"password_checks": 2, "login_max_address_failures": 1000}], indirect=True
)
def test_a_login_flood_runs_at_most_n_password_checks_at_once(served: Any) -> None:
    url = served[0]
    gate = auth.GATE
    assert gate.limit == 2

    def one(i: int) -> tuple[int, str | None]:
        s = requests.Session()
        token = csrf_of(s.get(url + "/login", timeout=10).text)
        r = s.post(url + "/login", data={"username": f"flood{i}", "password": "x" * 12,
                                         "csrf_token": token}, timeout=60)  # fmt: skip
        return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    assert {code for code, _ in results} <= {401, 503}
    assert all(wait for code, wait in results if code == 503)  # a busy answer says when
    assert 1 <= gate.peak <= 2  # refused: never more than two argon2 runs at once
    _session, code = _http_login(url, "agent")  # and a real user still gets in
    assert code == 303


@pytest.mark.parametrize(
    "served", [{"password_checks": 1, "password_check_wait_s": 0.0}], indirect=True
)
def test_no_free_password_check_answers_503_with_retry_after(served: Any) -> None:
    url = served[0]
    held = threading.Event()
    release = threading.Event()
    gate = auth.GATE

    def hog() -> None:  # what a concurrent login does: hold the one slot
        assert gate._sem.acquire(timeout=5)
        held.set()
        release.wait(10)
        gate._sem.release()

    th = threading.Thread(target=hog)
    th.start()
    assert held.wait(5)
    s = requests.Session()
    token = csrf_of(s.get(url + "/login", timeout=10).text)
    r = s.post(url + "/login", data={"username": "agent", "password": DEMO_PASSWORD,
                                     "csrf_token": token}, timeout=10)  # fmt: skip
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    release.set()
    th.join(10)
    assert _http_login(url, "agent")[1] == 303


# ----- sessions follow the user --------------------------------------------------------------------
def test_a_demoted_or_deactivated_user_loses_access_at_the_next_request(world: Any) -> None:
    app, store, _ = world
    with _client(app) as admin, _client(app) as agent:
        login(admin, "admin")
        login(agent, "agent")
        assert admin.get("/audit").status_code == 200
        assert agent.get("/console").status_code == 200
        _set_user(store, "admin", role="call_centre_agent")
        assert admin.get("/audit").status_code == 403  # refused: the role is read again
        assert admin.get("/console").status_code == 200  # what the new role allows still works
        _set_user(store, "agent", active=False)
        assert agent.get("/console", headers={"accept": "application/json"}).status_code == 401
        _set_user(store, "agent", active=True)  # the session ended; reactivation needs a login
        assert agent.get("/console", headers={"accept": "application/json"}).status_code == 401
        login(agent, "agent")
        assert agent.get("/console").status_code == 200


@pytest.mark.parametrize("served", [{"session_recheck_s": 0.3}], indirect=True)
def test_a_live_stream_closes_when_its_session_is_no_longer_valid(served: Any) -> None:
    url, store = served[0], served[1]
    streams: dict[str, list[str]] = {"agent": [], "agent-b": []}
    ended: dict[str, threading.Event] = {k: threading.Event() for k in streams}

    def follow(user: str) -> requests.Response:
        s, code = _http_login(url, user)
        assert code == 303
        r = s.get(url + "/console/events", stream=True, timeout=30)
        assert r.status_code == 200

        def read() -> None:
            try:
                for line in r.iter_lines(decode_unicode=True):
                    streams[user].append(line)
            except Exception:  # the test closes the other stream under the reader
                pass
            ended[user].set()

        threading.Thread(target=read, daemon=True).start()
        return r

    follow("agent")
    other = follow("agent-b")
    time.sleep(1.0)  # several re-checks: a valid session's stream stays open
    assert not ended["agent"].is_set() and not ended["agent-b"].is_set()
    _set_user(store, "agent", active=False)
    assert ended["agent"].wait(10), "the deactivated user's stream is still open"
    assert "event: end" in streams["agent"]
    assert not ended["agent-b"].is_set()  # the other user's stream is untouched
    other.close()


# ----- vehicles ------------------------------------------------------------------------------------
def test_another_dealers_vin_answers_like_an_unknown_one(world: Any) -> None:
    app, store, _ = world
    unknown = "ZZZZ0000000000009"
    with _client(app) as c:
        token = login(c, "agent")
        for path in ("/console/vehicles/{}", "/console/vehicles/{}/state"):
            theirs, nothing = c.get(path.format(VIN_B)), c.get(path.format(unknown))
            assert theirs.status_code == nothing.status_code == 404
            assert theirs.json()["detail"].replace(VIN_B, "V") == nothing.json()["detail"].replace(
                unknown, "V"
            )
        data = {"reason": "crash-response", "ticket": "T-1", "csrf_token": token}
        assert c.post(f"/console/vehicles/{VIN_B}/reveal", data=data).status_code == 404
        assert c.post(f"/console/vehicles/{unknown}/reveal", data=data).status_code == 404
        assert c.get(f"/console/vehicles/{VIN_A}").status_code == 200  # its own: shown
    assert {r.subject for r in _rows(store, "vehicle.denied")} == {VIN_B}  # still on record


def test_percent_and_underscore_are_not_wildcards_in_vin_search(world: Any) -> None:
    app, _store, _ = world
    with _client(app) as c:
        login(c, "agent")

        def hits(q: str) -> set[str]:
            html = c.get("/console", params={"q": q}, headers={"hx-request": "true"}).text
            return set(re.findall(r"/console/vehicles/([A-Z0-9]{17})", html))

        for q in ("%", "%%%", "CPDEM%", "_PDEM", "CPDEM_00000", "%0001"):
            assert hits(q) == set(), q  # refused: a literal, not a pattern
        assert hits("CPDEM0000") == {VIN_A, VIN_A2}  # a real prefix still finds the cars


def test_config_show_masks_credentials_inside_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    import carpulse.cli
    from carpulse.cli import app

    monkeypatch.setattr(carpulse.cli, "_state", {})  # the CLI caches its settings per process
    monkeypatch.setenv("CARPULSE_INFLUX__URL", "http://reader:hunter2-secret@influx.local:8086")
    monkeypatch.setenv("CARPULSE_KAFKA__BOOTSTRAP", "kafka.local:9092")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "hunter2-secret" not in result.output and "reader:" not in result.output
    shown = json.loads(result.stdout)
    assert shown["influx"]["url"] == "http://********@influx.local:8086"  # still says where
    assert shown["kafka"]["bootstrap"] == "kafka.local:9092"


# ----- commands on the real broker -----------------------------------------------------------------
DEVICE = "sec-car-1"
VIN_C = "CPSEC000000000001"


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The local stack's real Mosquitto (its PKI, listeners and ACLs) and nothing else: commands
    need no Kafka or InfluxDB."""
    from carpulse.stack import Stack
    from core.config import StackSettings, load_settings

    stack = Stack(
        StackSettings(
            data_dir=tmp_path_factory.mktemp("stack"),
            mqtt_device_port=free_port(),
            mqtt_service_port=free_port(),
            kafka_port=free_port(),
            influx_port=free_port(),
            influx_rpc_port=free_port(),
        )
    )
    stack.prepare()
    argv, log, _port = stack._commands()["mosquitto"]
    t0 = time.monotonic()
    stack._spawn("mosquitto", argv(), log)
    try:
        stack._wait_healthy("mosquitto", log, t0)
        stack.settings = load_settings(stack.config_file)  # type: ignore[attr-defined]
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def commands(mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    paho = pytest.importorskip("paho.mqtt.client")
    local_stack = mosquitto
    from core.commands import encode_ack
    from core.signing import load_public_key
    from dashboards.commands import generate_signing_key
    from dashboards.users import seed_demo_crm
    from edge.commands import CommandProcessor

    tmp = tmp_path_factory.mktemp("sec-commands")
    db = tmp / "crm.sqlite"
    store = make_store(db)
    seed_demo_crm(store, [(VIN_C, DEVICE, "SEC001")], "dealer-a")
    key = generate_signing_key(tmp / "pki")
    got: list[dict[str, Any]] = []
    proc = CommandProcessor(DEVICE, load_public_key(tmp / "pki" / "cmd-sign.pub"),
                            {"navigate", "lock", "unlock"}, tmp / "edge",
                            {"navigate": lambda c: got.append(c.args) or {"shown": True},
                             "lock": lambda c: None, "unlock": lambda c: None})  # fmt: skip
    cert, pkey = local_stack.provision_device(DEVICE)
    car = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=paho.MQTTv311)
    car.tls_set(ca_certs=str(local_stack.pki.ca_cert), certfile=str(cert), keyfile=str(pkey))
    ready = threading.Event()

    def on_connect(client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        client.subscribe(f"carpulse/v1/{DEVICE}/cmd/+", qos=1)
        ready.set()

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        client.publish(proc.ack_topic, encode_ack(proc.process(msg.topic, msg.payload)), qos=1)

    car.on_connect, car.on_message = on_connect, on_message
    car.connect(local_stack.s.host, local_stack.s.mqtt_device_port)
    car.loop_start()
    assert ready.wait(15), "the car could not connect"
    s = local_stack.settings
    cfg = DashboardConfig(
        crm_url=f"sqlite:///{db}",
        mqtt=s.mqtt.model_copy(update={"username": "carpulse-console"}),
        mqtt_password=local_stack.secret_file("carpulse-console").read_text().strip(),
        signing_key=key,
    )
    app = create_app(cfg)
    try:
        with TestClient(app, base_url="https://testserver") as c:
            assert c.get("/healthz").json()["commands"] is True
            yield app, store, got
    finally:
        car.loop_stop()
        car.disconnect()


def _ack(c: TestClient, cid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        doc: dict[str, Any] = c.get(f"/console/commands/{cid}").json()
        if doc["status"] != "pending":
            return doc
        time.sleep(0.1)
    raise AssertionError(f"no ack for {cid}")


@pytest.mark.integration
def test_destinations_are_kept_hashed_in_the_audit_log(commands: Any) -> None:
    app, store, got = commands
    address, lat, lon = "88 Secret Garden Road, Minhang", 31.0123, 121.4567
    with TestClient(app, base_url="https://testserver") as c:
        token = login(c, "agent")
        r1 = c.post(f"/console/vehicles/{VIN_C}/destination",
                    data={"address": address, "csrf_token": token})  # fmt: skip
        r2 = c.post(f"/console/vehicles/{VIN_C}/destination",
                    data={"lat": lat, "lon": lon, "csrf_token": token})  # fmt: skip
        assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
        assert _ack(c, r1.json()["id"])["status"] == "accepted"  # the car got the real thing
        assert _ack(c, r2.json()["id"])["status"] == "accepted"
    assert {"address": address} in got and {"lat": lat, "lon": lon} in got
    rows = _rows(store, "command.navigate")
    assert len(rows) == 2
    logged = json.dumps([r.detail for r in rows])
    for secret in ("Secret Garden", "Minhang", "31.0123", "121.4567"):
        assert secret not in logged  # refused: no place in the audit log
    key = app.state.sessions.secret("audit")  # who holds the key can prove what was sent
    for args, row in (({"address": address}, rows[0]), ({"lat": lat, "lon": lon}, rows[1])):
        canon = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        mac = hmac.new(key, canon.encode(), hashlib.sha256).hexdigest()
        assert row.detail["args"]["hmac_sha256"] == mac


@pytest.mark.integration
def test_command_status_is_answered_to_its_sender_only(commands: Any) -> None:
    app, _store, _got = commands
    with TestClient(app, base_url="https://testserver") as agent:
        token = login(agent, "agent")
        r = agent.post(f"/console/vehicles/{VIN_C}/doors",
                       data={"action": "lock", "confirm": VIN_C[-6:], "csrf_token": token})  # fmt: skip
        assert r.status_code == 200
        cid = r.json()["id"]
        assert _ack(agent, cid)["status"] == "accepted"  # the sender follows it
    with TestClient(app, base_url="https://testserver") as admin:
        login(admin, "admin")  # same dealer, may send commands too: still not theirs
        other = admin.get(f"/console/commands/{cid}")
        unknown = admin.get(f"/console/commands/{'0' * 32}")
        assert other.status_code == unknown.status_code == 404
        assert "accepted" not in other.text

"""``carpulse crm import DIR``: DMS exports upserted idempotently, every reject as file:line: reason,
hostile files rejected line by line without a traceback (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from carpulse.cli import app
from core.errors import FieldError
from crm import store as st
from crm.fields import check_phone, check_vin, vin_check_digit
from crm.migrate import upgrade
from crm.onboard import import_folder
from crm.schema import Consent, Customer, CustomerIdentity, Ownership, PlateAssignment, Vehicle
from crm.tables import CustomerContact, CustomerRef, ServiceRecord
from tests.unit.crm.conftest import migrated_engine

VIN_A = "LSVAA4183E2000001"  # Chinese (GB 16735 check digit)
VIN_B = "LFV2A2159J3000003"
VIN_US = "1HGCM82633A004352"  # a real Honda VIN: check digit 3
TODAY = dt.date(2026, 12, 1)

CUSTOMERS = """customer_ref,name,phone,email,wechat_openid,member_card,dms_internal
C001,王伟,138 0013 8000,wang@example.com,oABC_123,M0001,x
C002,李娜,+86-139-0013-9000,,,,y
"""
VEHICLES = f"""plate,vin,model,year,device_id
沪A·12345,{VIN_A},Lavida,2020,car-1
沪B99999,{VIN_B},Tiguan,2019,car-2
"""
OWNERSHIPS = f"""vin,customer_ref,from_date,to_date
{VIN_A},C002,2020-03-01,2023-05-01
{VIN_A},C001,2023-05-01,
{VIN_B},C002,2019-08-15,
"""
CONSENTS = """customer_ref,purpose,granted,at
C001,location,yes,2023-05-01T10:00:00+08:00
C001,marketing,no,2023-05-01
"""
SERVICES = f"""vin,date,odometer_km,work,amount
{VIN_A},2024-05-02,15020,oil and filter,680.00
{VIN_A},2025-05-10,30110.5,"oil, filter
and brake fluid","1,280.50"
{VIN_B},2025-01-20,41000,inspection,
"""


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        data = text.encode() if isinstance(text, str) else text
        (folder / name).write_bytes(data)
    return folder


def good(folder: Path) -> Path:
    return write(folder, {"customers.csv": CUSTOMERS, "vehicles.csv": VEHICLES,
                          "ownerships.csv": OWNERSHIPS, "consents.csv": CONSENTS,
                          "service_records.csv": SERVICES})  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[st.CrmStore]:
    engine = migrated_engine(request, tmp_path)
    yield st.CrmStore(engine)
    engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[st.CrmStore]:
    engine = st.make_engine(f"sqlite:///{tmp_path / 'crm.sqlite'}")
    upgrade(engine)
    yield st.CrmStore(engine)
    engine.dispose()


def counts(report: object) -> dict[str, tuple[int, int, int, int]]:
    files = report.files  # type: ignore[attr-defined]
    return {n: (r.inserted, r.updated, r.unchanged, r.rejected) for n, r in files.items()
            if r.present}  # fmt: skip


# ----- field rules ----------------------------------------------------------------------------
def test_vin_check_digit_matches_published_examples() -> None:
    assert vin_check_digit("1M8GDM9AXKP042788") == "X"  # 49 CFR 565 worked example
    assert vin_check_digit("11111111111111111") == "1"
    assert check_vin(" 1hgcm82633a004352 ") == VIN_US


@pytest.mark.parametrize(
    ("vin", "why"),
    [
        ("LSVAA4183E200000", "17 characters, this one 16"),
        ("LSVAA4183E20000O1", "I, O and Q"),
        ("LSVAA4182E2000001", r"check digit \(position 9\) is '2'.*'3' \(China, GB 16735\)"),
        ("1HGCM82643A004352", "North America"),
    ],
)
def test_vin_rules(vin: str, why: str) -> None:
    with pytest.raises(FieldError, match=why):
        check_vin(vin)


def test_european_vins_carry_no_check_digit() -> None:
    assert check_vin("WVWZZZ1KZ8W000001") == "WVWZZZ1KZ8W000001"
    assert check_vin("LSVAA4182E2000001", check_digit=False) == "LSVAA4182E2000001"


def test_phones_become_e164_with_china_as_default_region() -> None:
    assert check_phone("138 0013 8000") == "+8613800138000"
    assert check_phone("+1 650-253-0000") == "+16502530000"
    assert check_phone("010 6552 9988") == "+861065529988"  # Beijing landline
    for bad in ("12345", "+86 138", "call me"):
        with pytest.raises(FieldError):
            check_phone(bad)


# ----- the import -----------------------------------------------------------------------------
def test_import_is_complete_and_idempotent(store: st.CrmStore, tmp_path: Path) -> None:
    folder = good(tmp_path / "dms")
    first = import_folder(store, folder, dealer_id="dealer-a", today=TODAY)
    assert first.rejects == []
    assert counts(first) == {
        "customers.csv": (2, 0, 0, 0), "vehicles.csv": (2, 0, 0, 0),
        "ownerships.csv": (3, 0, 0, 0), "consents.csv": (2, 0, 0, 0),
        "service_records.csv": (3, 0, 0, 0),
    }  # fmt: skip
    with store.tx() as s:
        wang = s.scalar(select(CustomerRef.customer_id).where(CustomerRef.ref == "C001"))
        assert wang is not None
        idents = {
            (i.kind, i.value)
            for i in s.scalars(select(CustomerIdentity).where(CustomerIdentity.customer_id == wang))
        }
        assert idents == {("phone", "+8613800138000"), ("wechat_openid", "oABC_123"),
                          ("member_card", "M0001")}  # fmt: skip
        assert s.get(CustomerContact, wang).email == "wang@example.com"  # type: ignore[union-attr]
        assert s.get(Customer, wang).dealer_id == "dealer-a"  # type: ignore[union-attr]
        assert st.owner_at(s, VIN_A, dt.datetime(2024, 1, 1, tzinfo=dt.UTC)) == wang
        assert st.has_consent(s, wang, "location") and not st.has_consent(s, wang, "marketing")
        v = s.get(Vehicle, VIN_A)
        assert v is not None and (v.model, v.model_year, v.device_id) == ("Lavida", 2020, "car-1")
        plates = s.scalars(select(PlateAssignment.plate).where(PlateAssignment.vin == VIN_A))
        assert list(plates) == ["沪A12345"]
        rec = s.scalar(select(ServiceRecord).where(ServiceRecord.odometer_km == 30110.5))
        assert rec is not None and rec.work == "oil, filter\nand brake fluid"
        assert str(rec.amount) == "1280.50"
    again = import_folder(store, folder, dealer_id="dealer-a", today=TODAY)
    assert again.rejects == []
    assert all(c[0] == c[1] == c[3] == 0 for c in counts(again).values()), counts(again)
    # a changed row updates its record and nothing else
    write(folder, {"customers.csv": CUSTOMERS.replace("李娜", "李娜娜"),
                   "vehicles.csv": VEHICLES.replace("沪B99999", "沪B88888")})  # fmt: skip
    changed = import_folder(store, folder, dealer_id="dealer-a", today=TODAY)
    assert counts(changed)["customers.csv"] == (0, 1, 1, 0)
    assert counts(changed)["vehicles.csv"] == (0, 1, 1, 0)
    with store.tx() as s:
        history = s.execute(
            select(PlateAssignment.plate, PlateAssignment.valid_to)
            .where(PlateAssignment.vin == VIN_B)
            .order_by(PlateAssignment.id)
        ).all()
        assert [p for p, _ in history] == ["沪B99999", "沪B88888"]
        assert history[0][1] is not None and history[1][1] is None
        assert s.scalar(select(func.count(Customer.id))) == 2


def test_rejects_name_file_line_and_reason_and_leave_no_trace(
    store: st.CrmStore, tmp_path: Path
) -> None:
    folder = good(tmp_path / "dms")
    write(folder, {
        "customers.csv": CUSTOMERS + "C003,张三,13800138000,,,,\n"  # C001's phone
                         "C004,赵六,not-a-phone,,,,\n",
        "ownerships.csv": OWNERSHIPS + f"{VIN_B},C001,2020-01-01,2021-01-01\n"  # overlaps C002
                          f"{VIN_B},C999,2018-01-01,2018-06-01\n"
                          f"LSVAA4182E2999999,C001,2018-01-01,\n"
                          f"{VIN_A},C001,2019-01-01,2018-01-01\n",
        "consents.csv": CONSENTS + "C002,telepathy,yes,2024-01-01\nC002,location,maybe,2024-01-01\n"
                        "C001,location,no,2023-05-01T10:00:00+08:00\n",
        "service_records.csv": SERVICES + f"{VIN_A},2025-09-01,29000,oil,\n"
                               f"{VIN_B},2099-01-01,50000,oil,\n",
    })  # fmt: skip
    report = import_folder(store, folder, today=TODAY)
    tails = [r.split(str(folder) + "/", 1)[1] for r in report.rejects]
    assert tails == [
        "customers.csv:4: phone +8613800138000 belongs to customer_ref 'C001'",
        "customers.csv:5: phone: not a phone number: 'not-a-phone'",
        "ownerships.csv:5: ownership 2020-01-01..2021-01-01 overlaps the ownership of customer "
        + tails[2].split("customer ", 1)[1].split(" ")[0]
        + " 2019-08-15..now",
        "ownerships.csv:6: customer_ref 'C999' is unknown (not in customers.csv or the CRM)",
        "ownerships.csv:7: vin LSVAA4182E2999999 is unknown (not in vehicles.csv or the CRM)",
        "ownerships.csv:8: to_date 2018-01-01 is not after from_date 2019-01-01",
        "consents.csv:4: purpose: 'telepathy' is not one of location, face, marketing",
        "consents.csv:5: granted: not yes/no: 'maybe' (true/false, yes/no, 1/0)",
        "consents.csv:6: same customer_ref, purpose, at as line 2",
        "service_records.csv:6: odometer_km 29000 on 2025-09-01 does not fit 30110.5 km on "
        "2025-05-10 (an odometer never goes backwards)",
        "service_records.csv:7: date 2099-01-01 is in the future",
    ]
    with store.tx() as s:  # the rejected customers were never half-written
        assert s.scalar(select(func.count(Customer.id))) == 2
        assert s.scalar(select(func.count(CustomerRef.id))) == 2
        assert s.scalar(select(func.count(Ownership.id))) == 3
        assert s.scalar(select(func.count(Consent.id))) == 2


def test_dry_run_writes_nothing(sqlite_store: st.CrmStore, tmp_path: Path) -> None:
    report = import_folder(sqlite_store, good(tmp_path / "dms"), dry_run=True, today=TODAY)
    assert counts(report)["customers.csv"] == (2, 0, 0, 0)
    with sqlite_store.tx() as s:
        assert s.scalar(select(func.count(Customer.id))) == 0
        assert s.scalar(select(func.count(ServiceRecord.id))) == 0


def test_an_existing_customer_gets_its_dms_reference(
    sqlite_store: st.CrmStore, tmp_path: Path
) -> None:
    with sqlite_store.tx() as s:  # known from the app by phone before the DMS import
        known = st.find_or_create_customer(s, {"phone": "+8613800138000"}, "Wang (app)")
    report = import_folder(sqlite_store, good(tmp_path / "dms"), today=TODAY)
    assert counts(report)["customers.csv"] == (1, 1, 0, 0)
    with sqlite_store.tx() as s:
        assert s.scalar(select(CustomerRef.customer_id).where(CustomerRef.ref == "C001")) == known


# ----- hostile files --------------------------------------------------------------------------
def test_hostile_input_gives_reject_lines_never_a_traceback(
    sqlite_store: st.CrmStore, tmp_path: Path
) -> None:
    head = b"customer_ref,name,phone\n"
    rows = [
        b"H1,ok,13800138001\n",  # 2
        b"H2," + b"x" * 200_000 + b",13800138002\n",  # 3: over the csv field limit
        b"H3,na\x00me,13800138003\n",  # 4
        b'H4,=HYPERLINK("http://evil"),13800138004\n',  # 5
        b"H5,\xff\xfe bad bytes,13800138005\n",  # 6
        b"H6,@SUM(A1),13800138006\n",  # 7
        b"H7," + b"," * 300 + b"\n",  # 8: 302 cells
        b"H8," + b"y" * (1024 * 1024 + 10) + b"\n",  # 9: a line over 1 MiB
        b"H9,\xe7\x8e\x8b\xe4\xb8\x80,13800138009\n",  # 10: 王一, fine
    ]
    folder = write(tmp_path / "dms", {"customers.csv": b"\xef\xbb\xbf" + head + b"".join(rows)})
    report = import_folder(sqlite_store, folder, today=TODAY)
    tails = [r.split("customers.csv:", 1)[1] for r in report.rejects]
    assert [t.split(":")[0] for t in tails] == ["3", "4", "5", "6", "7", "8", "9"]
    assert "field larger than field limit" in tails[0]
    assert "NUL byte" in tails[1]
    assert "like a spreadsheet formula" in tails[2] and "like a spreadsheet formula" in tails[4]
    assert "not UTF-8 (byte 0xff)" in tails[3]
    assert "302 cells" in tails[5]
    assert "longer than 1048576 characters" in tails[6]
    assert counts(report)["customers.csv"] == (2, 0, 0, 7)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"name,phone\nx,1\n", "header lacks column(s) customer_ref"),
        (b"," * 1_000_000 + b"customer_ref\n", "header has 1000001 columns; at most 256"),
        (b"", "empty (no header row)"),
        (b"customer_ref,customer_ref\nA,B\n", "column 'customer_ref' appears twice"),
    ],
)
def test_a_file_that_cannot_be_read_is_skipped_whole(
    sqlite_store: st.CrmStore, tmp_path: Path, content: bytes, why: str
) -> None:
    folder = write(tmp_path / "dms", {"customers.csv": content})
    report = import_folder(sqlite_store, folder, today=TODAY)
    assert len(report.rejects) == 1 and why in report.rejects[0], report.rejects
    assert report.rejects[0].endswith("(file skipped)")


# ----- the command ----------------------------------------------------------------------------
def test_command_json_summary_and_exit_codes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    folder = good(tmp_path / "dms")
    runner = CliRunner()
    assert runner.invoke(app, ["crm", "migrate", "--db", db]).exit_code == 0
    res = runner.invoke(app, ["crm", "import", str(folder), "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["files"]["vehicles.csv"] == {"present": True, "inserted": 2, "updated": 0,
                                            "unchanged": 0, "rejected": 0}  # fmt: skip
    write(folder, {"consents.csv": CONSENTS + "C001,face,perhaps,2024-01-01\n"})
    res = runner.invoke(app, ["crm", "import", str(folder), "--db", db])
    assert res.exit_code == 1
    assert "consents.csv:4: granted: not yes/no: 'perhaps'" in res.output
    assert "unchanged" in res.output
    res = runner.invoke(app, ["crm", "import", str(tmp_path / "nowhere"), "--db", db])
    assert res.exit_code != 0 and "not a directory" in str(res.exception)


def test_the_real_command_prints_lines_not_tracebacks(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = write(tmp_path / "dms", {"customers.csv": b"customer_ref,name\nA,\xff\x00=1\n",
                                      "vehicles.csv": b"vin\n" + b"Q" * 17 + b"\n"})  # fmt: skip
    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    assert CliRunner().invoke(app, ["crm", "migrate", "--db", db]).exit_code == 0
    proc = subprocess.run([sys.executable, "-m", "carpulse", "crm", "import", str(folder),
                           "--db", db], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{folder}/customers.csv:2: name: not UTF-8 (byte 0xff)" in proc.stderr
    assert f"{folder}/vehicles.csv:2: vin: VIN has characters a VIN never contains" in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "carpulse", "crm", "import",
                              str(tmp_path / "nope"), "--db", db],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "carpulse: error:" in missing.stderr and "not a directory" in missing.stderr


def test_another_dealers_vehicles_and_customers_are_not_touched(
    sqlite_store: st.CrmStore, tmp_path: Path
) -> None:
    folder = good(tmp_path / "dms")
    assert import_folder(sqlite_store, folder, dealer_id="dealer-a", today=TODAY).rejects == []
    write(folder, {"customers.csv": CUSTOMERS.replace("C001", "B001").replace("C002", "B002")})
    for name in ("ownerships.csv", "consents.csv", "service_records.csv"):
        (folder / name).unlink()
    report = import_folder(sqlite_store, folder, dealer_id="dealer-b", today=TODAY)
    tails = [r.split(str(folder) + "/", 1)[1] for r in report.rejects]
    assert tails == [
        "customers.csv:2: phone +8613800138000 belongs to a customer of dealer 'dealer-a'",
        "customers.csv:3: phone +8613900139000 belongs to a customer of dealer 'dealer-a'",
        f"vehicles.csv:2: vin {VIN_A} is a vehicle of dealer 'dealer-a'",
        f"vehicles.csv:3: vin {VIN_B} is a vehicle of dealer 'dealer-a'",
    ]

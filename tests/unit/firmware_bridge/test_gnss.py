"""NMEA 0183 parsing into VSS samples; garbage and checksum errors counted; a pty as the receiver."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.gnss import (
    ALT,
    EXTENSIONS,
    FIX_TYPE,
    GNSS_SPEED,
    H_ACCURACY,
    HDOP,
    HEADING,
    LAT,
    LON,
    GnssReader,
    NmeaParser,
    fix_type,
)
from firmware_bridge.obd.pids import vss_catalog
from tests.conftest import require_data

GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
VTG = "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48"
GSA_2D = "$GPGSA,A,2,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*38"


def _values(parser: NmeaParser) -> dict[str, list[float]]:
    samples, _ = parser.drain()
    out: dict[str, list[float]] = {}
    for name, _, value in samples.records():
        out.setdefault(name, []).append(value)
    return out


def test_gga_rmc_vtg() -> None:
    p = NmeaParser(uere_m=4.0)
    p.feed_many([GGA, RMC, VTG], 1_000)
    got = _values(p)
    assert got[LAT] == pytest.approx([48.1173, 48.1173])
    assert got[LON] == pytest.approx([11.516667, 11.516667], rel=1e-6)
    assert got[ALT] == [545.4]
    assert got[HDOP] == [0.9] and got[H_ACCURACY] == pytest.approx([3.6])
    assert got[GNSS_SPEED] == pytest.approx([22.4 * 1.852, 10.2])
    assert got[HEADING] == pytest.approx([84.4, 54.7])
    assert p.counters["sentences"] == 3


def test_fix_type_and_no_fix() -> None:
    p = NmeaParser()
    p.feed(GSA_2D, 1)
    p.feed(GGA, 2)
    p.feed("$GPGGA,,,,,,0,,,,,,,,*66", 3)
    p.feed(_checksum("GPRMC,123519,V,,,,,,,230394,,"), 4)  # V: receiver warning, no position
    samples, text = p.drain()
    assert text == [(FIX_TYPE, 2, "TWO_D"), (FIX_TYPE, 3, "NONE")]
    assert {n for n, _, _ in samples.records()} >= {LAT, LON}
    assert [v for n, _, v in samples.records() if n == LAT] == [pytest.approx(48.1173)]
    assert fix_type(4, 3) == "THREE_D_GROUND_BASED_AUGMENTATION"
    assert fix_type(6, 3) == "NONE"


def test_garbage_and_checksum_errors_are_counted_and_dropped() -> None:
    p = NmeaParser()
    bad_sum = GGA[:-2] + "00"
    p.feed_many(
        [b"\xff\xfe\x00garbage", bad_sum, GGA.split("*")[0], "$GPGGA,1,2*00", "x" * 400, GGA], 1
    )
    assert p.counters["garbage"] == 2
    assert p.counters["checksum_error"] == 2
    assert p.counters["no_checksum"] == 1
    assert _values(p)[LAT] == [pytest.approx(48.1173)]  # the good line still counts


def test_vss_paths() -> None:
    catalog = vss_catalog(require_data("vss/vss.csv"))
    for name in (LAT, LON, ALT, HEADING, H_ACCURACY, FIX_TYPE):
        assert name in catalog
    assert not EXTENSIONS & catalog


def _checksum(body: str) -> str:
    c = 0
    for ch in body:
        c ^= ord(ch)
    return f"${body}*{c:02X}"


_FIELDS = st.text(alphabet="0123456789.,NSEWAVMKT-", max_size=80)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120),
        _FIELDS.map(lambda f: _checksum("GPGGA," + f)),
        _FIELDS.map(lambda f: _checksum("GPRMC," + f)),
        _FIELDS.map(lambda f: _checksum("GPVTG," + f)),
        _FIELDS.map(lambda f: _checksum("GPGSA," + f)),
        st.text(max_size=120),
    )
)
def test_fuzz_nmea_never_raises(line: str | bytes) -> None:
    p = NmeaParser()
    p.feed(line, 1)
    samples, _ = p.drain()
    for name, _, value in samples.records():
        assert value == value  # no NaN
        if name == LAT:
            assert -90 <= value <= 90
        if name == HEADING:
            assert 0 <= value < 360


def test_reader_over_a_pty() -> None:
    master, slave = os.openpty()
    data = ("\r\n".join([GGA, "$$garbage", RMC, VTG]) + "\r\n").encode()
    reader = GnssReader(os.ttyname(slave)).open()  # first: opening flushes the tty's input
    writer = threading.Thread(target=os.write, args=(master, data))
    writer.start()
    try:
        samples, text = reader.read(0.5)
    finally:
        reader.close()
        writer.join()
        os.close(master)
        os.close(slave)
    names = {n for n, _, _ in samples.records()}
    assert {LAT, LON, HEADING, GNSS_SPEED} <= names
    assert text and reader.parser.counters["no_checksum"] == 1

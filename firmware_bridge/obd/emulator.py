"""Run the third-party ELM327-emulator (``python -m elm``) on a pseudo-terminal, for tests and benches."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from core.errors import SourceUnavailableError


class ElmEmulator:
    """ELM327-emulator in batch mode; ``port`` is a stable symlink to its pty (like /dev/ttyUSB0).

    Commands written to the emulator's stdin are its interpreter's: Python statements with
    ``emulator`` bound to the running ``Elm`` object (used to set DTCs, delays and scenarios).
    """

    def __init__(self, workdir: Path | None = None, scenario: str = "car") -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="carpulse-elm-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.scenario = scenario
        self.port = str(self.workdir / "obd0")
        self.pty = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ElmEmulator:
        """Start (or restart) the emulator and point ``port`` at its pty."""
        self.stop()
        out = self.workdir / "elm-out.txt"
        out.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "elm", "-b", str(out), "-s", self.scenario],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,  # it writes elm.log in its working directory
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = out.read_text(errors="replace").split("\n", 1)[0] if out.exists() else ""
            if first.startswith("/dev/"):
                self.pty = first.strip()
                tmp_link = Path(self.port + ".new")
                tmp_link.unlink(missing_ok=True)
                tmp_link.symlink_to(self.pty)
                os.replace(tmp_link, self.port)
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SourceUnavailableError(
            "ELM327-emulator did not start (is elm327-emulator installed?)"
        )

    def run(self, statement: str, settle: float = 0.2) -> None:
        """Execute one statement in the emulator's interpreter."""
        if self._proc is None or self._proc.stdin is None:
            raise SourceUnavailableError("ELM327-emulator is not running")
        self._proc.stdin.write(statement.encode() + b"\n")
        self._proc.stdin.flush()
        time.sleep(settle)  # the interpreter thread picks it up asynchronously

    def set_delay(self, seconds: float) -> None:
        """ECU answer delay (UDS P2) per request: real ECUs take 10-50 ms.

        The emulator builds a multi-PID answer by answering each PID internally, sleeping its
        delay every time; a real ECU answers the whole request within one P2. The wrapper
        installed here keeps one delay per request, so batching is measured as on a car.
        """
        # The interpreter turns a literal backslash-n into a newline (multi-line statements).
        wrapper = "\\n".join(
            (
                "if not getattr(emulator, '_carpulse_wrapped', False):",
                "    def _one_delay(cmd, header, _orig=emulator.multi_pid_answer, _emu=emulator):",
                "        saved, _emu.delay = _emu.delay, 0",
                "        try:",
                "            return _orig(cmd, header)",
                "        finally:",
                "            _emu.delay = saved",
                "    emulator.multi_pid_answer = _one_delay",
                "    emulator._carpulse_wrapped = True",
            )
        )
        self.run(wrapper)
        self.run(f"emulator.delay = {float(seconds)!r}")

    def set_dtcs(self, stored: list[str], pending: list[str] | None = None) -> None:
        """DTCs as 4 hex digits each (``0143`` is P0143, ``C123`` is U0123)."""
        self.run(
            "import elm.obd_message as _m; "
            f"_m.DTC_STORED[:] = {list(stored)!r}; _m.DTC_PENDING[:] = {list(pending or [])!r}; "
            "emulator.counters.pop('cmd_dtc_cleared', None)"
        )

    def set_freeze_frame(self, dtc: str, values: dict[int, str]) -> None:
        """Mode 02 frame 0 as an engine ECU keeps it: ``dtc`` (4 hex digits, as in ``set_dtcs``)
        stored the frame, ``values`` maps a PID to its data bytes in hex (``{0x0D: "34"}``).

        The emulator answers mode 02 with negative responses only; this adds answers to
        ``02 <pid> 00`` requests (the car scenario), the rest stay negative.
        """
        entries = {0x02: dtc.upper(), **{p: v.upper() for p, v in values.items()}}
        # Its own 020200 entry ("no DTC stored the frame") would shadow ours.
        self.run("emulator.ObdMessage['car'].pop('INJ_MF_2', None)", settle=0.05)
        for pid, data in entries.items():
            body = f"42 {pid:02X} 00 " + " ".join(data[i : i + 2] for i in range(0, len(data), 2))
            size = len(body.split())
            self.run(
                "import elm.obd_message as _m; "
                f"emulator.ObdMessage['car']['CARPULSE_FF_{pid:02X}'] = {{"
                f"'Request': '^02{pid:02X}00' + _m.ELM_FOOTER, 'Descr': 'freeze frame', "
                "'Header': _m.ECU_ADDR_E, "
                f"'Response': _m.HD(_m.ECU_R_ADDR_E) + _m.SZ('{size:02X}') + _m.DT({body!r})}}; "
                "emulator.set_sorted_obd_msg()",
                settle=0.05,
            )
        time.sleep(0.2)

    def set_scenario(self, name: str) -> None:
        """``car`` (engine running) or ``engineoff`` (ignition off: NO DATA / UNABLE TO CONNECT)."""
        self.run(f"emulator.scenario = {name!r}; emulator.set_sorted_obd_msg()")

    def stop(self) -> None:
        """Stop the emulator: its pty disappears, as an unplugged adapter does."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> ElmEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

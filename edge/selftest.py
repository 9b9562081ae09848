"""`pingan-edge selftest`: the technician's on-site check of every part of a unit.

It owns the hardware for the minute it takes: the station daemon must not hold the pins,
the loudspeaker and the outbox meanwhile. It takes the station's data-directory lock (a
station cannot start half-way through), and a station already running under systemd is
stopped first and started again afterwards (a test press must not page the township as a
real alarm). The result goes into the station's own outbox as a `selftest` event, so the
township learns, in sequence and durably, that the unit was checked on site; the station
delivers it once it runs again.

Each check gives one row: pass, fail (with what to do) or "not fitted". Exit status 0
means no row failed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from edge.clock import clock_synced
from edge.config import Config
from edge.contract import events

Status = Literal["pass", "fail", "not_fitted"]
STATUS_TEXT = {"pass": "通过 PASS", "fail": "失败 FAIL", "not_fitted": "未安装 not fitted"}
SERVICE = "pingan-edge.service"
THROTTLED_SYSFS = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
# vcgencmd get_throttled bits: now (0-3) and since boot (16-19).
THROTTLE_BITS = {0: ("欠压", "under-voltage"), 1: ("降频", "frequency capped"),
                 2: ("限速", "throttled"), 3: ("温度软限", "soft temperature limit")}
MIN_FREE_BYTES = 64 * 1024 * 1024
POLL_S = 0.02  # a button's level, read this often while a press is awaited


@dataclass
class Row:
    check: str  # stable machine name
    zh: str
    en: str
    status: Status
    detail: str = ""
    action_zh: str = ""
    action_en: str = ""


class Operator:
    """The technician: told what to do, asked what they saw (one line per answer)."""

    def __init__(self, out: IO[str], answers: IO[str], timeout_s: float) -> None:
        self.out, self.answers, self.timeout_s = out, answers, timeout_s

    def say(self, zh: str, en: str) -> None:
        print(f">>> {zh} / {en}", file=self.out, flush=True)

    def confirm(self, zh: str, en: str) -> bool | None:
        """y/n from the technician; None when nobody answered in time."""
        self.say(f"{zh} [y/n]", f"{en} [y/n]")
        line = _readline(self.answers, self.timeout_s)
        return None if line is None else line.strip().lower() in ("y", "yes", "是", "好")


def _readline(stream: IO[str], timeout_s: float) -> str | None:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True,
                              name="selftest-answer")
    reader.start()
    reader.join(timeout_s)
    return got[0] if got and got[0] else None


class Selftest:
    def __init__(self, cfg: Config, operator: Operator, *, button_timeout_s: float = 30.0,
                 broker_timeout_s: float = 8.0, factory: Any = None,
                 gpio_dev: Path = Path("/dev")) -> None:
        """`factory`: pins the caller can reach (a MockFactory it drives); None makes them
        from `pins.factory`. `gpio_dev`: where the kernel's GPIO chips would be."""
        self.cfg = cfg
        self.op = operator
        self.button_timeout_s = button_timeout_s
        self.broker_timeout_s = broker_timeout_s
        self.factory: Any = factory
        self._own_factory = factory is None
        self.gpio_dev = gpio_dev
        self.factory_error = ""
        # Why the pins rows are "not fitted" (no GPIO to test), if they are.
        self.pins_absent = ""
        self._null_audio = False
        self.rows: list[Row] = []

    # -- the checks, in the order a technician walks round the unit ------------------
    def checks(self) -> list[Callable[[], Row]]:
        return [self.led, self.panic_button, self.broadcast_button, self.loudspeaker,
                self.microphone, self.camera, self.broker, self.certificate, self.clock,
                self.disk, self.power, self.modem]

    def run(self) -> list[Row]:
        from edge.unit.pins import PinFactoryError, make_factory

        if self.factory is None:
            if self.cfg.pins.factory == "mock":
                # Simulated pins made in this process: nobody can press them or see them lit.
                self.pins_absent = ("pins.factory = mock: simulated pins, no GPIO on this "
                                    "unit to test")
            else:
                try:
                    self.factory = make_factory(self.cfg.pins.factory)
                except PinFactoryError as exc:
                    if not any(self.gpio_dev.glob("gpiochip*")):
                        # Every Pi has its SoC's chip; no chip at all is a machine without
                        # GPIO (an emulator, a PC), not a fault to fix on the unit.
                        self.pins_absent = (f"no GPIO chip ({self.gpio_dev}/gpiochip*) on "
                                            "this machine")
                    else:
                        self.factory_error = str(exc)
        for check in self.checks():
            try:
                row = check()
            except Exception as exc:  # one broken part must not hide the others
                row = Row(check.__name__, check.__name__, check.__name__, "fail",
                          f"{type(exc).__name__}: {exc}", "记录此信息并联系技术支持",
                          "note this and call support")
            self.rows.append(row)
        if self.factory is not None and self._own_factory:
            self.factory.close()
        return self.rows

    def _no_pins(self, name: str, zh: str, en: str) -> Row | None:
        if self.pins_absent:
            return Row(name, zh, en, "not_fitted", self.pins_absent)
        if self.factory is None:
            return Row(name, zh, en, "fail", self.factory_error, "检查 pins.factory 设置",
                       "check pins.factory in station.toml")
        return None

    def led(self) -> Row:
        from gpiozero import LED

        if (row := self._no_pins("alarm_led", "报警灯", "alarm LED")) is not None:
            return row
        led = LED(self.cfg.pins.alarm_led, pin_factory=self.factory)
        try:
            led.on()
            seen = self.op.confirm("报警灯亮了吗？", "Is the alarm LED lit?")
        finally:
            led.off()
            led.close()
        if seen:
            return Row("alarm_led", "报警灯", "alarm LED", "pass")
        return Row("alarm_led", "报警灯", "alarm LED", "fail",
                   "no answer" if seen is None else "not lit",
                   f"检查 GPIO{self.cfg.pins.alarm_led} 到报警灯的接线和灯珠",
                   f"check the wiring from GPIO{self.cfg.pins.alarm_led} and the LED")

    def _button(self, name: str, pin: int, zh: str, en: str) -> Row:
        """Passes on a release, then a press, then a release, read from the line's level:
        a line that reads pressed all the time (a stuck button, a short) is no press."""
        from gpiozero import Button

        if (row := self._no_pins(name, zh, en)) is not None:
            return row
        button = Button(pin, pull_up=self.cfg.pins.pull_up, bounce_time=None,
                        pin_factory=self.factory)
        edges: list[bool] = []  # the chip's edge interrupt, which the station waits on
        button.when_activated = lambda: edges.append(True)
        wait_s = self.button_timeout_s
        # A shorted line reads pressed: to ground with the pull-up, else to 3.3 V.
        rail_zh, rail_en = ("地线", "ground") if self.cfg.pins.pull_up else ("3.3V", "3.3 V")
        try:
            if button.is_active:
                self.op.say(f"{zh}读数为按下：请松开（{wait_s:.0f} 秒内）",
                            f"the {en} reads pressed: release it (within {wait_s:.0f} s)")
                if not _wait_level(button, False, wait_s):
                    return Row(name, zh, en, "fail", f"GPIO{pin} reads pressed all the time "
                               f"({wait_s:.0f} s)",
                               f"{zh}一直处于按下状态：检查按钮是否卡住，GPIO{pin} 是否与"
                               f"{rail_zh}短路",
                               f"the {en} reads pressed all the time: check whether it "
                               f"sticks, and for a short from GPIO{pin} to {rail_en}")
            self.op.say(f"现在请按下{zh}（{wait_s:.0f} 秒内）",
                        f"press the {en} now (within {wait_s:.0f} s)")
            if not _wait_level(button, True, wait_s):
                return Row(name, zh, en, "fail", f"no press on GPIO{pin} in {wait_s:.0f} s",
                           f"检查{zh}到 GPIO{pin} 和{rail_zh}的接线",
                           f"check the {en} wiring to GPIO{pin} and {rail_en}")
            if not _wait_level(button, False, wait_s):
                return Row(name, zh, en, "fail", f"GPIO{pin} still pressed {wait_s:.0f} s "
                           "after the press", f"{zh}按下后没有弹起：检查按钮是否卡住",
                           f"the {en} did not come back up: check whether it sticks")
        finally:
            button.close()
        return Row(name, zh, en, "pass", "" if edges else
                   f"pressed and released (level); no edge interrupt seen on GPIO{pin}")

    def panic_button(self) -> Row:
        return self._button("panic_button", self.cfg.pins.panic, "报警按钮", "panic button")

    def broadcast_button(self) -> Row:
        return self._button("broadcast_button", self.cfg.pins.broadcast, "广播按钮",
                            "broadcast button")

    def _audio_ready(self) -> None:
        from edge.audio.output import use_null_device

        if self.cfg.audio.output == "null" and not self._null_audio:
            self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
            use_null_device(self.cfg.data_dir, self.cfg.audio.sample_rate)
            self._null_audio = True

    def loudspeaker(self) -> Row:
        from gpiozero import DigitalOutputDevice

        from edge.audio.output import AudioUnavailable, Output

        zh, en = "喇叭测试音", "loudspeaker test tone"
        if not self.cfg.audio.enabled:
            return Row("loudspeaker", zh, en, "not_fitted", "audio.enabled = false")
        self._audio_ready()
        rate = self.cfg.audio.sample_rate
        t = np.arange(rate, dtype=np.float32) / rate
        tone = (0.5 * self.cfg.audio.volume * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
        amp = (DigitalOutputDevice(self.cfg.pins.amp_relay, pin_factory=self.factory)
               if self.factory is not None else None)
        out = Output(self.cfg.audio)
        try:
            if amp is not None:
                amp.on()
                time.sleep(self.cfg.audio.amp_warm_up_s)
            self.op.say("播放 1 秒 1000 Hz 测试音", "playing a 1 s 1000 Hz test tone")
            out.open()
            for i in range(0, len(tone), out.block):
                out.write(tone[i:i + out.block])
        except AudioUnavailable as exc:
            return Row("loudspeaker", zh, en, "fail", str(exc), "检查声卡和 audio.device 设置",
                       "check the sound card and audio.device")
        finally:
            out.close()
            if amp is not None:
                amp.off()
                amp.close()
        heard = self.op.confirm("听到测试音了吗？", "Did you hear the test tone?")
        if heard:
            return Row("loudspeaker", zh, en, "pass")
        return Row("loudspeaker", zh, en, "fail", "no answer" if heard is None else "not heard",
                   f"检查功放电源继电器 GPIO{self.cfg.pins.amp_relay}、功放和喇叭线",
                   f"check the amplifier relay (GPIO{self.cfg.pins.amp_relay}), the amplifier "
                   "and the speaker cable")

    def microphone(self) -> Row:
        zh, en = "对讲话筒", "push-to-talk microphone"
        if not self.cfg.audio.enabled:
            return Row("microphone", zh, en, "not_fitted", "audio.enabled = false")
        self._audio_ready()
        from edge.audio.output import device_arg

        self.op.say("请对着话筒说话 2 秒", "speak into the microphone for 2 s")
        try:
            import sounddevice as sd

            rate = self.cfg.audio.sample_rate
            rec = sd.rec(int(rate * 1.0), samplerate=rate, channels=1, dtype="float32",
                         device=device_arg(self.cfg.audio.mic_device))
            sd.wait()
        except Exception as exc:  # PortAudioError, ValueError: no such device
            return Row("microphone", zh, en, "fail", f"{type(exc).__name__}: {exc}",
                       "检查话筒连接和 audio.mic_device 设置",
                       "check the microphone and audio.mic_device")
        level = float(np.sqrt(np.mean(np.square(rec)))) if rec.size else 0.0
        if level > 0.005:
            return Row("microphone", zh, en, "pass", f"level {level:.3f}")
        return Row("microphone", zh, en, "fail", f"silent (level {level:.4f})",
                   "话筒无声：检查话筒线和增益", "no sound: check the microphone cable and gain")

    def camera(self) -> Row:
        zh, en = "摄像头与人形识别", "camera and person detector"
        cam = self.cfg.camera
        if not cam.enabled:
            return Row("camera", zh, en, "not_fitted", "camera.enabled = false")
        from edge.camera import make_detector
        from edge.camera.sources import make_source

        source = make_source(cam)
        try:
            source.open()
            frame = source.read()
        except OSError as exc:
            return Row("camera", zh, en, "fail", str(exc), "检查摄像头线缆、供电和 camera 设置",
                       "check the camera cable, power and the [camera] settings")
        finally:
            source.close()
        if frame is None:
            return Row("camera", zh, en, "fail", "no frame", "检查摄像头", "check the camera")
        detector = make_detector(cam)
        h, w = frame.shape[:2]
        found = detector.detect(frame, (0, 0, w, h))
        return Row("camera", zh, en, "pass", f"frame {w}x{h}, {len(found)} person(s)")

    def broker(self) -> Row:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        b = self.cfg.broker
        zh, en = "乡镇平台连接", "township broker"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.station.id,
                             protocol=mqtt.MQTTv5)
        if b.tls:
            client.tls_set(ca_certs=b.ca_file or None, certfile=b.cert_file or None,
                           keyfile=b.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
        if b.username:
            client.username_pw_set(b.username, self.cfg.password())
        result: list[str] = []
        done = threading.Event()

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            result.append(str(reason))
            done.set()

        client.on_connect = on_connect
        try:
            client.connect(b.host, b.port, keepalive=10)
            client.loop_start()
            done.wait(self.broker_timeout_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            result.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.loop_stop()
            with contextlib.suppress(Exception):
                client.disconnect()
        where = f"{b.host}:{b.port}"
        if result == ["Success"]:
            return Row("broker", zh, en, "pass", f"{where}, TLS {'on' if b.tls else 'off'}")
        return Row("broker", zh, en, "fail", f"{where}: {result[0] if result else 'timed out'}",
                   "检查网线/Wi-Fi/4G 信号和防火墙；证书被拒则请乡镇重新签发",
                   "check the cable/Wi-Fi/4G signal and firewall; if the certificate is "
                   "refused, ask the township for a new bundle")

    def certificate(self) -> Row:
        from cryptography import x509

        zh, en = "本站证书", "station certificate"
        path = self.cfg.broker.cert_file
        if not path:
            return Row("certificate", zh, en, "not_fitted", "no client certificate configured")
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            return Row("certificate", zh, en, "fail", f"{path}: {exc}",
                       "重新写入本站身份（firmware/flash）", "re-flash the station's identity")
        now = dt.datetime.now(dt.UTC)
        left = cert.not_valid_after_utc - now
        detail = f"valid until {cert.not_valid_after_utc:%Y-%m-%d}"
        if cert.not_valid_before_utc > now or left.total_seconds() <= 0:
            return Row("certificate", zh, en, "fail", f"not valid now ({detail}; clock "
                       f"{now:%Y-%m-%d})", "检查时钟；过期则请乡镇重新签发证书",
                       "check the clock; if expired, ask the township for a new bundle")
        if left < dt.timedelta(days=30):
            return Row("certificate", zh, en, "fail", f"expires in {left.days} days "
                       f"({detail})", "请乡镇尽快重新签发证书", "ask the township for a new "
                       "bundle soon")
        return Row("certificate", zh, en, "pass", detail)

    def clock(self) -> Row:
        zh, en = "时钟同步", "clock synchronised"
        if clock_synced():
            return Row("clock", zh, en, "pass", dt.datetime.now(dt.UTC).isoformat(
                timespec="seconds"))
        return Row("clock", zh, en, "fail", "the kernel reports the clock unsynchronised",
                   "检查网络和 NTP（timedatectl status）；无网络时 4G 模块可授时",
                   "check the network and NTP (timedatectl status)")

    def disk(self) -> Row:
        from edge.store.outbox import Outbox, OutboxError

        zh, en = "存储空间与事件库", "disk space and outbox"
        data = self.cfg.data_dir
        data.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(data)
        if usage.free < MIN_FREE_BYTES:
            return Row("disk", zh, en, "fail", f"{usage.free // 2**20} MiB free in {data}",
                       "清理数据分区或更换更大的存储卡", "free space on the data partition")
        try:
            outbox = Outbox(data / "outbox.db", max_bytes=self.cfg.outbox.max_bytes,
                            keep_delivered=self.cfg.outbox.keep_delivered)
            outbox.start()
            outbox.close()
        except (OutboxError, OSError, Exception) as exc:
            return Row("disk", zh, en, "fail", f"outbox: {type(exc).__name__}: {exc}",
                       "数据分区只读或损坏：重启；仍失败则更换存储卡",
                       "the data partition is read-only or damaged: reboot, else replace "
                       "the card")
        return Row("disk", zh, en, "pass", f"{usage.free // 2**20} MiB free, outbox writable")

    def power(self) -> Row:
        zh, en = "供电与降频", "power and throttling"
        value = _throttled()
        if value is None:
            return Row("power", zh, en, "not_fitted", "no Raspberry Pi firmware "
                       "(get_throttled) on this machine")
        now = [f"{z}/{e}" for bit, (z, e) in THROTTLE_BITS.items() if value & (1 << bit)]
        past = [f"{z}/{e}" for bit, (z, e) in THROTTLE_BITS.items() if value & (1 << (bit + 16))]
        if not now and not past:
            return Row("power", zh, en, "pass", f"throttled=0x{value:x}")
        return Row("power", zh, en, "fail", f"throttled=0x{value:x} now: {now or '-'}; since "
                   f"boot: {past or '-'}", "更换 5V/3A 电源或更短更粗的电源线，检查散热",
                   "use a 5 V 3 A supply and a short thick cable; check cooling")

    def modem(self) -> Row:
        """The 4G modem (edge/modem) when `modem.enabled`: its own report, read here."""
        zh, en = "4G 模块与信号", "4G modem and signal"
        if not self.cfg.modem.enabled:
            return Row("modem", zh, en, "not_fitted", "modem.enabled = false")
        from edge.health import Health
        from edge.modem.device import Modem

        modem = Modem(self.cfg.modem, Health())
        modem.start()
        try:
            deadline = time.monotonic() + self.cfg.modem.rdy_timeout_s + 10
            report = modem.report()
            while time.monotonic() < deadline and (report.state == "starting" or (
                    report.state == "ok" and report.reg is None)):
                time.sleep(0.2)
                report = modem.report()
        finally:
            modem.close()
        detail = (f"{report.state}, {report.model or '?'}, reg {report.reg or '-'}, "
                  f"{report.operator or '-'} {report.tech or ''}, "
                  f"{report.csq_dbm if report.csq_dbm is not None else '?'} dBm")
        if report.state == "ok" and report.reg in ("home", "roaming"):
            return Row("modem", zh, en, "pass", detail)
        return Row("modem", zh, en, "fail", detail, "检查 SIM 卡、天线、APN 和模块供电",
                   f"check the SIM card, the antenna, the APN and the modem's power "
                   f"({self.cfg.modem.port})")


def _wait_level(button: Any, active: bool, timeout_s: float) -> bool:
    """Polls the line's level: a press shows even on a chip that raises no edge (QEMU's
    Pi GPIO model), and one held before the row started is not taken for a new one."""
    deadline = time.monotonic() + timeout_s
    while button.is_active != active:
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def _throttled() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(THROTTLED_SYSFS.read_text().strip(), 16)
    if shutil.which("vcgencmd"):
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True)
        if out.returncode == 0 and "=" in out.stdout:
            return int(out.stdout.strip().split("=")[1], 16)
    return None


def _pad(text: str, width: int) -> str:
    """Left-aligned in `width` terminal columns: a Chinese character takes two."""
    used = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(1, width - used)


def table(rows: list[Row]) -> str:
    lines = [_pad("项目 / Check", 44) + _pad("结果 / Result", 20) + "说明 / Detail"]
    for r in rows:
        lines.append(_pad(f"{r.zh} {r.en}", 44) + _pad(STATUS_TEXT[r.status], 20) + r.detail)
        if r.status == "fail":
            lines.append(_pad("", 44) + _pad("→ 处理 / do:", 20) +
                         f"{r.action_zh} / {r.action_en}")
    failed = sum(r.status == "fail" for r in rows)
    lines.append("全部通过 / all passed" if not failed else
                 f"{failed} 项失败 / {failed} failed")
    return "\n".join(lines)


def event(cfg: Config, rows: list[Row], by: str) -> events.Selftest:
    return events.Selftest(
        **events.stamp(), station=cfg.station.id, township=cfg.station.township,
        payload=events.SelftestPayload(
            passed=not any(r.status == "fail" for r in rows), by=by,
            results=[events.SelftestResult(check=r.check, status=r.status,
                                           detail=r.detail[:500]) for r in rows]))


def record(cfg: Config, ev: events.Selftest) -> int:
    """Into the station's outbox: delivered, in sequence, when the station runs."""
    from edge.store.outbox import Outbox

    outbox = Outbox(cfg.data_dir / "outbox.db", max_bytes=cfg.outbox.max_bytes,
                    keep_delivered=cfg.outbox.keep_delivered)
    outbox.start()
    try:
        return outbox.append(ev).seq
    finally:
        outbox.close()


@contextlib.contextmanager
def own_station(cfg: Config) -> Iterator[None]:
    """Hold the station's lock for the test; stop and restart a systemd-run station."""
    data = cfg.data_dir
    data.mkdir(parents=True, exist_ok=True)
    restart = False
    with os.fdopen(os.open(data / "station.lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            active = shutil.which("systemctl") and subprocess.run(
                ["systemctl", "is-active", "--quiet", SERVICE]).returncode == 0
            if not active:
                raise SystemExit(f"pingan-edge selftest: a station is running with {data} and "
                                 "not under systemd: stop it first (Ctrl-C)") from None
            print(f">>> 暂停站点服务 / stopping {SERVICE} for the test", file=sys.stderr)
            subprocess.run(["systemctl", "stop", SERVICE], check=True)
            restart = True
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            _give_back(data)
            fcntl.flock(lock, fcntl.LOCK_UN)
            if restart:
                print(f">>> 恢复站点服务 / starting {SERVICE} again", file=sys.stderr)
                subprocess.run(["systemctl", "start", "--no-block", SERVICE], check=False)


def _give_back(data: Path) -> None:
    """Run as root, the test may have created files (SQLite's -wal/-shm, the lock, a
    quarantine folder: 0600/0700 under its umask) in the station's data directory: hand
    them to the directory's owner, the station user."""
    if os.geteuid() != 0:
        return
    st = data.stat()
    for path in data.rglob("*"):
        with contextlib.suppress(OSError):
            if (path.is_file() or path.is_dir()) and not path.is_symlink():
                os.chown(path, st.st_uid, st.st_gid)


def main(cfg: Config, *, as_json: bool, button_timeout_s: float) -> int:
    operator = Operator(sys.stderr, sys.stdin, timeout_s=max(button_timeout_s, 5.0))
    with own_station(cfg):
        rows = Selftest(cfg, operator, button_timeout_s=button_timeout_s).run()
        by = os.environ.get("SUDO_USER") or getpass.getuser()
        ev = event(cfg, rows, by)
        try:
            seq: int | None = record(cfg, ev)
        except Exception as exc:  # the disk row already says why; still print the table
            print(f">>> 结果未能存入事件库 / result not stored: {exc}", file=sys.stderr)
            seq = None
    if as_json:
        print(json.dumps({"passed": ev.payload.passed, "event_id": ev.id, "seq": seq,
                          "results": [r.__dict__ for r in rows]}, ensure_ascii=False, indent=2))
    else:
        print(table(rows))
    return 0 if ev.payload.passed else 1

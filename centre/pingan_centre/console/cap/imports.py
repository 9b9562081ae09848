"""What a CAP 1.2 message does to the loudspeakers (docs/cap.md says it for officers).

`take()` reads one message (alert.read), decides, and acts through the console's own
broadcasts (broadcast.send / broadcast.stop: the same commands, results and audit as a
broadcast an officer composes). Every message is recorded as a CapImport and audited
(`cap.import`), whatever its outcome:

- Alert: a text broadcast to the stations of every village whose GB/T 2260 code
  ([cap.areas]) starts with one of the alert's geocodes; emergency priority for Extreme
  and Severe; `expires` from the info (or the received time plus
  cap.default_expires_s), `not_before` from `effective` (else `onset`) when still ahead.
- Update: stops the broadcasts of the alerts it references, then plays like an Alert.
- Cancel: stops the broadcasts of the alerts it references; plays nothing.
- Exercise and Test: only where cap.allow_drills is true, the spoken text starting with
  "演习：" ("Drill: " for a non-Chinese text) and the import marked as a drill.
- System and Draft, a scope other than Public, an alert already expired, one already
  imported: recorded as not played, with the reason.
- Bad XML, a schema-invalid message, no GB/T 2260 geocode, a geocode no village has:
  rejected, with the reason in both languages.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils.translation import gettext_lazy

from pingan_centre.console import broadcast
from pingan_centre.console.cap.alert import NEVER_PLAY, Alert, Info, Rejected, read
from pingan_centre.console.config import CapConfig
from pingan_centre.console.lifecycle import NotAllowed, audit
from pingan_centre.console.link import Effects
from pingan_centre.console.models import CapImport, Station
from pingan_centre.console.words import both

EMERGENCY = ("Extreme", "Severe")
DRILL_PREFIX = ("演习：", "Drill: ")
# GB/T 2260 codes and their 12-digit extension down to the village: province, city,
# county (2 digits each), township, village (3 each).
LEVELS = (2, 2, 2, 3, 3)
Outcome = CapImport.Outcome

STATUS = {"Actual": gettext_lazy("actual"), "Exercise": gettext_lazy("exercise"),
          "System": gettext_lazy("system"), "Test": gettext_lazy("test"),
          "Draft": gettext_lazy("draft")}
MSG_TYPE = {"Alert": gettext_lazy("alert"), "Update": gettext_lazy("update"),
            "Cancel": gettext_lazy("cancel"), "Ack": gettext_lazy("acknowledgement"),
            "Error": gettext_lazy("error")}


def area_prefix(code: str) -> str:
    """The prefix every place inside `code` has: trailing all-zero levels dropped
    ("420100" -> "4201", "420102001000" -> "420102001")."""
    groups, at = [], 0
    for size in LEVELS:
        if at >= len(code):
            break
        groups.append(code[at:at + size])
        at += size
    while len(groups) > 1 and set(groups[-1]) == {"0"}:
        groups.pop()
    return "".join(groups)


def _name(value: str) -> str:
    return value.upper().replace(" ", "").replace("/", "").replace("-", "")


def villages(info_geocodes: list[tuple[str, str]], cfg: CapConfig) -> tuple[list[str],
                                                                            list[str]]:
    """The villages the geocodes cover, and the GB/T 2260 geocodes read."""
    names = {_name(n) for n in cfg.geocode_names}
    codes = sorted({v for n, v in info_geocodes if _name(n) in names and v.isdigit()})
    prefixes = [area_prefix(c) for c in codes]
    matched = sorted(v for v, code in cfg.areas.items()
                     if any(code.startswith(p) for p in prefixes))
    return matched, codes


def take(data: bytes, *, source: str, by: str, now: datetime, cfg: CapConfig,
         effects: Effects) -> CapImport:
    """Read, decide, act, record and audit one CAP message; returns its record."""
    row = CapImport(received_at=now, by=by[:150], source=source[:300],
                    xml=data[:cfg.max_bytes].decode("utf-8", "replace"))
    try:
        if len(data) > cfg.max_bytes:
            raise Rejected(f"文件过大（超过 {cfg.max_bytes >> 10} KiB）",
                           f"the file is too large (over {cfg.max_bytes >> 10} KiB)",
                           f"{len(data)} bytes")
        alert = read(data)
    except Rejected as exc:
        return _record(row, Outcome.REJECTED, exc.reason, exc.detail)
    row.sender, row.identifier, row.sent = (alert.sender[:250], alert.identifier[:250],
                                            alert.sent[:40])
    row.sent_at, row.status, row.msg_type = alert.sent_at, alert.status, alert.msg_type
    row.drill = alert.drill
    info = alert.spoken_info()
    english = alert.english_info()
    row.severity = info.severity if info else ""
    row.text_en = english.words() if english else ""
    with transaction.atomic():
        return _decide(row, alert, info, now=now, cfg=cfg, effects=effects)


def _decide(row: CapImport, alert: Alert, info: Info | None, *, now: datetime,
            cfg: CapConfig, effects: Effects) -> CapImport:
    earlier = CapImport.objects.filter(sender=row.sender, identifier=row.identifier,
                                       sent_at=row.sent_at).exclude(outcome=Outcome.REJECTED)
    if earlier.exists():
        return _record(row, Outcome.IGNORED, both(
            "这条警报已经导入过，不再重复播放",
            "this alert was imported already: not played again"),
            f"{alert.sender},{alert.identifier},{alert.sent}")
    if alert.status in NEVER_PLAY:
        return _record(row, Outcome.IGNORED, both(
            "系统消息和草稿从不播放", "System and Draft messages never play"), alert.status)
    if alert.drill and not cfg.allow_drills:
        return _record(row, Outcome.IGNORED, both(
            "本中心不播放演习和测试警报（设置 cap.allow_drills）",
            "this centre does not play Exercise and Test alerts (setting cap.allow_drills)"),
            alert.status)
    if alert.scope != "Public":
        return _record(row, Outcome.IGNORED, both(
            "只播放面向公众的警报", "only Public alerts play"), f"scope {alert.scope}")
    if alert.msg_type == "Cancel":
        stopped = _stop(alert, row.by, now, effects)
        if not stopped:
            return _record(row, Outcome.IGNORED, both(
                "所引用的警报没有在本中心播放，无可取消",
                "the alerts it references were not played here: nothing to cancel"),
                " ".join(",".join(r) for r in alert.references))
        row.stopped = stopped
        return _record(row, Outcome.CANCELLED, both(
            f"已停止 {len(stopped)} 条广播", f"stopped {len(stopped)} broadcast(s)"))
    if alert.msg_type not in ("Alert", "Update"):
        return _record(row, Outcome.IGNORED, both(
            "确认和错误消息不播放", "Ack and Error messages do not play"), alert.msg_type)
    if info is None:
        return _record(row, Outcome.IGNORED, both(
            "警报没有内容（info），无可播放", "the alert has no info: nothing to say"))
    matched, codes = villages([g for i in alert.infos for g in i.geocodes], cfg)
    if not codes:
        return _record(row, Outcome.REJECTED, both(
            "警报没有行政区划代码（GB/T 2260 geocode），不知道播给哪些村",
            "the alert has no GB/T 2260 geocode: no way to tell which villages"),
            "; ".join(d for i in alert.infos for d in i.area_desc))
    stations = list(Station.objects.filter(village__in=matched).order_by("name"))
    if not stations:
        return _record(row, Outcome.REJECTED, both(
            "警报的地区不属于本乡镇的任何村（或这些村没有站点）",
            "the alert's area is none of this township's villages (or they have no station)"),
            "geocode " + " ".join(codes))
    row.stopped = _stop(alert, row.by, now, effects) if alert.msg_type == "Update" else []
    expires = info.expires or now + timedelta(seconds=cfg.default_expires_s)
    if expires <= now:
        return _record(row, Outcome.IGNORED, both(
            "警报已过期，不播放", "the alert has expired: not played"),
            f"expires {expires.isoformat()}")
    start = info.effective or info.onset
    text = info.words()
    if alert.drill:
        text = DRILL_PREFIX[0 if info.chinese else 1] + text
    row.text = text[:2000]
    try:
        row.broadcast_id = broadcast.send(
            content="text", text=row.text, repeat=cfg.repeat,
            priority="emergency" if info.severity in EMERGENCY else "normal",
            not_before=start if start is not None and start > now else None,
            expires=expires, target="stations", chosen=[s.name for s in stations],
            by=row.by, now=now, effects=effects)
    except broadcast.BadBroadcast as exc:
        return _record(row, Outcome.REJECTED, both(
            "警报无法作为广播发送", "the alert cannot be sent as a broadcast"), str(exc))
    names = ", ".join(matched)
    replaced = (f"；取代 {len(row.stopped)} 条广播", f"; replaces {len(row.stopped)} "
                "broadcast(s)") if row.stopped else ("", "")
    return _record(row, Outcome.BROADCAST, both(
        f"已播往 {len(stations)} 个站点（{names}）{replaced[0]}",
        f"sent to {len(stations)} station(s) ({names}){replaced[1]}"),
        "geocode " + " ".join(codes))


def _stop(alert: Alert, by: str, now: datetime, effects: Effects) -> list[str]:
    """Stop the broadcasts the referenced alerts (and their updates) started."""
    stopped = []
    for sender, identifier, sent in alert.references:
        try:
            sent_at = datetime.fromisoformat(sent)
        except ValueError:
            continue
        for bid in CapImport.objects.filter(
                sender=sender, identifier=identifier, sent_at=sent_at,
                broadcast__isnull=False).values_list("broadcast_id", flat=True):
            try:
                broadcast.stop(str(bid), by, now, effects)
            except NotAllowed:
                continue  # stopped already (by an officer, or an earlier update)
            stopped.append(str(bid))
    return stopped


def _record(row: CapImport, outcome: str, reason: str, detail: str = "") -> CapImport:
    row.outcome, row.reason, row.detail = outcome, reason, detail[:1000]
    row.save()
    audit(row.by, "cap.import", f"cap:{row.pk}", row.received_at, outcome=outcome,
          source=row.source, sender=row.sender, identifier=row.identifier, sent=row.sent,
          status=row.status, msg_type=row.msg_type, drill=row.drill, reason=reason,
          detail=row.detail, broadcast=row.broadcast_id or "", stopped=row.stopped)
    return row

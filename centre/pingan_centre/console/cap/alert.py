"""Reading one CAP 1.2 message: safe XML, the official schema, then the fields we use.

The XML is parsed by defusedxml with DTDs forbidden (a CAP message never needs one: no
entity expansion, no external entity, nothing fetched), then checked against the OASIS
schema vendored beside this file (CAP-v1.2.xsd, see README.md) by xmlschema. Anything
else raises `Rejected`, which says why in both languages, plus a technical detail
(line and column, the element and the schema's complaint) that is the same in both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree
import xmlschema

from pingan_centre.console.words import both

XSD = Path(__file__).with_name("CAP-v1.2.xsd")
NS = "urn:oasis:names:tc:emergency:cap:1.2"
_Q = "{" + NS + "}"
DRILLS = ("Exercise", "Test")
NEVER_PLAY = ("System", "Draft")


class Rejected(ValueError):
    """Not a message the console can act on: `zh` and `en` say why, `detail` where."""

    def __init__(self, zh: str, en: str, detail: str = "") -> None:
        super().__init__(f"{en}: {detail}" if detail else en)
        self.zh, self.en, self.detail = zh, en, detail

    @property
    def reason(self) -> str:
        return both(self.zh, self.en)


@dataclass(frozen=True)
class Info:
    language: str
    event: str
    urgency: str
    severity: str
    certainty: str
    headline: str
    description: str
    instruction: str
    effective: datetime | None
    onset: datetime | None
    expires: datetime | None
    area_desc: tuple[str, ...]
    geocodes: tuple[tuple[str, str], ...]  # (valueName, value)

    @property
    def chinese(self) -> bool:
        return self.language.lower().startswith("zh")

    @property
    def english(self) -> bool:
        # CAP's default language is en-US.
        return self.language.lower().startswith("en")

    def words(self) -> str:
        """What a person should hear: the description (or the headline), then what to do."""
        said = self.description or self.headline or self.event
        return " ".join(s for s in (said, self.instruction) if s)


@dataclass(frozen=True)
class Alert:
    identifier: str
    sender: str
    sent: str
    sent_at: datetime
    status: str
    msg_type: str
    scope: str
    references: tuple[tuple[str, str, str], ...]  # (sender, identifier, sent)
    infos: tuple[Info, ...]

    @property
    def drill(self) -> bool:
        return self.status in DRILLS

    def spoken_info(self) -> Info | None:
        """The info block the stations speak: the Chinese one if there is one."""
        return next((i for i in self.infos if i.chinese), self.infos[0] if self.infos else None)

    def english_info(self) -> Info | None:
        return next((i for i in self.infos if i.english), None)


@functools.cache
def schema() -> xmlschema.XMLSchema:
    """The official CAP 1.2 schema, from the package (it imports nothing)."""
    return xmlschema.XMLSchema(str(XSD))


def read(data: bytes) -> Alert:
    """The CAP 1.2 alert in `data`, or Rejected saying why not."""
    try:
        root = defusedxml.ElementTree.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        raise Rejected("文件含有文档类型定义或实体声明，为安全起见拒收",
                       "the file holds a DTD or entity declarations: refused for safety",
                       type(exc).__name__) from exc
    except ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise Rejected(f"不是有效的 XML（第 {line} 行第 {column} 列）",
                       f"not well-formed XML (line {line}, column {column})", str(exc)) from exc
    if root.tag != _Q + "alert":
        raise Rejected("不是 CAP 1.2 警报消息", "not a CAP 1.2 alert message",
                       f"root element {root.tag}, expected {_Q}alert")
    error = next(schema().iter_errors(root), None)
    if error is not None:
        where = (error.path or "").replace(_Q, "")
        raise Rejected("不符合 CAP 1.2 标准（官方模式校验未通过）",
                       "not valid CAP 1.2 (the official XSD says no)",
                       f"{where}: {error.reason or error.message}"[:500])
    return _alert(root)


def _text(parent: Element, name: str) -> str:
    found = parent.find(_Q + name)
    return (found.text or "").strip() if found is not None else ""


def _when(parent: Element, name: str) -> datetime | None:
    text = _text(parent, name)
    return datetime.fromisoformat(text) if text else None


def _alert(root: Element) -> Alert:
    sent = _text(root, "sent")
    refs = []
    for triple in _text(root, "references").split():
        parts = triple.split(",")
        if len(parts) != 3 or not all(parts):
            raise Rejected("引用的警报格式错误", "the references are malformed",
                           f"references: {triple!r} is not sender,identifier,sent")
        refs.append((parts[0], parts[1], parts[2]))
    infos = []
    for info in root.findall(_Q + "info"):
        areas = info.findall(_Q + "area")
        infos.append(Info(
            language=_text(info, "language") or "en-US", event=_text(info, "event"),
            urgency=_text(info, "urgency"), severity=_text(info, "severity"),
            certainty=_text(info, "certainty"), headline=_text(info, "headline"),
            description=_text(info, "description"), instruction=_text(info, "instruction"),
            effective=_when(info, "effective"), onset=_when(info, "onset"),
            expires=_when(info, "expires"),
            area_desc=tuple(_text(a, "areaDesc") for a in areas),
            geocodes=tuple((_text(g, "valueName"), _text(g, "value"))
                           for a in areas for g in a.findall(_Q + "geocode"))))
    return Alert(identifier=_text(root, "identifier"), sender=_text(root, "sender"),
                 sent=sent, sent_at=datetime.fromisoformat(sent), status=_text(root, "status"),
                 msg_type=_text(root, "msgType"), scope=_text(root, "scope"),
                 references=tuple(refs), infos=tuple(infos))

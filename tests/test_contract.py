"""The topic contract, defined once (edge/contract/topics.py) and everything made from it
or checked against it: the township's copy, docs/topics.md, the ACLs, the county bridge,
the unit's and the centre's topics. Then the broker as shipped (`pingan-centre broker
init`, broker_config/mosquitto.conf and acl, TLS, the county bridge): every party can do
exactly what the table allows, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import wait_until
from test_broker_bridge import county_bridge

from edge.contract import schema as schema_mod
from edge.contract import topics as edge_topics
from edge.unit.bundle import install_bundle
from pingan_centre import topics
from pingan_centre.broker import provision
from pingan_sim.localbroker import Mosquitto
from pingan_sim.township import CENTRE, CONFIG_DIR, Client, TownshipBroker, wait_for

ROOT = Path(__file__).resolve().parent.parent
T = "t01"


def rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_township_ships_the_table_as_published():
    published = (ROOT / "docs/schema/topics.json").read_text(encoding="utf-8")
    assert published == schema_mod.render(edge_topics.as_json()), (
        "docs/schema/topics.json is stale: python -m edge.contract.schema")
    shipped = ROOT / "centre/pingan_centre/console/schemas/topics.json"
    assert shipped.read_text(encoding="utf-8") == published, (
        "cp docs/schema/topics.json centre/pingan_centre/console/schemas/")
    assert [s.name for s in topics.table()] == [s.name for s in edge_topics.TABLE]


def test_docs_show_the_table():
    assert edge_topics.markdown() in (ROOT / "docs/topics.md").read_text(encoding="utf-8"), (
        "docs/topics.md: paste `python -m edge.contract.topics`")


def test_acls_and_bridge_are_made_from_the_table():
    assert (CONFIG_DIR / "acl").read_text() == provision.acl_text(T, [CENTRE])
    county = rules((CONFIG_DIR / "county/acl").read_text())
    split = county.index("user county.ops")
    assert county[:split] == topics.acl_station_rules("+")
    assert county[split + 1:] == [*topics.acl_party_rules(topics.COUNTY, "+"),
                                  "topic read $SYS/#"]
    bridge = [line for line in rules((CONFIG_DIR / "bridge-county.conf").read_text())
              if line.startswith("topic ")]
    assert bridge == topics.bridge_topics(T)
    # Every station topic the county reads goes up; commands come down.
    assert "topic pingan/v1/t01/+/health out 1" in bridge


def test_unit_and_centre_name_the_same_topics():
    unit = edge_topics.Topics(T, "v001")
    for spec in topics.table():
        assert unit.of(spec.name) == spec.topic(T, "v001")
    assert unit.subscriptions() == [(s.topic(T, "v001"), s.qos) for s in topics.table()
                                    if topics.STATION in s.subscribers]
    subs = dict(topics.centre_subscriptions(T, "g"))
    for spec in topics.table():
        direct, shared = spec.topic(T), f"$share/g/{spec.topic(T)}"
        wanted = topics.CENTRE in spec.subscribers
        assert (direct in subs or shared in subs) == wanted, spec.name
        if wanted:  # a broker never gives retained messages to a shared subscription
            assert (direct if spec.retained else shared) in subs, spec.name


def test_every_party_can_do_exactly_what_the_table_allows(tmp_path: Path):
    county = Mosquitto(tmp_path / "county", persistence=False).start()
    town = TownshipBroker(tmp_path / "township",
                          extras={"bridge-county.conf": county_bridge(county.port)})
    clients: list[Client] = []

    def client(port: int, client_id: str = "", tls: tuple[Path, Path, Path] | None = None,
               user: str | None = None, password: str | None = None) -> Client:
        c = Client(client_id, tls=tls)
        clients.append(c)
        assert c.connect(port, user, password), c.connack
        c.subscribe("pingan/#")  # everything: the ACL decides what is delivered
        return c

    try:
        town.start()
        units = {}
        for name in ("v001", "v002"):
            install_bundle(provision.add_station(town.town, name, "127.0.0.1"),
                           tmp_path / name)
            d = tmp_path / name
            units[name] = client(town.tls_port, name,
                                 tls=(d / "ca.crt", d / "station.crt", d / "station.key"))
        station, other = units["v001"], units["v002"]
        console = client(town.plain_port, user=CENTRE, password=town.centre_password)
        up = client(county.port)
        assert wait_for(lambda: "Connecting bridge" in town.log(), 5), town.log()
        # The bridge may still be connecting: until a state crosses, nothing is checked.
        wait_until(lambda: not station.publish(f"pingan/v1/{T}/v001/state", b"hello",
                                               retain=True).is_failure
                   and up.received("/state"), 15, "the bridge to the county")
        for c in clients:
            c.messages.clear()

        readers = {topics.STATION: station, topics.CENTRE: console, topics.COUNTY: up}
        sent: dict[tuple[str, str], str] = {}
        for spec in topics.table():
            topic = spec.topic(T, "v001")
            for party, sender in (("station", station), ("centre", console),
                                  ("county", up)):
                body = f"{spec.name}:{party}".encode()
                reason = sender.publish(topic, body, retain=spec.retained)
                allowed = party in spec.publishers
                if party != "county":  # the county broker is not the township's
                    assert reason.is_failure != allowed, (spec.name, party, str(reason))
                    if not allowed:
                        assert reason.value == 135, (spec.name, party, str(reason))
                if allowed:
                    sent[(spec.name, party)] = topic
            # A station never writes under another station's name.
            if spec.per_station:
                assert station.publish(spec.topic(T, "v002"), b"forged").value == 135

        # Positive: every allowed publish reaches every subscriber of its topic.
        for (name, party), topic in sent.items():
            spec = topics.by_name(name)
            body = f"{name}:{party}".encode()
            for reader in spec.subscribers:
                if reader == party:
                    continue
                wait_until(lambda r=readers[reader], m=(topic, body): m in r.received(),
                           10, f"{name} from {party} at {reader}")
            if name in ("all_cmd", "all_voice"):  # every station of the township
                wait_until(lambda m=(topic, body): m in other.received(), 10, name)

        # Flush each path with one more allowed message, then nothing else may have come.
        flush = [(station, topics.by_name("events").topic(T, "v001"), [console, up]),
                 (console, topics.by_name("cmd").topic(T, "v001"), [station]),
                 (up, topics.by_name("cmd").topic(T, "v001"), [station])]
        for sender, topic, to in flush:
            assert not sender.publish(topic, b"flush").is_failure
            for reader in to:
                wait_until(lambda r=reader, t=topic: (t, b"flush") in r.received(), 10,
                           "flush")
        for reader_party, reader in readers.items():
            own = f":{reader_party}".encode()  # a party may hear its own publish
            got = {(t, p) for t, p in reader.received()
                   if p != b"flush" and not p.endswith(own)}
            expected = {(topic, f"{name}:{party}".encode())
                        for (name, party), topic in sent.items()
                        if reader_party in (*topics.by_name(name).subscribers,
                                            *topics.by_name(name).also_readable)
                        and reader_party != party}
            assert got == expected, (reader_party, sorted(got ^ expected))
        # The other station reads only the township-wide commands and speech, never v001's.
        assert {t for t, _ in other.received()} == {topics.by_name("all_cmd").topic(T),
                                                   topics.by_name("all_voice").topic(T)}
    finally:
        for c in clients:
            c.close()
        town.stop()
        county.stop()


def test_the_centre_subscribes_from_the_table():
    text = json.loads((ROOT / "docs/schema/topics.json").read_text(encoding="utf-8"))
    assert {row["name"] for row in text if "centre" in row["subscribers"]} == {
        "events", "cmd_result", "state", "health"}


def test_a_real_station_publishes_as_the_table_says(tmp_path: Path, own_broker, start_station):  # type: ignore[no-untyped-def]
    """QoS and retained as the table says: a subscriber that comes later is given exactly
    the retained topics' last messages, and every message arrived at the table's QoS."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    st = start_station(own_broker.port, health={"interval_s": 1})
    wait_until(lambda: st.uplink.connected and st.telemetry.published, 15, "health sent")
    event = st.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: st.outbox.pending_count() == 0, 10, "the alarm delivered")
    got: dict[str, tuple[int, bool]] = {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="late", protocol=mqtt.MQTTv5)
    c.on_message = lambda _c, _u, m: got.setdefault(m.topic, (m.qos, bool(m.retain)))
    c.connect("127.0.0.1", own_broker.port)
    c.loop_start()
    try:
        c.subscribe(f"pingan/v1/{T}/#", qos=1)
        retained = {s.topic(T, "v001") for s in topics.table()
                    if s.retained and topics.STATION in s.publishers}
        wait_until(lambda: retained <= set(got), 10, "the retained topics")
        assert set(got) == retained, "only the table's retained topics are retained"
        for spec in topics.table():
            if spec.topic(T, "v001") in got:
                assert got[spec.topic(T, "v001")] == (spec.qos, True)
    finally:
        c.disconnect()
        c.loop_stop()
    assert event.seq == 1


def test_unit_and_centre_read_cron_and_digest_schedules_alike():
    """The township's cron grammar and schedule digest are the unit's file, copied (it
    runs without the unit's package): a schedule it pushes is the one a station reports."""
    from edge.contract.commands import ScheduleSet
    from pingan_centre import cron as centre_cron
    assert (ROOT / "centre/pingan_centre/cron.py").read_text(encoding="utf-8") == (
        ROOT / "edge/contract/cron.py").read_text(encoding="utf-8"), (
        "cp edge/contract/cron.py centre/pingan_centre/cron.py")
    pushed = ScheduleSet(id="c1", schedule_id="sc-1", cron="0 7 * * 1-5", text="开会",
                         volume=1)
    assert pushed.digest() == centre_cron.digest(cron="0  7 * * 1-5", clip=None,
                                                 text="开会", tone=None, repeat=1,
                                                 volume=1.0)
    assert pushed.digest() != ScheduleSet(id="c1", schedule_id="sc-1", cron="0 8 * * 1-5",
                                          text="开会", volume=1).digest()

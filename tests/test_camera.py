"""Camera: the real TFLite interpreter on the real default model, real photographs,
the whole pipeline through a real station and broker, and a camera that goes away."""

from __future__ import annotations

import base64
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import pytest
from conftest import schema, wait_until

from edge import camera
from edge import config as config_mod
from edge.camera.detector import BUNDLED_MODEL, PersonDetector, crop_box, make_interpreter
from edge.camera.motion import MotionDetector
from edge.camera.pipeline import Arming, CameraPipeline, Sighting, snapshot
from edge.camera.sources import FolderSource
from edge.config import ArmWindow, CameraSection, ConfigError
from edge.contract import commands
from edge.health import Health
from pingan_sim import SCENE
from pingan_sim.scenes import H, W, empty_scene, incident, photo, with_person, write_sequence
from pingan_sim.station import defaults as simulation_defaults


@pytest.fixture(scope="module")
def detector() -> PersonDetector:
    return PersonDetector(BUNDLED_MODEL, BUNDLED_MODEL.with_suffix(".labels"))


def best_score(detector: PersonDetector, frame: np.ndarray[Any, Any]) -> float:
    found = detector.run(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return found[0][0] if found else 0.0


def test_runtime_builds_an_interpreter_on_the_default_model():
    interpreter = make_interpreter(BUNDLED_MODEL, threads=1)
    assert type(interpreter).__module__.startswith("ai_edge_litert")
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 300, 300, 3]
    names = sorted(d["name"] for d in interpreter.get_output_details())
    assert names == ["TFLite_Detection_PostProcess"] + [
        f"TFLite_Detection_PostProcess:{i}" for i in (1, 2, 3)]


@pytest.mark.parametrize(("name", "person"), [
    ("astronaut", True), ("camera", True), ("chelsea", False), ("coffee", False),
    ("rocket", False)])
def test_person_found_or_not_on_real_photographs(detector, name, person):
    score = best_score(detector, photo(name))
    assert (score >= 0.5) is person, f"{name}: best person score {score:.3f}"


def test_small_person_revealed_by_motion_is_found_through_the_crop(detector):
    scene = empty_scene()
    frame = with_person(scene, 420, 250)
    # On the whole frame the model misses someone this small...
    assert best_score(detector, frame) < 0.5
    motion = MotionDetector(CameraSection(), W, H)
    assert motion.detect(scene).boxes == []
    boxes = motion.detect(frame).boxes
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert x0 <= 430 and y0 <= 260 and x1 >= 530 and y1 >= 360, boxes
    # ...and on the 1.6x crop around the motion it finds them, where they are.
    found = detector.detect(frame, boxes[0])
    assert found and found[0].score >= 0.5
    bx0, by0, bx1, by1 = found[0].box
    assert 410 <= bx0 < bx1 <= 550 and 240 <= by0 < by1 <= 380, found[0].box


def test_crop_is_square_with_margin_and_inside_the_frame():
    assert crop_box((100, 100, 200, 150), W, H, 1.6) == (70, 45, 230, 205)
    # Near an edge the square moves into the frame rather than shrinking.
    assert crop_box((600, 440, 640, 480), W, H, 1.6) == (544, 384, 640, 480)


def make_pipeline(detector: PersonDetector, health: Health, sightings: list[Sighting],
                  source: Any = None, **overrides: Any) -> CameraPipeline:
    cfg = msgspec.convert({"enabled": True, "source": "folder", **overrides}, CameraSection)
    return CameraPipeline(cfg, source or FolderSource(Path("/nonexistent"), W, H), detector,
                          health, sightings.append)


@pytest.mark.parametrize("change", ["brighter", "darker", "desaturated"])
def test_global_light_change_alone_raises_no_event(detector, change):
    health, sightings = Health(), []
    pipeline = make_pipeline(detector, health, sightings)
    scene = empty_scene()
    changed = {
        "brighter": cv2.convertScaleAbs(scene, alpha=1.4),
        "darker": cv2.convertScaleAbs(scene, alpha=0.45),
        # The IR night switch: colour gone and the exposure jumps.
        "desaturated": cv2.cvtColor(cv2.convertScaleAbs(cv2.cvtColor(
            scene, cv2.COLOR_BGR2GRAY), alpha=1.3), cv2.COLOR_GRAY2BGR),
    }[change]
    for frame in [scene, scene, changed, changed, scene]:
        pipeline.process(frame)
    assert sightings == []
    assert health.counts().get("camera_detector_runs", 0) == 0, health.counts()
    # The same pipeline still sees a person afterwards: the light change did not blind it.
    pipeline.process(with_person(scene, 420, 250))
    assert len(sightings) == 1


def test_ghost_a_person_leaves_costs_one_frame_of_detector_runs(detector):
    health, sightings = Health(), []
    pipeline = make_pipeline(detector, health, sightings)
    scene = empty_scene()
    frames = incident(scene)
    for frame in frames[:12]:  # empty, then the person walking
        pipeline.process(frame)
    assert len(sightings) == 1
    runs = health.counts()["camera_detector_runs"]
    # Gone: where they stood the background still holds some of them (a ghost). The
    # detector finds nobody there once, and the ghost is taken into the background.
    for _ in range(20):
        pipeline.process(scene)
    ghost_runs = health.counts()["camera_detector_runs"] - runs
    assert 1 <= ghost_runs <= CameraSection().max_regions, health.counts()
    # Still watching: the person walking in again is seen (and moving motion is found).
    pipeline.process(with_person(scene, 100, 240))
    assert health.counts()["camera_detector_runs"] > runs + ghost_runs


def test_masked_motion_is_ignored():
    cfg = CameraSection(masks=[[(0.6, 0.4), (0.9, 0.4), (0.9, 0.8), (0.6, 0.8)]])
    motion = MotionDetector(cfg, W, H)
    scene = empty_scene()
    motion.detect(scene)
    assert motion.detect(with_person(scene, 420, 220)).boxes == []
    assert motion.detect(with_person(scene, 100, 220)).boxes != []


def test_person_outside_every_zone_is_not_an_event(detector):
    health, sightings = Health(), []
    pipeline = make_pipeline(detector, health, sightings, zones=[
        {"name": "gate", "polygon": [[0.0, 0.0], [0.3, 0.0], [0.3, 1.0], [0.0, 1.0]]}])
    scene = empty_scene()
    pipeline.process(scene)
    pipeline.process(with_person(scene, 420, 250))
    assert sightings == []
    assert health.counts()["camera_motion_without_person"] == 1
    pipeline.process(scene)
    pipeline.process(with_person(scene, 60, 250))
    assert [s.zone for s in sightings] == ["gate"]


def test_snapshot_respects_its_size_cap():
    frame = photo("astronaut")
    data = snapshot(frame, (10, 10, 200, 300), 4096)
    assert len(data) <= 4096
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[2] == 3


def test_schedule_and_township_override():
    now = [dt.datetime(2026, 11, 23, 21, 0)]
    mono = [0.0]
    arming = Arming([ArmWindow(start="22:00", end="06:00")], now=lambda: now[0],
                    synced=lambda: True, clock=lambda: mono[0])
    assert not arming.armed()
    now[0] = now[0].replace(hour=23)
    assert arming.armed()
    now[0] = now[0].replace(hour=5, minute=59)
    assert arming.armed()
    # Disarmed by the township until the schedule next changes (06:00).
    arming.set(False)
    assert not arming.armed()
    now[0] = now[0].replace(hour=6, minute=0)
    assert not arming.armed()  # the schedule itself says disarmed now
    now[0] = now[0].replace(hour=22)
    assert arming.armed()
    # Armed by the township for ten minutes in the daytime.
    now[0] = now[0].replace(hour=12)
    arming.set(True, for_s=600)
    assert arming.armed()
    mono[0] = 601
    assert not arming.armed()
    # With the wall clock unsynced, the schedule cannot be trusted: watch.
    assert Arming([ArmWindow(start="22:00", end="06:00")], now=lambda: now[0],
                  synced=lambda: False).armed()


def test_camera_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"camera\.fps.*got 100"):
        config_mod.parse('[station]\nid = "a"\ntownship = "t"\n[camera]\nfps = 100\n')
    with pytest.raises(ConfigError, match=r"camera\.url is required"):
        config_mod.parse('[station]\nid = "a"\ntownship = "t"\n'
                         '[camera]\nenabled = true\nsource = "rtsp"\n')


def camera_section(folder: Path, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "source": "folder", "path": str(folder), "fps": 30,
            "retry_min_s": 0.05, "retry_max_s": 0.2, **extra}


def test_replayed_sequence_gives_exactly_one_event_with_a_jpeg(
        broker, start_station, township_factory, tmp_path):
    folder = write_sequence(tmp_path / "frames", incident(empty_scene()))
    township = township_factory(broker.port)
    station = start_station(broker.port, camera=camera_section(folder))
    assert station.camera is not None
    wait_until(station.camera.ended.is_set, 30, "replay finished")
    events = wait_until(township.events, what="camera.person at the township")
    station.stop()  # nothing more can come
    events = township.unique_events()
    assert [e["type"] for e in events] == ["camera.person"]
    event = events[0]
    schema("event").validate(event)
    assert event["priority"] == 2 and event["payload"]["zone"] == "frame"
    assert event["payload"]["score"] >= 0.5
    jpeg = base64.b64decode(event["payload"]["snapshot_jpeg"])
    assert len(jpeg) <= 65536
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (H, W, 3)
    x0, y0, x1, y1 = event["payload"]["box"]
    assert 0.6 < x0 < x1 < 0.9 and 0.45 < y0 < y1 < 0.8, event["payload"]["box"]
    counts = station.health.counts()
    assert counts["camera_frames"] == 16 and counts["camera_person_events"] == 1
    assert counts["camera_motion_without_person"] >= 1  # the person leaving


def test_camera_unplugged_mid_stream_is_reported_then_recovers(
        broker, start_station, township_factory, tmp_path):
    folder = write_sequence(tmp_path / "frames", [empty_scene()] * 3)
    township = township_factory(broker.port)
    station = start_station(broker.port, camera=camera_section(folder, loop=True))
    wait_until(lambda: station.health.counts().get("camera_frames", 0) > 5, what="frames")
    unplugged = tmp_path / "unplugged"
    folder.rename(unplugged)

    def problem_on_state() -> bool:
        states = township.on("/v001/state")
        return bool(states) and any(p["code"] == "camera_unavailable"
                                    for p in states[-1]["problems"])

    wait_until(problem_on_state, what="camera_unavailable on the state topic")
    schema("state").validate(township.on("/v001/state")[-1])
    # The rest of the unit is unaffected: a panic alarm still goes through.
    station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: [e for e in township.events() if e["type"] == "alarm.panic"],
               what="alarm while the camera is away")
    frames_before = station.health.counts()["camera_frames"]
    unplugged.rename(folder)
    wait_until(lambda: not problem_on_state(), what="problem cleared on the state topic")
    wait_until(lambda: station.health.counts()["camera_frames"] > frames_before,
               what="frames again")


def test_township_arms_and_disarms_the_camera(broker, start_station, township_factory,
                                              tmp_path):
    folder = write_sequence(tmp_path / "frames", [empty_scene()])
    township = township_factory(broker.port)
    station = start_station(broker.port, camera=camera_section(folder))
    wait_until(lambda: station.uplink.connected)
    township.command("v001", {"cmd": "camera.disarm", "id": "c1"})
    township.command("v001", {"cmd": "camera.arm", "id": "c2", "for_s": 60})
    results = wait_until(lambda: len(township.on("/cmd/result")) >= 2 and
                         township.on("/cmd/result"), what="results")
    assert [(r["payload"]["cmd_id"], r["payload"]["ok"], r["payload"]["detail"]["armed"])
            for r in results] == [("c1", True, False), ("c2", True, True)]
    assert station.camera is not None and station.camera.arming.armed()


def test_camera_commands_rejected_without_a_camera(broker, start_station, township_factory):
    township = township_factory(broker.port)
    station = start_station(broker.port)
    wait_until(lambda: station.uplink.connected)
    township.command("v001", {"cmd": "camera.disarm", "id": "c1"})
    result = wait_until(lambda: township.on("/cmd/result"), what="result")[0]["payload"]
    assert result["ok"] is False and result["error"]["code"] == "invalid_command"


def test_missing_model_is_a_problem_and_the_unit_keeps_working(
        broker, start_station, township_factory, tmp_path):
    township = township_factory(broker.port)
    station = start_station(broker.port, camera=camera_section(
        tmp_path, model=str(tmp_path / "nope.tflite")))
    assert station.camera is None
    assert [p.code for p in station.health.problems()] == ["camera_detector"]
    station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(township.events, what="alarm without a camera")


def test_simulator_defaults_watch_the_bundled_scene():
    cfg = simulation_defaults()
    assert cfg.camera.enabled and cfg.camera.source == "folder" and cfg.camera.path == str(SCENE)
    sightings: list[Sighting] = []
    pipeline = camera.build(cfg.camera, Health(), sightings.append)
    source = FolderSource(SCENE, cfg.camera.width, cfg.camera.height)
    source.open()
    while (frame := source.read()) is not None:
        pipeline.process(frame)
    assert len(sightings) == 1


def test_missing_v4l2_camera_is_a_problem_retried_and_stops_quickly(broker, start_station):
    # A 30 s retry backoff: a stop that waited it out would keep the camera thread 30 s,
    # one that interrupts it ends the thread at once. The 10 s wait cannot fail on a slow
    # machine, only on that bug (no wall-clock bound on a correct stop).
    before = set(threading.enumerate())
    station = start_station(broker.port, camera={
        "enabled": True, "source": "v4l2", "device": 63, "retry_min_s": 30,
        "retry_max_s": 60})
    problem = wait_until(lambda: [p for p in station.health.problems()
                                  if p.code == "camera_unavailable"], what="problem")
    assert "/dev/video63" in problem[0].message.en
    [thread] = [t for t in threading.enumerate() if t.name == "camera" and t not in before]
    station.stop()
    wait_until(lambda: not thread.is_alive(), timeout=10, what="camera thread ended")


def test_override_ends_at_the_schedule_change_even_if_nobody_asked_in_between():
    now = [dt.datetime(2026, 11, 23, 23, 0)]
    arming = Arming([ArmWindow(start="22:00", end="06:00")], now=lambda: now[0],
                    synced=lambda: True)
    arming.set(False)
    # Not consulted again until the next night, after the 06:00 and 22:00 changes.
    now[0] = dt.datetime(2026, 11, 24, 23, 30)
    assert arming.armed()
    # Without a schedule, an override holds until the next command.
    always = Arming([], now=lambda: now[0], synced=lambda: True)
    always.set(False)
    now[0] = dt.datetime(2026, 12, 24, 23, 30)
    assert not always.armed()


@pytest.mark.parametrize(("payload", "code"), [
    (b'{"cmd": "camera.arm", "id": "c1", "for_s": -5}', "invalid_command"),
    (b'{"cmd": "camera.disarm", "id": "c1", "for_s": 1e9}', "invalid_command"),
    (b'{"cmd": "camera.disarm", "id": "c1", "zone": "gate"}', "invalid_command"),
])
def test_bad_camera_commands_are_rejected_at_the_edge(payload, code):
    with pytest.raises(commands.CommandRejected) as rejected:
        commands.parse(payload, 16384)
    assert rejected.value.error.code == code


def test_good_camera_commands_parse():
    cmd = commands.parse(b'{"cmd": "camera.disarm", "id": "c1", "for_s": 600}', 16384)
    assert isinstance(cmd, commands.CameraDisarm) and cmd.for_s == 600

"""Camera stage: motion fps, detector ms per crop, CPU gated vs ungated, RSS.

What it measures (one process, OpenCV and the interpreter on ONE thread, as on a unit)
    Frames are the simulator's scene (pingan_sim.SCENE: the empty `rocket` launch site, and
    the same with a small person walking in), 640x480 BGR, decoded once beforehand.

    1. motion: `MotionDetector.detect` on --motion-frames frames alternating the empty
       scene and a person frame (so every call finds motion and contours); median of
       5 rounds, as frames per second.
    2. detector: `PersonDetector.detect` on the 1.6x square crop around the person's
       motion box, and `run` on the full frame; median ms over --detector-runs each.
    3. CPU per second of video, same frames, same run: a mostly-still scene at 5 fps
       (--video-s seconds; a person walks through for 3 s in every 60 s):
         - gated: `CameraPipeline.process` (motion on every frame, the detector only on
           motion crops, events to a list);
         - ungated (baseline): the detector on every full frame, no motion stage.
       CPU = time.process_time() spent / seconds of video. Ratio gated / ungated.
    4. RSS: VmRSS of this process with the model loaded after the runs (VmHWM = peak).

Targets: motion >= 15 fps; gated CPU <= 1/5 of ungated; RSS < 150 MB.

Run
    .venv/bin/python bench/camera.py                 # ~1 min
    .venv/bin/python bench/camera.py --video-s 60    # quicker
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.camera.detector import BUNDLED_MODEL, PersonDetector
from edge.camera.motion import MotionDetector
from edge.camera.pipeline import CameraPipeline, Sighting
from edge.camera.sources import FolderSource
from edge.config import CameraSection
from edge.health import Health
from pingan_sim import SCENE

FPS = 5
TARGET_MOTION_FPS = 15.0
TARGET_CPU_RATIO = 0.2
TARGET_RSS_MB = 150.0


def proc_status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scene_frames() -> tuple[np.ndarray[Any, Any], list[np.ndarray[Any, Any]]]:
    files = sorted(SCENE.glob("*.jpg"))
    frames = [cv2.imread(str(f)) for f in files]
    empty = frames[0]
    people = [f for f in frames if cv2.absdiff(f, empty).max() > 60]
    return empty, people


def video(empty: np.ndarray[Any, Any], people: list[np.ndarray[Any, Any]], seconds: int
          ) -> list[np.ndarray[Any, Any]]:
    """Mostly still: per minute, 3 s of a person walking (cycling the person frames)."""
    out = []
    for i in range(seconds * FPS):
        t = (i / FPS) % 60
        out.append(people[int(t * FPS) % len(people)] if 30 <= t < 33 else empty)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--motion-frames", type=int, default=300)
    parser.add_argument("--detector-runs", type=int, default=40)
    parser.add_argument("--video-s", type=int, default=120)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if not BUNDLED_MODEL.is_file():
        sys.exit("models/person_ssdlite.tflite is missing: run models/build.sh")
    rss_start = proc_status("VmRSS")
    print(f"python {platform.python_version()}, OpenCV {cv2.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}; one thread")

    empty, people = scene_frames()
    cfg = CameraSection(enabled=True, source="folder", fps=FPS)
    # 1. motion fps
    motion = MotionDetector(cfg, cfg.width, cfg.height)
    frames = [empty if i % 2 else people[i % len(people)] for i in range(args.motion_frames)]
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for frame in frames:
            motion.detect(frame)
        rounds.append(len(frames) / (time.perf_counter() - started))
    motion_fps = statistics.median(rounds)
    print(f"motion: {motion_fps:.0f} fps at 640x480 (median of 5 x {len(frames)} frames; "
          f"target >= {TARGET_MOTION_FPS:.0f})")

    # 2. detector ms
    detector = PersonDetector(BUNDLED_MODEL, BUNDLED_MODEL.with_suffix(".labels"), threads=1)
    motion = MotionDetector(cfg, cfg.width, cfg.height)
    motion.detect(empty)
    person = people[len(people) // 2]
    region = motion.detect(person).boxes[0]
    for _ in range(3):
        detector.detect(person, region)
    crop_ms, full_ms = [], []
    rgb = cv2.cvtColor(person, cv2.COLOR_BGR2RGB)
    for _ in range(args.detector_runs):
        started = time.perf_counter()
        found = detector.detect(person, region)
        crop_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        detector.run(rgb)
        full_ms.append((time.perf_counter() - started) * 1000)
    print(f"detector: {statistics.median(crop_ms):.1f} ms per crop (incl. crop + resize; "
          f"found {len(found)}), {statistics.median(full_ms):.1f} ms per full frame; "
          f"median of {args.detector_runs}")

    # 3. CPU per second of video, gated vs ungated
    clip = video(empty, people, args.video_s)
    sightings: list[Sighting] = []
    health = Health()
    pipeline = CameraPipeline(cfg, FolderSource(SCENE, cfg.width, cfg.height),
                              detector, health, sightings.append)
    started = time.process_time()
    for frame in clip:
        pipeline.process(frame)
    gated = (time.process_time() - started) / args.video_s
    started = time.process_time()
    for frame in clip:
        detector.run(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    ungated = (time.process_time() - started) / args.video_s
    counts = health.counts()
    print(f"CPU per second of video ({args.video_s} s at {FPS} fps, person 3 s per minute): "
          f"gated {gated * 1000:.0f} ms, ungated {ungated * 1000:.0f} ms, "
          f"ratio {gated / ungated:.3f} (target <= {TARGET_CPU_RATIO}); "
          f"detector ran on {counts.get('camera_detector_runs', 0)} of {len(clip)} frames, "
          f"{len(sightings)} camera.person events")

    # 4. RSS
    rss, hwm = proc_status("VmRSS"), proc_status("VmHWM")
    print(f"RSS with the model loaded: {rss:.0f} MB (peak {hwm:.0f} MB; at start "
          f"{rss_start:.0f} MB; target < {TARGET_RSS_MB:.0f})")
    ok = (motion_fps >= TARGET_MOTION_FPS and gated / ungated <= TARGET_CPU_RATIO
          and hwm < TARGET_RSS_MB)
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()

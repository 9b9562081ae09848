"""Simulation for Ping'an Edge: what `bin/sim`, the tests and the benches put in place of
a village's hardware and its township. Never on a unit: nothing in `edge` imports it
(import-linter), and the unit's wheel does not carry it.

- `station`, `cli`: the simulated station (`pingan-sim run`), `presses`: its buttons
  pressed from software;
- `localbroker`: a private mosquitto; `township`: the township's broker as shipped;
- `modem`: a 4G modem behind a pseudo-terminal;
- `scenes`, `motion_scene`, `make_camera_scene`: camera scenes made from photographs, and
  `camera/`, the scene the simulated station replays.
"""

from pathlib import Path

# The replayed camera scene (a person walks in), made by `make_camera_scene`.
SCENE = Path(__file__).resolve().parent / "camera"

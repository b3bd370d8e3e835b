"""MiniGrid FourRooms: a top-down grid world with walls and doorways (package `minigrid`).

World: `minigrid.envs.FourRoomsEnv`, 19x19 cells (four rooms joined by gaps in the walls), the
whole grid rendered from above at 27 px a cell (513 px, cropped to 512x512): grey walls, a
green goal square, the agent as a red triangle, and the agent's 7x7 field of view lightened as
MiniGrid draws it. The agent's start cell and direction, the goal and the doorways change with
the seed. The agent is small (a cell is ~3 latent pixels) and nothing else moves.

Actions (id: name)
    0 turn-left   the triangle turns 90 degrees and the lit field of view swings round
    1 turn-right  the same the other way
    2 forward     the agent (and its lit field of view) moves one cell
MiniGrid's own navigation actions. Its other actions (pickup, drop, toggle, done) change nothing
on screen in an empty room and are left out, and there is no no-op, so every action changes the
frame. Forward into a wall would change nothing: `blocked` says so and the policy then draws
another action, as `lam.data.world` does at its walls. Reaching the goal ends MiniGrid's own
episode, but play goes on from there: a recording is one continuous stretch of play.

Frames: MiniGrid is turn-based, so one latent frame is one key press: one step, rendered once
and held for the 4 frames of the latent frame.
"""

from __future__ import annotations

import numpy as np

from bench.quality.realplay.base import PlayEnv, repeat, require

TILE = 27  # 19 cells x 27 px = 513 px, cropped to 512
MINIGRID_ACTIONS = (0, 1, 2)  # minigrid Actions.left, .right, .forward


class MiniGridPlay(PlayEnv):
    name = "minigrid"
    action_names = ("turn-left", "turn-right", "forward")
    description = (
        "MiniGrid FourRooms (19x19 cells) rendered full-view from above at 27 px a cell, cropped to 512x512; "
        "start, goal and doorways from the seed; actions turn-left, turn-right, forward (forward into a wall is never chosen); "
        "play continues after the goal is reached"
    )
    frames_note = "turn-based: one MiniGrid step per latent frame, rendered once and held for the 4 frames"
    packages = ("minigrid", "gymnasium")

    def __init__(self):
        envs = require("minigrid.envs", self.name)
        # A huge max_steps: the recording, not MiniGrid's time limit, decides when play stops.
        self._env = envs.FourRoomsEnv(render_mode="rgb_array", tile_size=TILE, max_steps=10**9)

    def reset(self, seed: int) -> None:
        self._env.reset(seed=int(seed))

    def blocked(self, action: int) -> bool:
        if self.action_names[action] != "forward":
            return False
        env = self._env.unwrapped
        cell = env.grid.get(*env.front_pos)
        return cell is not None and not cell.can_overlap()

    def play(self, action: int) -> np.ndarray:
        self._env.step(MINIGRID_ACTIONS[action])  # termination at the goal is ignored on purpose
        frame = self._env.render()[:512, :512]
        return repeat(np.ascontiguousarray(frame))

    def close(self) -> None:
        self._env.close()

"""Crafter: an open 2D survival world seen by a camera that follows the player (package `crafter`).

World: `crafter.Env(size=(512, 512))`, a 64x64-tile procedurally generated world (grass, sand,
water, trees, stone, caves) from the seed. The view is the 9x7 tiles around the player with the
inventory (health, food, drink, energy) in the two rows below. The camera is centred on the
player, so moving scrolls the whole view: camera motion. Cows (and the odd zombie) wander on
their own, whatever the player does.

Crafter's day-night cycle is held at full daylight: at night zombies crowd round a player that
does not fight back and wall it in, and night frames are dark and overlaid with random noise.

No single frame gives the action away. Crafter draws the player facing its last move and counts
in the inventory row what a "do" just collected, so one frame would tell most actions; here the
player is drawn with Crafter's facing-free sprite (`player.png`) and the inventory rows are left
black (the world is still drawn in full; only the two rows below it are blank).

Actions (id: name, Crafter's action)
    0 noop    nothing; the world goes on (cows wander)
    1 left    the player walks one tile and the view scrolls by one tile; a move into a tile the
    2 right   player cannot enter (water, tree, stone, a creature) changes nothing on screen,
    3 up      since the facing is not drawn: those moves are played, as a person bumping into a
    4 down    wall would
    5 do      interact with the tile in front: mine stone (the player carries a wood pickaxe; the
              stone becomes path), hit a cow or a zombie, drink, collect wood or a sapling
              (invisible: the inventory is not drawn)
So two actions are local (a tile in front of the player changes, or nothing does), as clicks and
key presses are in screen video. Only a move into lava is never chosen (`blocked`): it would kill.

What else would show in one frame, and so is left out (measured by the frames-only row of
`python -m bench.quality`; docs/RESULTS.md):
  - Crafter's "place" actions: a stone (or table, plant) placed in front stays there, and a frame
    with a fresh stone beside the player tells "place" at a glance.
  - several steps per latent frame: a move stops at the first obstacle, so after a 4-tile move
    the player stands pressed against one on the side it moved to, which a frame shows.
  - held actions (`hold_prob` 0: a new action every latent frame): a held move into an obstacle
    keeps the player pressed against it.
What remains is physical: the tile a player just left is one it could stand on, so an obstacle
beside it in the next frame says it did not come from that side.

The player cannot die: before every step its health, food, drink and energy are set back to 9; a
random player is otherwise killed by zombies or thirst within a few hundred steps, after which
Crafter's world goes on around a dead player; this way an episode is one continuous stretch of
play.

Determinism: Crafter keeps creatures in sets whose order changes from run to run; they are
replaced by insertion-ordered ones (`InsertionOrderedSet`), so the same seed gives the same play.

Frames: Crafter runs in steps; a latent frame is one step, recorded as the screen after it held
for the 4 video frames, like a screen recorder that captures twice a second. Recording a step per
video frame instead would make the latent frame, the mean of its 4 video frames, a motion blur
along the axis of the move: one frame would tell a move from a non-move and its axis.
"""

from __future__ import annotations

import collections

import numpy as np

from bench.quality.realplay.base import PlayEnv, repeat, require

ACTION_NAMES = ("noop", "left", "right", "up", "down", "do")
CRAFTER_NAMES = {"left": "move_left", "right": "move_right", "up": "move_up", "down": "move_down"}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
KEPT_FULL = {"health": 9, "food": 9, "drink": 9, "energy": 9, "wood_pickaxe": 1}


class InsertionOrderedSet(dict):
    """The part of `set` that Crafter's world uses (add, remove, len, iteration), iterating in insertion order.

    Crafter keeps the creatures of each area in a `set`, which iterates in the order of memory
    addresses; it then picks a creature to despawn by index, so the same seed would give other
    worlds in other runs. With this in place of those sets the order, and so the play, is reproducible.
    """

    def add(self, item) -> None:
        self[item] = None

    def remove(self, item) -> None:
        del self[item]


class CrafterPlay(PlayEnv):
    name = "crafter"
    action_names = ACTION_NAMES
    description = (
        "Crafter (64x64-tile world from the seed) rendered at 512x512: a 9x7-tile camera that follows the player, "
        "drawn without its facing, and two black rows where the inventory would be; actions noop, left, right, up, "
        "down, do (moves into blocked tiles are played; moves into lava are never chosen); one Crafter step per "
        "latent frame; always daylight; cows and zombies move on their own; the player cannot die and carries a wood pickaxe"
    )
    frames_note = "one Crafter step per latent frame; the screen after it, held for the 4 frames"
    packages = ("crafter",)
    version = 2  # 2: one step per latent frame, no place_stone
    steps_per_latent = 1
    # A new action every latent frame: a held move presses the player against whatever stopped it,
    # so the obstacle on that side would tell the action in one frame.
    hold_prob = 0.0

    def __init__(self):
        self._crafter = require("crafter", self.name)
        self._env = None

    def reset(self, seed: int) -> None:
        # A new Env per episode: Crafter seeds a world from (seed, episode number), so this gives
        # the same world for the same seed however many episodes came before.
        self._env = self._crafter.Env(size=(512, 512), seed=int(seed))
        world = self._env._world
        reset_world = world.reset

        def reset_with_ordered_sets(seed=None):
            reset_world(seed)
            world._chunks = collections.defaultdict(InsertionOrderedSet)

        world.reset = reset_with_ordered_sets  # called by Env.reset, before any creature is added
        self._env._update_time = lambda: setattr(world, "daylight", 1.0)  # always day (see the module docstring)
        item_view = self._env._item_view
        self._env._item_view = lambda inventory, unit: np.zeros_like(item_view(inventory, unit))  # the inventory is not drawn
        self._env.reset()
        player = self._env._player
        faceless = type("FacelessPlayer", (type(player),), {"texture": property(lambda self: "player")})
        ids = self._env._sem_view._obj_ids  # Crafter's semantic map (in step's info) looks objects up by class
        ids[faceless] = ids[type(player)]
        player.__class__ = faceless

    def _target(self, direction: tuple[int, int]) -> tuple[int, int]:
        player = self._env._player
        return player.pos[0] + direction[0], player.pos[1] + direction[1]

    def blocked(self, action: int) -> bool:
        """Only a move into lava: it would kill (every other action is played, visible or not)."""
        name = self.action_names[action]
        if name not in DIRECTIONS:
            return False
        material, _ = self._env._world[self._target(DIRECTIONS[name])]
        return material == "lava"

    def shows(self, action: int) -> bool:
        """Whether `action` surely changes the screen now: a move into a free tile, a "do" that
        mines stone (the rest may change nothing)."""
        name = self.action_names[action]
        if name in DIRECTIONS:
            return self._env._player.is_free(self._target(DIRECTIONS[name]), self._crafter.constants.walkable)
        material, obj = self._env._world[self._target(self._env._player.facing)]
        return name == "do" and obj is None and material == "stone"

    def play(self, action: int) -> np.ndarray:
        code = self._crafter.constants.actions.index(CRAFTER_NAMES.get(self.action_names[action], self.action_names[action]))
        for _ in range(self.steps_per_latent):
            self._keep_alive()  # before the step: nothing runs out, so the player never dies
            frame = self._env.step(code)[0]  # Crafter's own end of episode is ignored
        return repeat(frame)

    def _keep_alive(self) -> None:
        self._env._player.inventory.update(KEPT_FULL)

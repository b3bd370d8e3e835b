"""Crafter: an open 2D survival world seen by a camera that follows the player (package `crafter`).

World: `crafter.Env(size=(512, 512))`, a 64x64-tile procedurally generated world (grass, sand,
water, trees, stone, caves) from the seed. The view is the 9x7 tiles around the player with the
inventory (health, food, drink, energy) in the two rows below. The camera is centred on the
player, so moving scrolls the whole view: camera motion. Cows (and the odd zombie) wander on
their own, whatever the player does.

Crafter's day-night cycle is held at full daylight: at night zombies crowd round a player that
does not fight back and wall it in, and night frames are dark and overlaid with random noise.

Actions (id: name, Crafter's move_* action)
    0 left   the player faces left and walks, and the view scrolls, one tile a step
    1 right  ...
    2 up     ...
    3 down   ...
Crafter's movement keys. Its no-op is left out because it shows nothing of its own (only the
world's motion), and being the one action that is never blocked it would take half of the play;
"do", "sleep", placing and crafting are left out because they change little or nothing on
screen most of the time. A move into a tile the player cannot enter (water, tree, stone, a
creature) only turns the player, and into lava it kills: `blocked` says so for the first step
and the policy then draws another move.

The player cannot die: before every step its health, food, drink and energy are set back to 9
(the inventory row shows 9 9 9 9, less a zombie's hit in the frame of the step it lands). A
random player is otherwise killed by zombies or thirst within a few hundred steps, after which
Crafter's world goes on around a dead player; this way an episode is one continuous stretch of
play.

Determinism: Crafter keeps creatures in sets whose order changes from run to run; they are
replaced by insertion-ordered ones (`InsertionOrderedSet`), so the same seed gives the same play.

Frames: Crafter runs in steps; one video frame is one step, so a latent frame is 4 steps of
the held action (a held key moves the player, and the view, 4 tiles).
"""

from __future__ import annotations

import collections

import numpy as np

from bench.realplay.base import PlayEnv, require

CRAFTER_ACTIONS = {"left": 1, "right": 2, "up": 3, "down": 4}  # crafter.constants.actions indices (0 is noop)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


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
    action_names = ("left", "right", "up", "down")
    description = (
        "Crafter (64x64-tile world from the seed) rendered at 512x512: a 9x7-tile camera that follows the player "
        "and the inventory below; actions left, right, up, down (moves into a tile the player cannot enter, "
        "or into lava, are never chosen); always daylight; cows and zombies move on their own; "
        "the player cannot die (health, food, drink, energy kept at 9)"
    )
    frames_note = "one Crafter step per video frame: the held action for 4 steps per latent frame"
    packages = ("crafter",)

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
        self._env.reset()

    def blocked(self, action: int) -> bool:
        name = self.action_names[action]
        player = self._env._player
        dx, dy = DIRECTIONS[name]
        target = (player.pos[0] + dx, player.pos[1] + dy)
        walkable = self._crafter.constants.walkable  # grass, sand, path: not lava
        return not player.is_free(target, walkable)

    def play(self, action: int) -> np.ndarray:
        code = CRAFTER_ACTIONS[self.action_names[action]]
        frames = []
        for _ in range(4):
            self._keep_alive()  # before the step, so that the frame it renders shows full counters
            frames.append(self._env.step(code)[0])  # Crafter's own end of episode is ignored
        return np.stack(frames)

    def _keep_alive(self) -> None:
        inventory = self._env._player.inventory
        for counter in ("health", "food", "drink", "energy"):
            inventory[counter] = 9

"""What every environment gives the generator, and the list of environments.

An environment is played one latent frame at a time: `play(action)` holds `action` for the
4 video frames that make one latent frame and returns those frames, `(4, 512, 512, 3)` uint8.
So actions change only at latent-frame boundaries, as the data contract asks.

    env = make_env("crafter")          # raises MissingDependency with an install hint
    env.reset(seed)                    # deterministic: same seed, same actions -> same frames
    frames = env.play(action)          # (4, 512, 512, 3) uint8
    env.blocked(action)                # True where the player must not choose the action now
    env.shows(action)                  # True where the action surely changes the screen now
    env.close()
"""

from __future__ import annotations

import importlib
import importlib.metadata

import numpy as np

# name -> module:class; the modules import their third-party packages only when an environment is made
ENVIRONMENTS = {
    "minigrid": "bench.quality.realplay.minigrid_env:MiniGridPlay",
    "crafter": "bench.quality.realplay.crafter_env:CrafterPlay",
    "vizdoom": "bench.quality.realplay.vizdoom_env:DoomPlay",
    "miniwob": "bench.quality.realplay.miniwob_env:WebPlay",
    "desktop": "bench.quality.realplay.desktop_env:DesktopPlay",
}
PIP_HINT = "pip install -e '.[bench]'"


class MissingDependency(Exception):
    """An environment's package or program is not installed; the message says how to install it."""


class PlayEnv:
    """One environment, played by holding an action for one latent frame (4 video frames) at a time."""

    name: str = ""
    action_names: tuple[str, ...] = ()
    description: str = ""  # the world, the view and the action set, for the files' attrs
    frames_note: str = ""  # how the 4 frames of one latent frame are made
    packages: tuple[str, ...] = ()  # distributions whose versions the files record
    burn_in: int = 0  # each episode starts after 0..burn_in-1 latent frames of unrecorded play
    hold_prob: float | None = None  # the player's probability of keeping an action; None: the generator's default
    version: int = 1  # bump when this environment's play or look changes: the same seed gives other data

    def reset(self, seed: int) -> None:
        """Start a new episode; everything that follows is a function of `seed` and the actions."""
        raise NotImplementedError

    def play(self, action: int) -> np.ndarray:
        """Hold `action` for one latent frame; return its 4 frames, `(4, 512, 512, 3)` uint8."""
        raise NotImplementedError

    def blocked(self, action: int) -> bool:
        """Whether the player must not choose `action` in the current state (most environments: it
        would change nothing on screen, at a wall or a screen edge; the player draws another)."""
        return False

    def shows(self, action: int) -> bool:
        """Whether `action` surely changes the screen in the current state. Where every unblocked
        action shows, this is `not blocked`; an environment whose actions may have no visible
        effect (a no-op, a move into a wall that is played) says which do now."""
        return not self.blocked(action)

    def episode_attrs(self) -> dict:
        """What the files should also record about the episode just played (e.g. the level)."""
        return {}

    def close(self) -> None:
        """Release the simulator (a game engine, a browser)."""

    def versions(self) -> str:
        """'package version, ...' of what renders the frames, for the files' attrs."""
        found = []
        for pkg in self.packages:
            try:
                found.append(f"{pkg} {importlib.metadata.version(pkg)}")
            except importlib.metadata.PackageNotFoundError:
                found.append(f"{pkg} (unknown version)")
        return ", ".join(found)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def require(module: str, env: str, hint: str = PIP_HINT):
    """Import `module` for environment `env`, or raise MissingDependency saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"environment '{env}' needs the Python package '{module}' ({e}); install it with: {hint}") from None


def repeat(frame: np.ndarray, times: int = 4) -> np.ndarray:
    """One (H, W, 3) frame as `times` identical frames, `(times, H, W, 3)` (for turn-based and GUI play)."""
    return np.repeat(frame[None], times, axis=0)


def env_class(name: str) -> type[PlayEnv]:
    """An environment's class by name, without starting it (its simulator is imported when it is made);
    ValueError for an unknown name."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment '{name}'; choose from: {', '.join(ENVIRONMENTS)}")
    module, cls = ENVIRONMENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_env(name: str) -> PlayEnv:
    """A new environment by name; ValueError for an unknown name, MissingDependency when not installed."""
    return env_class(name)()

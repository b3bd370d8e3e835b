"""ViZDoom: first-person 3D levels of Freedoom (package `vizdoom`, which ships the engine and the WADs).

World: a level of Freedoom Phase 2 (`freedoom2.wad`, MAP01-MAP08, picked by the seed) without
monsters (`-nomonsters`), rendered headless at 640x480 and resized to 512x512; no status bar and
no crosshair, the player's pistol in view (it bobs while walking). Each episode starts from the
level's start spot after up to 15 latent frames of unrecorded random play (`burn_in`), so
episodes of one level start in different places. Lights that flicker and pick-up messages
change the picture on their own.

Actions (id: name, ViZDoom button held)
    0 turn-left      TURN_LEFT: the view pans, ~56 degrees a latent frame
    1 turn-right     TURN_RIGHT
    2 forward        MOVE_FORWARD: the view zooms in, ~130 map units a latent frame at full speed
    3 backward       MOVE_BACKWARD
The classic keyboard controls for looking around and walking. Strafing and "use" are left out
to keep the set small and unambiguous: a strafe sweeps the view sideways much as a turn does,
and "use" does nothing away from a door or a switch. Walking into a wall changes almost nothing
on screen, so after a latent frame of walking that moved the player less than 16 units,
`blocked` says that the same move is blocked and the policy draws another action (a player who
notices they are stuck). If the player dies (some levels have damaging floors) the level
restarts; files count the restarts.

Frames: Doom runs at 35 tics a second; one video frame is 4 tics (~1/8 s, as in an 8-frame
chunk of 1 s), so a latent frame is 16 tics of the held button.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from bench.quality.realplay.base import PlayEnv, require
from bench.quality.realplay.encoder import resize_frame

MAPS = ("map01", "map02", "map03", "map04", "map05", "map06", "map07", "map08")
TICS_PER_FRAME = 4
STUCK_UNITS = 16.0  # a move that got the player less far than this in a latent frame was blocked
BUTTONS = ("TURN_LEFT", "TURN_RIGHT", "MOVE_FORWARD", "MOVE_BACKWARD")


class DoomPlay(PlayEnv):
    name = "vizdoom"
    action_names = ("turn-left", "turn-right", "forward", "backward")
    description = (
        "ViZDoom, Freedoom Phase 2 MAP01-MAP08 (picked by the seed) without monsters, first person, 640x480 resized "
        "to 512x512, no status bar; actions turn-left, turn-right, forward, backward (a move that got stuck is not "
        "repeated); episodes start after 0-15 latent frames of unrecorded play"
    )
    frames_note = f"{TICS_PER_FRAME} Doom tics per video frame: the held button for {4 * TICS_PER_FRAME} tics per latent frame"
    packages = ("vizdoom",)
    burn_in = 16

    def __init__(self):
        self._vzd = require("vizdoom", self.name)
        self._game = None
        self._config_dir = None  # ViZDoom's files (_vizdoom.ini, _vizdoom/) go there, not into the working directory
        self.map = None
        self.restarts = 0
        self._last_action = -1
        self._last_distance = np.inf

    def reset(self, seed: int) -> None:
        self._close_game()
        if self._config_dir is None:
            self._config_dir = tempfile.mkdtemp(prefix="realplay_vizdoom_")
        vzd = self._vzd
        self.map = MAPS[int(seed) % len(MAPS)]
        game = vzd.DoomGame()
        game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), "freedoom2.wad"))
        game.set_doom_map(self.map)
        game.set_doom_config_path(os.path.join(self._config_dir, "_vizdoom.ini"))
        game.add_game_args("-nomonsters")
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_640X480)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_render_hud(False)
        game.set_render_crosshair(False)
        game.set_render_weapon(True)
        game.set_episode_timeout(0)
        game.set_available_buttons([getattr(vzd.Button, b) for b in BUTTONS])
        game.set_available_game_variables([vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y])
        game.set_seed(int(seed) % (2**31))
        # The engine makes a ./_vizdoom folder in its working directory: start it in the temporary one.
        cwd = os.getcwd()
        os.chdir(self._config_dir)
        try:
            game.init()
        finally:
            os.chdir(cwd)
        game.new_episode()
        self._game = game
        self.restarts = 0
        self._last_action, self._last_distance = -1, np.inf

    def blocked(self, action: int) -> bool:
        moving = self.action_names[action] in ("forward", "backward")
        return moving and action == self._last_action and self._last_distance < STUCK_UNITS

    def _position(self) -> np.ndarray:
        return np.asarray(self._game.get_state().game_variables[:2], np.float64)

    def play(self, action: int) -> np.ndarray:
        buttons = [int(i == action) for i in range(len(BUTTONS))]
        start = self._position()
        frames = []
        for _ in range(4):
            self._game.make_action(buttons, TICS_PER_FRAME)
            if self._game.is_episode_finished():  # the player died: the level starts again
                self._game.new_episode()
                self.restarts += 1
                start = self._position()
            frames.append(resize_frame(self._game.get_state().screen_buffer))
        self._last_action = action
        self._last_distance = float(np.hypot(*(self._position() - start)))
        return np.stack(frames)

    def episode_attrs(self) -> dict:
        return {"map": f"freedoom2.wad {self.map}", "restarts": int(self.restarts)}

    def _close_game(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None

    def close(self) -> None:
        self._close_game()
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None

"""MiniWoB++ "terminal": a small web app in headless Chromium, used with a mouse and a keyboard.

World: the MiniWoB++ task page `terminal.html` (package `miniwob`, loaded from its files), in
Debian's Chromium driven by Selenium (`chromium`, `chromium-driver`). The page has the task's
instruction on a yellow bar and below it a terminal window: a title bar, green text on black
and a command line that shows what is typed. The viewport is 210x210 CSS pixels (the 160x210
task and a grey strip of the page beside it) rendered at a device pixel ratio of 512/210, so a
screenshot is 512x512. The files listed and the instruction change with the seed.

Screenshots do not show the mouse pointer, so the page gets a cursor overlay, as a screen
recording shows it: an arrow that follows the page's own `mousemove` events (so it is where the
browser thinks the pointer is), and a ring around its tip on `mousedown`, as recorders
highlight clicks, until the next action.

Actions (id: name)
    0 up, 1 down, 2 left, 3 right   the pointer moves 12 CSS px (~29 screen px)
    4 click                         a left click where the pointer is: the ring appears; on the
                                    terminal it focuses the command line, elsewhere it blurs it
    5 type                          one key, a random lower-case letter: it appears on the
                                    command line when the terminal has the focus
A move that would take the pointer off the task area, typing while the terminal has no focus
and a second click in a row would change nothing: `blocked` says so and the policy draws another
action. Enter is never typed, so no command runs and the task never ends.

Frames: the page changes only when an action is done, and a screenshot takes ~50 ms, so one
screenshot is taken per latent frame, after the action, and held for the 4 frames.

Determinism: the page's random numbers are seeded (`Math.seedrandom`), its clock is fixed (the
terminal prints the date), the blinking caret is stopped and the task's time limit is lifted.
"""

from __future__ import annotations

import importlib.resources
import io
import os
import shutil
import time

import numpy as np

from bench.quality.realplay.base import MissingDependency, PlayEnv, repeat, require
from bench.quality.realplay.encoder import resize_frame

APT_HINT = "apt-get install chromium chromium-driver (Debian), or set MINIWOB_CHROME_BINARY and MINIWOB_CHROMEDRIVER"
TASK = "terminal"
VIEW = 210  # CSS px, square viewport
TASK_W, TASK_H = 160, 210  # the MiniWoB task area, where the pointer stays
STEP = 12  # CSS px a pointer move
MARGIN = 4
KEYS = "abcdefghijklmnopqrstuvwxyz"
MOVES = {"up": (0, -STEP), "down": (0, STEP), "left": (-STEP, 0), "right": (STEP, 0)}

# Run once per page load, before the task starts: fixed clock, no scrolling, no side panel, the cursor overlay.
SETUP_JS = """
(function () {
  var RealDate = Date, FIXED = RealDate.UTC(2024, 0, 1, 12, 0, 0);
  function FixedDate() {
    if (!(this instanceof FixedDate)) return new RealDate(FIXED).toString();
    return arguments.length ? new (Function.prototype.bind.apply(RealDate, [null].concat([].slice.call(arguments))))() : new RealDate(FIXED);
  }
  FixedDate.prototype = RealDate.prototype; FixedDate.now = function () { return FIXED; };
  FixedDate.UTC = RealDate.UTC; FixedDate.parse = RealDate.parse; window.Date = FixedDate;

  var style = document.createElement('style');
  style.textContent = 'html { overflow: hidden !important; } #reward-display, #click-canvas { display: none !important; }';
  document.head.appendChild(style);

  var cursor = document.createElement('div');
  cursor.id = 'realplay-cursor';
  cursor.style.cssText = 'position: fixed; left: 0; top: 0; width: 0; height: 0; pointer-events: none; z-index: 2147483647;';
  cursor.innerHTML =
    '<div id="realplay-ring" style="display: none; position: absolute; left: -8px; top: -8px; width: 16px; height: 16px;' +
    ' border-radius: 50%; background: rgba(255, 200, 0, 0.6); border: 1.5px solid rgb(230, 80, 0); box-sizing: border-box;"></div>' +
    '<svg width="13" height="21" viewBox="0 0 13 21" style="position: absolute; left: 0; top: 0; overflow: visible;">' +
    '<path d="M0.5,0.5 L0.5,17 L4.5,13.2 L7.2,19.5 L9.8,18.4 L7.2,12.3 L12.3,12.3 Z" fill="white" stroke="black" stroke-width="1.2"/></svg>';
  document.body.appendChild(cursor);
  var ring = document.getElementById('realplay-ring');
  window.addEventListener('mousemove', function (e) {
    cursor.style.left = e.clientX + 'px'; cursor.style.top = e.clientY + 'px'; ring.style.display = 'none';
  }, true);
  window.addEventListener('mousedown', function () { ring.style.display = 'block'; }, true);
  window.addEventListener('keydown', function () { ring.style.display = 'none'; }, true);
})();
"""

# Focusing the terminal's hidden input scrolls the page a few pixels; a screen of this size would not scroll.
UNSCROLL_JS = "window.scrollTo(0, 0); document.documentElement.scrollTop = 0; document.body.scrollTop = 0;"


def find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver) from MINIWOB_CHROME_BINARY / MINIWOB_CHROMEDRIVER or the PATH."""
    binary = os.environ.get("MINIWOB_CHROME_BINARY") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("MINIWOB_CHROMEDRIVER") or shutil.which("chromedriver")
    binary, driver = (p if p and os.path.isfile(p) else None for p in (binary, driver))
    if not binary or not driver:
        missing = " and ".join(n for n, p in (("chromium", binary), ("chromedriver", driver)) if not p)
        raise MissingDependency(f"environment 'miniwob' needs {missing}: {APT_HINT}")
    return binary, driver


class WebPlay(PlayEnv):
    name = "miniwob"
    action_names = ("up", "down", "left", "right", "click", "type")
    description = (
        "MiniWoB++ 'terminal' task page in headless Chromium, 210x210 CSS px viewport at 512x512, with a cursor overlay "
        "(arrow; a ring on mouse down); actions: pointer up/down/left/right by 12 CSS px, click, type a random letter "
        "(moves off the task area, typing without focus and repeated clicks are never chosen)"
    )
    frames_note = "one screenshot per latent frame, after the action, held for the 4 frames"
    packages = ("miniwob", "selenium")

    def __init__(self):
        require("miniwob", self.name)
        self._webdriver = require("selenium.webdriver", self.name)
        self._binary, self._chromedriver = find_browser()
        self._driver = None
        self._url = (importlib.resources.files("miniwob") / "html" / "miniwob" / f"{TASK}.html").as_uri()
        self.pointer = np.zeros(2, np.int64)
        self._rng = None
        self._last_action = -1

    # ---- the browser ----

    def _start_browser(self):
        webdriver = self._webdriver
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--force-color-profile=srgb", "--mute-audio"):
            options.add_argument(arg)
        options.binary_location = self._binary
        service = webdriver.ChromeService(executable_path=self._chromedriver)
        from selenium.common.exceptions import WebDriverException

        try:
            driver = webdriver.Chrome(service=service, options=options)
        except (WebDriverException, OSError) as e:  # a browser and a driver that do not match, a missing library
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MissingDependency(f"environment 'miniwob': Chromium did not start ({first}); {APT_HINT}") from None
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": VIEW, "height": VIEW, "deviceScaleFactor": 512 / VIEW, "mobile": False},
        )
        return driver

    def _js(self, code: str):
        return self._driver.execute_script(code)

    def _pointer_chain(self):
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self._driver, duration=0)
        chain.w3c_actions.pointer_action.move_to_location(int(self.pointer[0]), int(self.pointer[1]))
        return chain

    def _focused(self) -> bool:
        return self._js("return document.activeElement && document.activeElement.id === 'terminal-target';")

    # ---- PlayEnv ----

    def reset(self, seed: int) -> None:
        if self._driver is None:
            self._driver = self._start_browser()
        self._driver.get(self._url)
        self._js(SETUP_JS)
        self._js(f"Math.seedrandom('{int(seed)}'); core.EPISODE_MAX_TIME = 1e9; core.startEpisodeReal();"
                 "clearInterval(flicker); $('#input-flicker').removeClass('hide');")
        deadline = time.monotonic() + 5.0
        while not self._focused():  # the task focuses its command line 200 ms after it starts
            if time.monotonic() > deadline:
                raise RuntimeError("MiniWoB terminal: the command line never got the focus")
            time.sleep(0.02)
        self._rng = np.random.default_rng([int(seed), 7])
        self.pointer = np.array([self._rng.integers(MARGIN, TASK_W - MARGIN), self._rng.integers(MARGIN, TASK_H - MARGIN)])
        self._pointer_chain().w3c_actions.perform()  # the overlay appears where the pointer starts
        self._js(UNSCROLL_JS)
        self._last_action = -1

    def blocked(self, action: int) -> bool:
        name = self.action_names[action]
        if name in MOVES:
            x, y = self.pointer + MOVES[name]
            return not (MARGIN <= x < TASK_W - MARGIN and MARGIN <= y < TASK_H - MARGIN)
        if name == "click":
            return self._last_action == action
        return not self._focused()  # type

    def play(self, action: int) -> np.ndarray:
        name = self.action_names[action]
        if name in MOVES:
            self.pointer = self.pointer + MOVES[name]
            self._pointer_chain().w3c_actions.perform()
        elif name == "click":
            chain = self._pointer_chain()
            chain.w3c_actions.pointer_action.click()
            chain.w3c_actions.perform()
        else:
            from selenium.webdriver.common.action_chains import ActionChains

            key = KEYS[int(self._rng.integers(len(KEYS)))]
            chain = ActionChains(self._driver, duration=0)
            chain.w3c_actions.key_action.key_down(key)
            chain.w3c_actions.key_action.key_up(key)
            chain.perform()
        self._js(UNSCROLL_JS)
        self._last_action = action
        return repeat(self.screenshot())

    def screenshot(self) -> np.ndarray:
        """The viewport as (512, 512, 3) uint8."""
        from PIL import Image

        png = self._driver.get_screenshot_as_png()
        return resize_frame(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))

    def close(self) -> None:
        if self._driver is not None:
            try:
                self._driver.quit()
            finally:
                self._driver = None

"""Real Debian desktop applications under Xvfb, used with a mouse and a keyboard.

World: a 512x512 X screen (Xvfb, 24-bit) with the Openbox window manager (a fixed theme, no
animations, a solid background) and 2 or 3 real applications, chosen by the seed among
    editor     Mousepad on a text file              GTK 3; no menu bar, tool bar or status bar
    files      PCManFM on a folder of ~40 files     GTK 2; icon view, no tool bar, side pane or status bar
    sheet      Gnumeric on a CSV table              GTK 3; no tool bars
    terminal   xterm running bash                   a file listing in its scroll-back
The windows get seed-chosen sizes, places and stacking order, and the files' contents (words,
numbers, file names) change with the seed, so no two episodes share a layout. Every program
runs in a fresh home folder written for the episode, with fixed settings, no D-Bus and no
accessibility bus, and, where the environment runs as root, as the user `nobody` (Mousepad would
show a root warning, and random clicks cannot harm the machine).

View: the whole screen, as Xvfb renders it. X screenshots leave the mouse pointer out, so the real
cursor image (XFixes `GetCursorImage`: Openbox's arrow over the desktop and the title bars, the
text beam over a text view, whatever the application under the pointer has set) is alpha-blended
at the pointer.

Actions (id: name), sent with XTEST (python-xlib)
    0 up, 1 down, 2 left, 3 right   the pointer moves 8, 16 or 32 px (the speed is drawn for every
                                    latent frame, so it varies inside one action id)
    4 click                         a left click: focus and raise a window, place a caret, select
                                    a cell or a file
    5 drag                          left button down, a move of 8-32 px in a drawn direction, button
                                    up: select text, cells or the terminal's text; on a title bar,
                                    move the window
    6 scroll-up, 7 scroll-down      4 wheel notches over the window under the pointer
    8 type                          one key, a drawn lower-case letter or digit, into the focused
                                    window (Enter is never typed: no command runs)
    9 select-all                    ctrl+a in the focused window: select all text, cells or files
                                    (in the shell: the cursor to the start of the line)
    10 switch                       alt+tab: Openbox focuses and raises the previous window
A click is always a single click (the applications' double-click time is set far below the time
between two actions), so no file or folder is ever opened.

Blocked (the player draws another action):
    - a move at the screen's edge; a switch with one window;
    - a click, drag or scroll off the applications' content: the desktop background, a window
      border, Gnumeric's and PCManFM's menu bars, Gnumeric's formula and status bars (menus open
      their sub-menus on timers); a second click at the same place; a title-bar click on the
      focused top window;
    - a drag that would start or end near the edge of a window's content (its view would scroll,
      or a scroll bar held down would page, on a timer), in the file manager (it would drag files,
      and the view's auto-scroll runs on a timer) or over selected text (it would drag the text);
    - scrolling up a view that was not scrolled down (in the terminal: down at the end of its
      scroll-back);
    - typing into the file manager (its type-ahead box hides on a timer); select-all just after
      select-all, or on the shell's empty line.

Frames (8 frames/s, 4 per latent frame): a move, a drag and a scroll are spread over the 4 frames
(a quarter of the move or one wheel notch, then a screenshot); a click, a key or a window switch
happens before the first frame and the settled screen is held for the 4 frames. Every screenshot
waits until the screen has settled: the X server has handled the input, every GTK application has
answered a `_NET_WM_PING` (so it has read the input), and for 40 ms nothing was drawn (XDamage), the
cursor did not change (XFixes) and no thread of the episode's programs was running or waiting for
the CPU (/proc), so a loaded machine waits longer rather than catching a half-drawn screen; the
screenshot is taken with the X server grabbed.

Determinism: a new X server, window manager and applications for every episode, in a new home
folder whose files (with fixed timestamps) and settings are written from the seed; the caret does
not blink, GTK animations, overlay scroll bars, thumbnails, key auto-repeat and double clicks are
off; TZ, locale, theme and fonts are fixed and no clock is on screen; GTK 3 tooltips (which appear
half a second after the pointer stops, whatever the settings say) are unmapped as soon as they
appear; a click or a drag on a window without the focus first has Openbox focus and raise it, as
the press would, and presses once the application has taken the focus (left to the press, the two
race); every random choice comes from `np.random.default_rng([seed, k])`. The same seed gives the
same frames, bit for bit, on the same machine (the installed fonts and program versions are part
of the picture; the files record the versions). A screen that kept changing for 1.5 s is taken as
it is and counted in the files' attr `unsettled_frames`.

Cost: ~0.17 s per latent frame on average, encoding included (a move, drag or scroll 0.2-0.26 s; a
click, a key or a switch 0.08-0.1 s), ~0.8 s per episode start, seen on a 2-core machine (shared
with other work: load average ~5).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np

from bench.quality.realplay.base import MissingDependency, PlayEnv, repeat, require

APT_PACKAGES = ("xvfb", "openbox", "mousepad", "pcmanfm", "gnumeric", "xterm", "fonts-dejavu-core")
APT_HINT = f"apt-get install {' '.join(APT_PACKAGES)} (Debian)"
XLIB_HINT = "pip install -e '.[bench]' (python-xlib)"

SIZE = 512  # the screen, so frames need no resizing
BACKGROUND = 0x3A6E8F  # the desktop's solid colour
SPEEDS = (8, 16, 32)  # px per latent frame of a move or a drag
EDGE = 2  # the pointer stays this far inside the screen
KEYS = "abcdefghijklmnopqrstuvwxyz0123456789"
MOVES = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
DIRECTIONS = tuple(MOVES.values())
NOTCHES = 4  # wheel notches per scroll action, one per video frame
# px a drag keeps from its window's content edges: past them a view scrolls on a timer, and the button held in a
# scroll bar's trough (at the right and bottom edges) pages on one
DRAG_MARGIN = 20
NOBODY = 65534

# Settling (see the module docstring): QUIET seconds of stillness, at most CAP seconds of waiting.
QUIET, CAP = 0.04, 1.5
START_QUIET, START_CAP = 0.25, 8.0  # at the start of an episode, while the applications load
PING_TIMEOUT = 1.0
START_TIMEOUT = 20.0  # for the X server, the window manager and every window to appear


@dataclass(frozen=True)
class App:
    """One application: how it is started and which parts of its window take pointer actions."""

    key: str
    program: str
    wm_class: str  # WM_CLASS class, what Openbox's window rule matches
    top: int = 0  # px at the top of the window's client area that are not content (a menu bar)
    bottom: int = 0  # the same at the bottom (a status bar)
    typing: bool = True  # whether typing shows (False: a type-ahead box that hides on a timer)
    # where a drag may start in the content: "always", "unselected" (not while something is selected: it would
    # drag the selection), "" (never: it would drag files)
    drag: str = "always"
    width: tuple[int, int] = (280, 440)  # the window's width, px (Gnumeric's is never narrower than ~490)
    scroll_from_bottom: bool = False  # the view starts at its end (a terminal's scroll-back), not its top
    # the program sizes its window itself, in character cells of this many px: a terminal does not re-wrap its
    # text when resized, so a window resized after the shell's first output would show it wrapped by chance
    cells: tuple[int, int] | None = None


APPS = {
    "editor": App("editor", "mousepad", "Mousepad", drag="unselected"),
    "files": App("files", "pcmanfm", "Pcmanfm", top=24, typing=False, drag=""),
    "sheet": App("sheet", "gnumeric", "Gnumeric", top=62, bottom=40, width=(492, 508)),
    "terminal": App("terminal", "xterm", "XTerm", scroll_from_bottom=True, cells=(7, 15)),
}
PROGRAMS = ("Xvfb", "openbox", *(a.program for a in APPS.values()))

WORDS = [
    "apple", "river", "stone", "cloud", "paper", "green", "orange", "window", "garden", "summer", "winter", "travel", "budget",
    "report", "letter", "music", "piano", "coffee", "bridge", "market", "castle", "forest", "planet", "rocket", "silver",
    "yellow", "violet", "number", "engine", "signal", "motion", "camera", "mirror", "pencil", "ticket", "island", "valley",
    "desert", "harbor",
]


def find_programs() -> dict[str, str]:
    """name -> path of every program the environment runs; MissingDependency naming the missing ones."""
    found = {p: shutil.which(p) for p in PROGRAMS}
    missing = [p for p, path in found.items() if not path]
    if missing:
        raise MissingDependency(f"environment 'desktop' needs {', '.join(missing)}: {APT_HINT}")
    return found


def debian_versions(packages: tuple[str, ...]) -> list[str]:
    """'package version' of the Debian packages that render the frames, as far as dpkg knows them."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *packages],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------
# The episode's files and settings


def words(rng: np.random.Generator, n: int) -> list[str]:
    return [WORDS[int(i)] for i in rng.integers(len(WORDS), size=n)]


def write_documents(folder: str, rng: np.random.Generator) -> dict[str, str]:
    """The episode's files under `folder`: a text, a table, a folder of files and a listing of it."""
    docs = os.path.join(folder, "Documents")
    os.makedirs(docs)
    notes = os.path.join(docs, "notes.txt")
    with open(notes, "w") as f:
        f.write("\n".join(" ".join(words(rng, int(rng.integers(3, 10)))).capitalize() for _ in range(160)) + "\n")
    table = os.path.join(docs, "table.csv")
    with open(table, "w") as f:
        f.write("item,region,units,price,total\n")
        for row in range(120):
            units, price = int(rng.integers(1, 500)), int(rng.integers(100, 99999)) / 100
            f.write(f"{words(rng, 1)[0]}-{row},{words(rng, 1)[0]},{units},{price:.2f},{units * price:.2f}\n")
    for name in sorted({"-".join(words(rng, 2)) for _ in range(6)}):
        os.makedirs(os.path.join(docs, name))
    suffixes = (".txt", ".csv", ".md", ".html", ".py", ".sh", ".json", ".log")
    for i, name in enumerate(sorted({"_".join(words(rng, 2)) for _ in range(34)})):
        with open(os.path.join(docs, name + suffixes[i % len(suffixes)]), "w") as f:
            f.write(" ".join(words(rng, 12)) + "\n")
    listing = os.path.join(folder, "listing.txt")
    with open(listing, "w") as f:
        for name in sorted(os.listdir(docs)):
            path = os.path.join(docs, name)
            size = "<dir>" if os.path.isdir(path) else os.path.getsize(path)  # a folder's size depends on the file system
            f.write(f"{size:>8}  2024-01-01 12:00  {name}\n")
    return {"notes": notes, "table": table, "docs": docs, "listing": listing}


def fix_times(folder: str) -> None:
    """Every file and folder under `folder` gets the same timestamp (file managers show them)."""
    stamp = 1704110400  # 2024-01-01 12:00 UTC
    for path, dirs, files in os.walk(folder, topdown=False):
        for name in dirs + files:
            os.utime(os.path.join(path, name), (stamp, stamp), follow_symlinks=False)
    os.utime(folder, (stamp, stamp))


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# GTK 3 (Mousepad, Gnumeric) and GTK 2 (PCManFM): a fixed theme and font, no blinking caret, no animations,
# no double clicks (the double-click time is far below the time between two actions)
GTK3_SETTINGS = """[Settings]
gtk-theme-name=Adwaita
gtk-icon-theme-name=Adwaita
gtk-cursor-theme-name=Adwaita
gtk-cursor-theme-size=24
gtk-font-name=DejaVu Sans 9
gtk-cursor-blink=false
gtk-enable-animations=false
gtk-double-click-time=1
gtk-primary-button-warps-slider=false
gtk-enable-event-sounds=false
gtk-error-bell=false
gtk-recent-files-enabled=false
gtk-xft-antialias=1
gtk-xft-hinting=1
gtk-xft-hintstyle=hintslight
gtk-xft-rgba=none
"""

GTK2_RC = """gtk-icon-theme-name = "Adwaita"
gtk-cursor-theme-name = "Adwaita"
gtk-cursor-theme-size = 24
gtk-font-name = "DejaVu Sans 9"
gtk-cursor-blink = 0
gtk-enable-animations = 0
gtk-enable-tooltips = 0
gtk-double-click-time = 1
gtk-enable-event-sounds = 0
gtk-error-bell = 0
gtk-xft-antialias = 1
gtk-xft-hinting = 1
gtk-xft-hintstyle = "hintslight"
gtk-xft-rgba = "none"
"""

# GSettings, read from a key file (GSETTINGS_BACKEND=keyfile): no D-Bus, nothing kept between episodes
GSETTINGS = """[org/xfce/mousepad/preferences/window]
menubar-visible=false
toolbar-visible=false
statusbar-visible=false
remember-size=false
remember-position=false
remember-state=false
client-side-decorations=false

[org/xfce/mousepad/preferences/view]
use-default-monospace-font=false
font-name='DejaVu Sans Mono 9'
show-line-numbers=true

[org/xfce/mousepad/preferences/file]
session-restore='never'
autosave-timer=uint32 0
monitor-changes=false

[org/gnome/gnumeric/core/gui/toolbars]
standard-visible=false
format-visible=false
object-visible=false

[org/gnome/gnumeric/core/gui/editing]
recalclag=0
autocomplete=false
function-name-tooltips=false
function-argument-tooltips=false
"""

# PCManFM: icon view, no tool bar, side pane or status bar (it shows the disk's free space), no thumbnails
PCMANFM_CONF = """[config]
bm_open_method=0

[volume]
mount_on_startup=0
mount_removable=0
autorun=0

[ui]
always_show_tabs=0
toolbar=hidden
show_statusbar=0
side_pane_mode=places;hidden
view_mode=icon
show_hidden=0
sort=name;ascending;
"""

LIBFM_CONF = """[config]
single_click=0
use_trash=0
confirm_del=1
thumbnail_local=0
show_thumbnail=0
defer_content_test=1
terminal=xterm

[ui]
big_icon_size=48
small_icon_size=24
pane_icon_size=24
show_thumbnail=0
"""

# the terminal's shell: a fixed prompt, no history file, a listing in the scroll-back
BASHRC = """PS1='$ '
PS2='> '
HISTFILE=/dev/null
unset PROMPT_COMMAND
cat "$HOME/listing.txt"
"""

XTERM_RESOURCES = (
    "XTerm*cursorBlink: false", "XTerm*multiClickTime: 1", "XTerm*visualBell: false", "XTerm*bellIsUrgent: false",
    "XTerm*saveLines: 500", "XTerm*scrollBar: false", "XTerm*scrollTtyOutput: true", "XTerm*scrollKey: true",
    "XTerm*faceName: DejaVu Sans Mono", "XTerm*faceSize: 9", "XTerm*background: #fdfdf6", "XTerm*foreground: #202020",
    "XTerm*cursorColor: #202020", "XTerm*allowTitleOps: false", "XTerm*termName: xterm",
)

# Openbox: a fixed theme, title bars without buttons (nothing closes or maximises a window), click to focus and
# raise, drag a title bar to move, alt+tab to the next window (its focus bars mark the cycling, see _switch_window),
# no root menu, no pop-ups; every window placed and sized by a rule of the episode
OPENBOX_RC = """<?xml version="1.0" encoding="UTF-8"?>
<openbox_config xmlns="http://openbox.org/3.4/rc">
  <resistance><strength>0</strength><screen_edge_strength>0</screen_edge_strength></resistance>
  <focus><focusNew>yes</focusNew><followMouse>no</followMouse><focusLast>yes</focusLast></focus>
  <placement><policy>Smart</policy></placement>
  <theme>
    <name>Clearlooks</name>
    <titleLayout>L</titleLayout>
    <keepBorder>yes</keepBorder>
    <animateIconify>no</animateIconify>
    <font place="ActiveWindow"><name>DejaVu Sans</name><size>9</size><weight>bold</weight><slant>normal</slant></font>
    <font place="InactiveWindow"><name>DejaVu Sans</name><size>9</size><weight>bold</weight><slant>normal</slant></font>
  </theme>
  <desktops><number>1</number><popupTime>0</popupTime></desktops>
  <resize><drawContents>yes</drawContents><popupShow>Never</popupShow></resize>
  <keyboard>
    <keybind key="A-Tab"><action name="NextWindow"><dialog>none</dialog><bar>yes</bar></action></keybind>
  </keyboard>
  <mouse>
    <dragThreshold>1</dragThreshold>
    <doubleClickTime>1</doubleClickTime>
    <screenEdgeWarpTime>0</screenEdgeWarpTime>
    <context name="Titlebar">
      <mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
      <mousebind button="Left" action="Drag"><action name="Move"/></mousebind>
    </context>
    <context name="Client">
      <mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
    </context>
  </mouse>
  <menu><file>{menu}</file></menu>
  <applications>
{rules}
  </applications>
</openbox_config>
"""

OPENBOX_RULE = """    <application class="{cls}">
      <position force="yes"><x>{x}</x><y>{y}</y></position>{size}
      <decor>yes</decor><maximized>no</maximized>
    </application>"""
OPENBOX_SIZE = "\n      <size><width>{w}</width><height>{h}</height></size>"

OPENBOX_MENU = '<?xml version="1.0" encoding="UTF-8"?>\n<openbox_menu xmlns="http://openbox.org/3.4/menu"></openbox_menu>\n'


def app_command(app: App, paths: dict[str, str], size: tuple[int, int]) -> list[str]:
    """The command line of `app`; `size` is its window's (width, height) in px."""
    if app.key == "editor":
        return ["mousepad", paths["notes"]]
    if app.key == "files":
        return ["pcmanfm", paths["docs"]]
    if app.key == "sheet":
        return ["gnumeric", "--no-splash", "--no-warnings", paths["table"]]
    columns, rows = size[0] // app.cells[0], size[1] // app.cells[1]
    command = ["xterm", "-title", "Terminal", "-geometry", f"{columns}x{rows}"]
    for resource in XTERM_RESOURCES:
        command += ["-xrm", resource]
    return command + ["-e", "bash", "--noprofile", "--rcfile", paths["bashrc"], "-i"]


# ---------------------------------------------------------------------------------
# The environment


@dataclass
class WindowState:
    """What `blocked` needs to know about an application window that the screen does not say cheaply."""

    scrolled: int = 0  # wheel notches away from where its view started
    selected: bool = False  # some text, cells or files are selected
    all_selected: bool = False  # select-all was the last thing done in it
    typed: int = 0  # keys typed into it


@dataclass
class Window:
    """A managed top-level window, as the last look at the X server found it (screen px, x0, y0, x1, y1)."""

    client: int  # the application's window id
    app: App | None  # None: a window that an application opened itself (a dialog)
    frame: tuple[int, int, int, int]  # the whole decorated window
    client_box: tuple[int, int, int, int]  # the application's part
    content: tuple[int, int, int, int]  # the part of client_box that takes pointer actions

    def region(self, x: int, y: int) -> str:
        """'content', 'title', 'other' (a border, a menu bar) or '' (outside the window) for point (x, y)."""
        fx0, fy0, fx1, fy1 = self.frame
        if not (fx0 <= x < fx1 and fy0 <= y < fy1):
            return ""
        cx0, cy0, cx1, cy1 = self.content
        if cx0 <= x < cx1 and cy0 <= y < cy1:
            return "content"
        if fy0 + 2 <= y < self.client_box[1] and fx0 + 2 <= x < fx1 - 2:
            return "title"
        return "other"


class DesktopPlay(PlayEnv):
    name = "desktop"
    action_names = ("up", "down", "left", "right", "click", "drag", "scroll-up", "scroll-down", "type", "select-all", "switch")
    description = (
        "Debian desktop applications (Mousepad, PCManFM, Gnumeric, xterm; 2-3 per episode in seed-chosen windows) under "
        "Xvfb 512x512 with Openbox, the real cursor image composited at the pointer; actions (XTEST): pointer "
        "up/down/left/right by 8/16/32 px, click, drag, scroll up, scroll down, type a letter or digit, ctrl+a, alt+tab; "
        "actions that would change nothing, or whose effect would run on a timer, are never chosen"
    )
    frames_note = (
        "8 frames/s: a move, a drag and a scroll are spread over the 4 frames (a quarter of the move or a wheel notch, "
        "then a screenshot); a click, a key or a window switch happens before the first frame and the settled screen is "
        "held for the 4 frames; every screenshot waits for a settled screen"
    )
    packages = ("python-xlib",)
    burn_in = 4

    def __init__(self):
        self._programs = find_programs()
        require("Xlib.display", self.name, XLIB_HINT)
        self._procs: list[subprocess.Popen] = []
        self._d = None  # our connection to the X server
        self._root_dir = tempfile.mkdtemp(prefix="lam-desktop-")
        self._tag = uuid.uuid4().hex  # in every started program's environment, to find them all at the end
        self._user = NOBODY if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self._root_dir, self._user, self._user)
        self._debian = debian_versions(APT_PACKAGES[:-1])
        self._apps: dict[int, App] = {}  # client window -> application
        self._state: dict[int, WindowState] = {}
        self._windows: list[Window] = []  # top first
        self._active = 0
        self._pids: list[int] = []
        self._episode: dict = {}
        self._pending: dict = {}
        self._last_click = None
        self._unsettled = 0
        self.pointer = np.zeros(2, np.int64)

    def versions(self) -> str:
        return ", ".join([super().versions(), *self._debian])

    def processes(self) -> list[int]:
        """Ids of the running processes this environment started: the X server, Openbox, the applications and theirs."""
        return tagged_processes(self._tag)

    # ---- processes ----

    def _env(self, home: str, display: str) -> dict[str, str]:
        """The programs' whole environment: nothing of the caller's, nothing that varies between machines or runs."""
        path = os.pathsep.join(dict.fromkeys([*(os.path.dirname(p) for p in self._programs.values()), "/usr/bin", "/bin"]))
        return {
            "PATH": path,
            "HOME": home,
            "USER": "desktop",
            "LOGNAME": "desktop",
            "SHELL": "/bin/bash",
            "DISPLAY": display,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "XDG_CACHE_HOME": os.path.join(home, ".cache"),
            "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
            "XDG_RUNTIME_DIR": os.path.join(home, ".run"),
            "XDG_CONFIG_DIRS": os.path.join(home, ".xdg"),  # an empty folder: none of the machine's desktop settings
            "XDG_DATA_DIRS": "/usr/local/share:/usr/share",
            "GTK2_RC_FILES": os.path.join(home, ".gtkrc-2.0"),  # only ours, not the machine's
            "GTK_THEME": "Adwaita",
            "GTK_OVERLAY_SCROLLING": "0",  # overlay scroll bars fade on timers
            "GTK_IM_MODULE": "gtk-im-context-simple",
            "GDK_BACKEND": "x11",
            "GSETTINGS_BACKEND": "keyfile",
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={os.path.join(home, '.run', 'no-bus')}",  # no bus: nothing auto-started
            "NO_AT_BRIDGE": "1",
            "GTK_A11Y": "none",
            "GIO_USE_VFS": "local",
            "GIO_USE_VOLUME_MONITOR": "unix",
            "XCURSOR_THEME": "Adwaita",
            "XCURSOR_SIZE": "24",
            "LAM_DESKTOP_TAG": self._tag,
        }

    def _spawn(self, command: list[str], env: dict) -> subprocess.Popen:
        """Start a program in a session of its own, as `nobody` where we are root; its messages go to a log."""
        user = {"user": self._user, "group": self._user, "extra_groups": []} if self._user is not None else {}
        with open(self._log(command[0]), "wb") as log:
            proc = subprocess.Popen(command, env=env, cwd=env["HOME"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, **user)
        self._procs.append(proc)
        return proc

    def _log(self, program: str) -> str:
        return os.path.join(self._root_dir, f"{os.path.basename(program)}.log")

    def _logs(self) -> str:
        """The end of every program's messages, for an error that says why something did not start."""
        tails = []
        for name in PROGRAMS:
            try:
                with open(self._log(name), "rb") as f:
                    text = f.read().decode(errors="replace").strip()
            except OSError:
                continue
            if text:
                tails.append(f"--- {name}:\n{text[-1500:]}")
        return "\n".join(tails)

    def _start_server(self) -> str:
        """Xvfb on a free display (it picks the number and writes it to a pipe); connect to it; the display's name."""
        read, write_fd = os.pipe()
        try:
            with open(self._log("Xvfb"), "wb") as log:
                xvfb = subprocess.Popen(
                    [self._programs["Xvfb"], "-displayfd", str(write_fd), "-screen", "0", f"{SIZE}x{SIZE}x24",
                     "-nolisten", "tcp", "-noreset", "-dpi", "96"],
                    pass_fds=[write_fd], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                    env={"PATH": "/usr/bin:/bin", "LAM_DESKTOP_TAG": self._tag},
                )
        finally:
            os.close(write_fd)
        self._procs = [xvfb]
        number = b""
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while not number.endswith(b"\n"):
                ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
                chunk = os.read(read, 16) if ready else b""
                if not chunk:
                    raise RuntimeError(f"desktop: Xvfb did not start\n{self._logs()}")
                number += chunk
        finally:
            os.close(read)
        display = ":" + number.decode().strip()
        from Xlib import display as xdisplay

        self._d = xdisplay.Display(display)
        self._d.set_error_handler(lambda *args: None)  # windows come and go: a request on a gone one is no error here
        self._setup_connection()
        return display

    def _setup_connection(self) -> None:
        from Xlib import X
        from Xlib.ext import damage, xfixes

        d = self._d
        for ext in ("XTEST", "XFIXES", "DAMAGE"):
            if not d.query_extension(ext):
                raise RuntimeError(f"desktop: the X server lacks the {ext} extension")
        d.xfixes_query_version()
        d.damage_query_version()
        self._root = d.screen().root
        # window changes and the applications' pongs come as the root window's substructure events
        self._root.change_attributes(background_pixel=BACKGROUND, event_mask=X.SubstructureNotifyMask)
        self._root.clear_area(0, 0, 0, 0)
        d.change_keyboard_control(auto_repeat_mode=X.AutoRepeatModeOff)
        d.xfixes_select_cursor_input(self._root, xfixes.XFixesDisplayCursorNotifyMask)
        self._damage = self._root.damage_create(damage.DamageReportRawRectangles)  # every drawing, anywhere on screen
        names = ("_NET_CLIENT_LIST", "_NET_ACTIVE_WINDOW", "_NET_FRAME_EXTENTS", "_NET_SUPPORTING_WM_CHECK", "WM_PROTOCOLS",
                 "_NET_WM_PING", "_NET_WM_WINDOW_TYPE", "_NET_WM_WINDOW_TYPE_TOOLTIP")
        self._atoms = {n: d.intern_atom(n) for n in names}
        self._ping_ok: dict[int, bool] = {}  # window -> whether it answers _NET_WM_PING
        self._ping_id = 0
        self._pongs: set[int] = set()
        self._indicators = 0
        d.sync()

    def _stop(self) -> None:
        """End every program of the episode: the applications and the window manager, then the X server."""
        if self._d is not None:
            with contextlib.suppress(Exception):  # a connection the server already dropped
                self._d.close()
            self._d = None
        procs, self._procs = self._procs, []
        # A program's id names its session's group until we reap it (a reaped one's id may be reused: left alone).
        for proc in procs[1:]:  # the applications and the window manager: nothing of theirs needs saving
            if proc.returncode is None:
                kill_group(proc.pid, signal.SIGKILL)  # with whatever they started in their session
        if procs and procs[0].returncode is None:
            kill_group(procs[0].pid, signal.SIGTERM)  # Xvfb removes its lock file and socket on SIGTERM
        for proc in procs[1:] + procs[:1]:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid in tagged_processes(self._tag):  # and what left its session (the terminal's shell has its own)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        if getattr(self, "_root_dir", None) is None:  # closed already, or never opened
            return
        try:
            self._stop()
        finally:
            shutil.rmtree(self._root_dir, ignore_errors=True)
            self._root_dir = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the modules it needs may be gone already
            return

    # ---- the episode ----

    def _write_home(self, home: str, rng: np.random.Generator, layout: list[tuple[App, tuple[int, int, int, int]]]) -> dict:
        """The episode's home folder: its files and every program's settings; the paths the programs are given."""
        os.makedirs(home)
        paths = write_documents(home, rng)
        config = os.path.join(home, ".config")
        write(os.path.join(config, "gtk-3.0", "settings.ini"), GTK3_SETTINGS)
        write(os.path.join(home, ".gtkrc-2.0"), GTK2_RC)
        write(os.path.join(config, "glib-2.0", "settings", "keyfile"), GSETTINGS)
        write(os.path.join(config, "pcmanfm", "default", "pcmanfm.conf"), PCMANFM_CONF)
        write(os.path.join(config, "libfm", "libfm.conf"), LIBFM_CONF)
        paths["bashrc"] = os.path.join(home, ".bashrc")
        write(paths["bashrc"], BASHRC)
        menu = os.path.join(config, "openbox", "menu.xml")
        write(menu, OPENBOX_MENU)
        rules = "\n".join(
            OPENBOX_RULE.format(cls=app.wm_class, x=x, y=y, size="" if app.cells else OPENBOX_SIZE.format(w=w, h=h))
            for app, (x, y, w, h) in layout
        )
        paths["openbox"] = os.path.join(config, "openbox", "rc.xml")
        write(paths["openbox"], OPENBOX_RC.format(menu=menu, rules=rules))
        for sub in (".xdg", ".run", ".cache", os.path.join(".local", "share")):
            os.makedirs(os.path.join(home, sub), exist_ok=True)
        os.chmod(os.path.join(home, ".run"), 0o700)
        fix_times(home)
        if self._user is not None:
            for path, dirs, files in os.walk(home):
                for name in [path] + [os.path.join(path, n) for n in dirs + files]:
                    os.lchown(name, self._user, self._user)
        return paths

    def reset(self, seed: int) -> None:
        self._stop()
        rng = np.random.default_rng([int(seed), 7])
        keys = list(APPS)
        chosen = [keys[int(i)] for i in rng.permutation(len(keys))[: int(rng.integers(2, 4))]]
        layout = []
        for key in chosen:
            lo, hi = APPS[key].width
            w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(220, 381))
            x, y = int(rng.integers(0, SIZE - w - 1)), int(rng.integers(0, SIZE - h - 26))
            layout.append((APPS[key], (x, y, w, h)))
        home = os.path.join(self._root_dir, "home")
        shutil.rmtree(home, ignore_errors=True)
        paths = self._write_home(home, rng, layout)
        env = self._env(home, self._start_server())
        self._spawn([self._programs["openbox"], "--config-file", paths["openbox"], "--sm-disable"], env)
        self._wait_for(lambda: self._root_property("_NET_SUPPORTING_WM_CHECK"), "Openbox")
        for app, (_, _, w, h) in layout:
            self._spawn(app_command(app, paths, (w, h)), env)
        self._apps = {}
        self._wait_for(lambda: self._find_clients(chosen), "the applications' windows")
        self._pids = tagged_processes(self._tag)  # the programs and what they started (the terminal's shell)
        self._unsettled = 0
        self._order_windows([wid for key in chosen for wid, app in self._apps.items() if app.key == key])
        self._episode = {"apps": ",".join(chosen), "layout": ";".join(f"{a.key}:{x},{y},{w}x{h}" for a, (x, y, w, h) in layout)}
        self._rng = np.random.default_rng([int(seed), 8])
        self._state = {wid: WindowState() for wid in self._apps}
        self._last_click = None
        self._look()
        x0, y0, x1, y1 = self._windows[0].content  # the pointer starts over the focused window's content
        x0, y0, x1, y1 = max(x0, 0) + 10, max(y0, 0) + 10, min(x1, SIZE) - 10, min(y1, SIZE) - 10
        self.pointer = np.array([int(rng.integers(x0, x1)), int(rng.integers(y0, y1))])
        self._move_to(*self.pointer)
        self._settle(START_QUIET, START_CAP)
        self._look()
        self._draw_pending()

    def episode_attrs(self) -> dict:
        return {**self._episode, "unsettled_frames": int(self._unsettled)}

    def _wait_for(self, ready, what: str, timeout: float = START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            value = ready()
            if value:
                return value
            dead = [p.args[0] for p in self._procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(map(os.path.basename, dead))} exited" if dead else f"not within {timeout:.0f} s"
                raise RuntimeError(f"desktop: waited for {what}, {why}\n{self._logs()}")
            time.sleep(0.01)

    # ---- X requests ----

    def _root_property(self, name: str) -> list[int]:
        from Xlib import X

        prop = self._root.get_full_property(self._atoms[name], X.AnyPropertyType)
        return list(prop.value) if prop is not None else []

    def _window(self, wid: int):
        return self._d.create_resource_object("window", wid)

    def _find_clients(self, keys: list[str]) -> bool:
        """Match the managed windows to the applications; True once every one of `keys` has a window on screen."""
        from Xlib import X
        from Xlib.error import XError

        by_class = {APPS[k].wm_class: APPS[k] for k in keys}
        for wid in self._root_property("_NET_CLIENT_LIST"):
            if wid in self._apps:
                continue
            window = self._window(wid)
            try:
                if window.get_attributes().map_state != X.IsViewable:
                    continue
                cls = window.get_wm_class()
            except XError:  # gone meanwhile
                continue
            if cls and cls[1] in by_class and by_class[cls[1]] not in self._apps.values():
                self._apps[wid] = by_class[cls[1]]
        return len(self._apps) == len(keys)

    def _order_windows(self, order: list[int]) -> None:
        """Focus the windows one after the other, so that their stacking and Openbox's focus order (what
        alt+tab follows) are `order`, whatever order they appeared in; the last one ends on top.

        A GTK application answers Openbox's WM_TAKE_FOCUS by setting the focus itself; one that does
        so late would take the focus back from the next window, so every application has answered
        (a settle pings them all) before the next window is focused, and the whole order is set
        again if the focus still ended elsewhere.
        """
        for _ in range(3):
            for wid in order:
                self._activate(wid)
                self._settle()
            if self._root_property("_NET_ACTIVE_WINDOW")[:1] == order[-1:]:
                return
        raise RuntimeError("desktop: the windows' focus order could not be set")

    def _activate(self, wid: int) -> None:
        """Have Openbox focus and raise `wid`, asking again until it has (a window it is still mapping may miss a request)."""
        from Xlib import X
        from Xlib.protocol import event

        msg = event.ClientMessage(window=self._window(wid), client_type=self._atoms["_NET_ACTIVE_WINDOW"],
                                  data=(32, [2, X.CurrentTime, 0, 0, 0]))  # 2: on the user's behalf
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            self._root.send_event(msg, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
            retry = time.monotonic() + 0.1
            while time.monotonic() < retry:
                if self._root_property("_NET_ACTIVE_WINDOW")[:1] == [wid]:
                    return
                time.sleep(0.005)
        raise RuntimeError("desktop: Openbox did not focus a window it was asked to")

    def _move_to(self, x: int, y: int) -> None:
        from Xlib import X
        from Xlib.ext import xtest

        xtest.fake_input(self._d, X.MotionNotify, x=int(x), y=int(y))

    def _button(self, button: int, press: bool) -> None:
        from Xlib import X
        from Xlib.ext import xtest

        xtest.fake_input(self._d, X.ButtonPress if press else X.ButtonRelease, button)

    def _key(self, name: str, press: bool) -> None:
        from Xlib import XK, X
        from Xlib.ext import xtest

        xtest.fake_input(self._d, X.KeyPress if press else X.KeyRelease, self._d.keysym_to_keycode(XK.string_to_keysym(name)))

    def _keys(self, *names: str) -> None:
        """Press the keys in order and release them in reverse order (a chord such as Control_L a)."""
        for name in names:
            self._key(name, True)
        for name in reversed(names):
            self._key(name, False)

    def _switch_window(self) -> None:
        """Alt+Tab as a person does it: Alt held until Openbox has taken the keyboard to cycle, then let go.

        Openbox shows that it cycles by mapping its focus indicator (bars around the target:
        windows without a WM_CLASS, unlike the applications' pop-ups); an Alt key-up sent before
        that would reach the application instead, and Openbox would go on cycling until the next.
        """
        self._indicators = 0
        self._key("Alt_L", True)
        self._keys("Tab")
        self._d.sync()
        deadline = time.monotonic() + PING_TIMEOUT
        while not self._indicators and time.monotonic() < deadline:
            select.select([self._d.fileno()], [], [], 0.005)
            self._drain()
        self._key("Alt_L", False)

    # ---- settling and screenshots ----

    def _drain(self) -> bool:
        """Handle every pending event; True if one says the screen may have changed."""
        from Xlib import X

        changed = False
        while self._d.pending_events():
            e = self._d.next_event()
            if e.type == X.ClientMessage:
                if e.client_type == self._atoms["WM_PROTOCOLS"] and e.data[1][0] == self._atoms["_NET_WM_PING"]:
                    self._pongs.add(int(e.data[1][1]))
                continue
            if e.type == X.MapNotify and e.override:
                self._popup_mapped(e.window)
            changed = True  # drawing, a cursor change, a window mapped, moved or restacked
        return changed

    def _popup_mapped(self, window) -> None:
        """A pop-up (override-redirect) window appeared: hide it if it is a tooltip, count it if it is Openbox's.

        GTK 3 shows a tooltip half a second after the pointer stops over a widget, whatever its
        settings say, so whether one is on screen would depend on the machine's speed: every tooltip
        is unmapped as soon as it appears, and the application repaints what it covered.
        """
        from Xlib import X
        from Xlib.error import XError

        with contextlib.suppress(XError):  # gone meanwhile
            kinds = window.get_full_property(self._atoms["_NET_WM_WINDOW_TYPE"], X.AnyPropertyType)
            if kinds is not None and self._atoms["_NET_WM_WINDOW_TYPE_TOOLTIP"] in kinds.value:
                window.unmap()
            elif window.get_wm_class() is None:
                self._indicators += 1

    def _ping(self) -> None:
        """Ping every window that answers pings (the GTK applications') and wait for the answers: they have read our input."""
        from Xlib.error import XError
        from Xlib.protocol import event

        self._pongs = set()
        sent = set()
        for wid in self._root_property("_NET_CLIENT_LIST"):
            window = self._window(wid)
            if wid not in self._ping_ok:
                try:
                    self._ping_ok[wid] = self._atoms["_NET_WM_PING"] in (window.get_wm_protocols() or [])
                except XError:
                    self._ping_ok[wid] = False
            if self._ping_ok[wid]:
                self._ping_id = (self._ping_id + 1) & 0x7FFFFFFF
                window.send_event(event.ClientMessage(window=window, client_type=self._atoms["WM_PROTOCOLS"],
                                                      data=(32, [self._atoms["_NET_WM_PING"], self._ping_id, wid, 0, 0])))
                sent.add(self._ping_id)
        self._d.flush()
        deadline = time.monotonic() + PING_TIMEOUT
        while sent - self._pongs and time.monotonic() < deadline:
            select.select([self._d.fileno()], [], [], 0.005)
            self._drain()

    def _busy(self) -> bool:
        """Whether a thread of the episode's programs is running, or waiting for the CPU or the disk."""
        for pid in self._pids:
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]  # the field after the command's name
                if state in (b"R", b"D"):
                    return True
        return False

    def _settle(self, quiet: float = QUIET, cap: float = CAP) -> None:
        """Wait until the applications have read the input and, for `quiet` seconds, nothing was drawn and no program ran."""
        self._d.sync()  # the X server has handled our input
        start = time.monotonic()
        self._ping()
        last = start
        while True:
            now = time.monotonic()
            if self._drain() or self._busy():
                last = now
            if now - last >= quiet:
                return
            if now - start >= cap:
                self._unsettled += 1
                return
            select.select([self._d.fileno()], [], [], 0.005)

    def screenshot(self) -> np.ndarray:
        """The screen as the user sees it, the cursor drawn in: (512, 512, 3) uint8."""
        from Xlib import X

        raw = self._root.get_image(0, 0, SIZE, SIZE, X.ZPixmap, 0xFFFFFFFF).data
        frame = np.frombuffer(raw, np.uint8).reshape(SIZE, SIZE, 4)[..., 2::-1].copy()  # BGRX -> RGB
        draw_cursor(frame, self._d.xfixes_get_cursor_image(self._root))
        return frame

    def _frame(self) -> np.ndarray:
        """A screenshot of the settled screen, taken with the X server grabbed so that nothing (a tooltip) appears meanwhile."""
        for _ in range(10):
            self._settle()
            self._d.grab_server()
            self._d.sync()
            if not self._drain():  # nothing happened since the screen settled
                try:
                    return self.screenshot()
                finally:
                    self._d.ungrab_server()
                    self._d.flush()
            self._d.ungrab_server()
        return self.screenshot()

    # ---- what is where ----

    def _look(self) -> None:
        """Find the managed windows (top first), their places and the focused one."""
        from Xlib import X
        from Xlib.error import XError

        order = {child.id: i for i, child in enumerate(self._root.query_tree().children)}  # bottom to top
        windows = []
        for wid in self._root_property("_NET_CLIENT_LIST"):
            window = self._window(wid)
            try:
                if window.get_attributes().map_state != X.IsViewable:
                    continue
                geometry = window.get_geometry()
                origin = window.translate_coords(self._root, 0, 0)  # the root's origin in the window: minus the window's place
                extents = window.get_full_property(self._atoms["_NET_FRAME_EXTENTS"], X.AnyPropertyType)
                top_level = window
                while (parent := top_level.query_tree().parent).id != self._root.id:
                    top_level = parent  # Openbox's frame around the window
            except XError:  # gone meanwhile
                continue
            left, right, top, bottom = list(extents.value) if extents is not None else (0, 0, 0, 0)
            x0, y0 = -origin.x, -origin.y
            box = (x0, y0, x0 + geometry.width, y0 + geometry.height)
            app = self._apps.get(wid)
            content = (box[0], box[1] + (app.top if app else 0), box[2], box[3] - (app.bottom if app else 0))
            frame = (x0 - left, y0 - top, box[2] + right, box[3] + bottom)
            windows.append((order.get(top_level.id, -1), Window(wid, app, frame, box, content)))
        self._windows = [w for _, w in sorted(windows, key=lambda t: -t[0])]
        active = self._root_property("_NET_ACTIVE_WINDOW")
        self._active = active[0] if active else 0

    def _under_pointer(self) -> tuple[Window | None, str]:
        """The top window under the pointer and the region of it (Window.region), or (None, '') over the desktop."""
        x, y = int(self.pointer[0]), int(self.pointer[1])
        for win in self._windows:
            region = win.region(x, y)
            if region:
                return win, region
        return None, ""

    def _active_window(self) -> Window | None:
        return next((w for w in self._windows if w.client == self._active), None)

    def _draw_pending(self) -> None:
        """Draw the next action's parameters now: `blocked` can see them, and every action uses the stream alike."""
        rng = self._rng
        self._pending = {
            "speed": SPEEDS[int(rng.integers(len(SPEEDS)))],
            "direction": DIRECTIONS[int(rng.integers(len(DIRECTIONS)))],
            "key": KEYS[int(rng.integers(len(KEYS)))],
        }

    # ---- PlayEnv ----

    def blocked(self, action: int) -> bool:
        name = self.action_names[action]
        if name in MOVES:
            return self._at_edge(*MOVES[name])
        if name == "switch":
            return len(self._windows) < 2
        x, y = int(self.pointer[0]), int(self.pointer[1])
        win, region = self._under_pointer()
        app = win.app if win is not None else None
        state = self._state.get(win.client, WindowState()) if win is not None else WindowState()
        if name == "click":
            if region not in ("content", "title") or self._last_click == (x, y):
                return True
            return region == "title" and win is self._windows[0] and win.client == self._active  # nothing to raise
        if name == "drag":
            dx, dy = self._pending["direction"]
            ex, ey = x + dx * self._pending["speed"], y + dy * self._pending["speed"]
            if region == "title":  # moves the window
                return not (EDGE <= ex < SIZE - EDGE and EDGE <= ey < SIZE - EDGE)
            if region != "content" or app is None or not app.drag or (app.drag == "unselected" and state.selected):
                return True
            x0, y0, x1, y1 = win.content
            x0, y0 = max(x0, 0) + DRAG_MARGIN, max(y0, 0) + DRAG_MARGIN
            x1, y1 = min(x1, SIZE) - DRAG_MARGIN, min(y1, SIZE) - DRAG_MARGIN
            return not (x0 <= x < x1 and y0 <= y < y1 and x0 <= ex < x1 and y0 <= ey < y1)
        if name in ("scroll-up", "scroll-down"):
            if region != "content" or app is None:
                return True
            back = (name == "scroll-down") if app.scroll_from_bottom else (name == "scroll-up")
            return back and state.scrolled == 0
        active = self._active_window()
        if active is None or active.app is None:
            return True
        state = self._state[active.client]
        if name == "type":
            return not active.app.typing
        return state.all_selected or (active.app.key == "terminal" and state.typed == 0)  # select-all

    def _focus_for_press(self, win: Window | None) -> None:
        """Focus and raise the window about to be pressed on, as Openbox would on the press, but before it.

        Left to Openbox, the press would reach the application while it is still taking the focus
        (it answers WM_TAKE_FOCUS by setting the focus itself), and what the press does (GTK 2's
        icon view draws a pressed item one way or another) would depend on which came first.
        """
        if win is not None and win.client != self._active:
            self._activate(win.client)
            self._settle()
            self._look()

    def _at_edge(self, dx: int, dy: int) -> bool:
        """Whether the pointer cannot move the smallest step in direction (dx, dy)."""
        x, y = int(self.pointer[0]) + dx * SPEEDS[0], int(self.pointer[1]) + dy * SPEEDS[0]
        return not (EDGE <= x <= SIZE - 1 - EDGE and EDGE <= y <= SIZE - 1 - EDGE)

    def play(self, action: int) -> np.ndarray:
        name = self.action_names[action]
        speed, direction, key = self._pending["speed"], self._pending["direction"], self._pending["key"]
        win, region = self._under_pointer()
        state = self._state.get(win.client) if win is not None and region == "content" else None
        active = self._active_window()
        active_state = self._state.get(active.client) if active is not None else None
        frames = []
        if name in MOVES or name == "drag":
            dx, dy = MOVES.get(name, direction)
            start = self.pointer.copy()
            if name == "drag":
                self._focus_for_press(win)
                self._button(1, True)
            for i in range(1, 5):  # a quarter of the way per video frame
                self.pointer = np.clip(start + np.array([dx, dy]) * (speed * i // 4), EDGE, SIZE - 1 - EDGE)
                self._move_to(*self.pointer)
                if name == "drag" and i == 4:
                    self._button(1, False)
                frames.append(self._frame())
            if name == "drag" and state is not None:
                state.selected, state.all_selected = True, False
        elif name in ("scroll-up", "scroll-down"):
            button = 4 if name == "scroll-up" else 5
            for _ in range(NOTCHES):  # a wheel notch per video frame
                self._button(button, True)
                self._button(button, False)
                frames.append(self._frame())
            if state is not None:
                back = (name == "scroll-down") if win.app.scroll_from_bottom else (name == "scroll-up")
                state.scrolled = max(0, state.scrolled - NOTCHES) if back else state.scrolled + NOTCHES
        else:
            if name == "click":
                self._focus_for_press(win)
                self._button(1, True)
                self._button(1, False)
                if state is not None:
                    state.selected = state.all_selected = False
            elif name == "type":
                self._keys(key)
                if active_state is not None:
                    active_state.typed += 1
                    active_state.selected = active_state.all_selected = False
                    if active.app.scroll_from_bottom:
                        active_state.scrolled = 0  # a key brings the terminal back to its end
            elif name == "select-all":
                self._keys("Control_L", "a")
                if active_state is not None:
                    active_state.selected = active_state.all_selected = True
            else:  # switch
                self._switch_window()
            frames = list(repeat(self._frame()))
        self._last_click = (int(self.pointer[0]), int(self.pointer[1])) if name == "click" else None
        self._look()
        self._draw_pending()
        return np.stack(frames)


def draw_cursor(frame: np.ndarray, cursor) -> None:
    """Blend an XFixes cursor image (premultiplied ARGB) into `frame` (H, W, 3) uint8, in place, at the pointer."""
    w, h = int(cursor.width), int(cursor.height)
    if w == 0 or h == 0:
        return
    argb = np.asarray(cursor.cursor_image, np.uint32).reshape(h, w)
    x0, y0 = int(cursor.x) - int(cursor.xhot), int(cursor.y) - int(cursor.yhot)
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + w, frame.shape[1]), min(y0 + h, frame.shape[0])
    if fx0 >= fx1 or fy0 >= fy1:
        return
    argb = argb[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    alpha = (argb >> 24)[..., None]
    colour = np.stack([(argb >> 16) & 255, (argb >> 8) & 255, argb & 255], axis=-1)
    under = frame[fy0:fy1, fx0:fx1].astype(np.uint32)
    frame[fy0:fy1, fx0:fx1] = np.minimum(colour + (under * (255 - alpha) + 127) // 255, 255).astype(np.uint8)


def kill_group(pgid: int, sig: int) -> None:
    """Send `sig` to process group `pgid` (a program started in a session of its own, and its children); gone: nothing."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def tagged_processes(tag: str) -> list[int]:
    """Ids of the running processes whose environment holds LAM_DESKTOP_TAG=`tag`: the ones an environment started."""
    needle = f"LAM_DESKTOP_TAG={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found

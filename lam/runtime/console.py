"""The console of a run: the product's lines, warnings and the result; Ray's own lines to the run's ray.log.

Ray prints a lot on the driver's console: what its workers and actors print, forwarded
with a coloured "(RayTrainWorker pid=...)" prefix (Ray Data's execution plans, Train's
notices, deprecation warnings), and its own driver-side log records and warnings. With

    route_console(run_dir / "ray.log", verbose=False)     # before or after init_ray

the console keeps only the product's lines (those starting with `OUR_PREFIXES`, printed
without Ray's prefix), the product's warnings and errors; everything of Ray's goes to
the log file (and stays in Ray's own session logs). `verbose=True` leaves Ray's console
as Ray makes it, and still writes the log file.

The forwarded lines are reached through Ray's dispatcher of worker output, which is not
a public API: where it is missing (another Ray version, or `log_to_driver` off), those
lines stay as Ray prints them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import ray

try:  # not public API: see the module docstring
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as _dispatcher
    from ray._private.worker import filter_autoscaler_events
except ImportError:
    _dispatcher = None

OUR_PREFIXES = ("[lam]", "lam:", "[tune]")
RAY_LOGGERS = ("ray", "ray.data")  # ray.data does not propagate to ray


class RayConsole:
    """Routes one batch of lines that Ray forwarded from a worker or actor to this driver."""

    def __init__(self, ray_printer):
        self.ray_printer = ray_printer  # Ray's own printer of forwarded lines
        self.log_path: str | None = None
        self.verbose = False

    def __call__(self, data: dict) -> None:
        if self.verbose:
            self.ray_printer(data)
        if data.get("pid") == "autoscaler":
            self._autoscaler(data)
            return
        lines = data.get("lines", [])
        theirs = [line for line in lines if not line.startswith(OUR_PREFIXES)]
        if self.log_path and theirs:
            source = f"({data.get('actor_name') or data.get('task_name') or ''} pid={data.get('pid')})".replace("( ", "(")
            self._write(f"{source} {line}" for line in theirs)
        ours = [line for line in lines if line.startswith(OUR_PREFIXES)]
        if ours and not self.verbose:
            print("\n".join(ours), file=sys.stderr if data.get("is_err") else sys.stdout, flush=True)

    def _autoscaler(self, data: dict) -> None:
        """The autoscaler's events (nodes added or removed) stay on the console, as Ray shows them,
        because they say why a run waits; its periodic status reports are left out."""
        if self.verbose:
            return  # Ray has printed them
        events = [f"(autoscaler) {line}" for line in filter_autoscaler_events(data.get("lines", []))]
        if events:
            print("\n".join(events), file=sys.stderr if data.get("is_err") else sys.stdout, flush=True)
            if self.log_path:
                self._write(events)

    def _write(self, lines) -> None:
        with open(self.log_path, "a") as f:
            f.writelines(f"{line}\n" for line in lines)


class _QuietUnlessVerbose(logging.Filter):
    """On Ray's console handlers in the driver: let records through only in verbose mode."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _state["verbose"]


_state = {"verbose": True, "log_path": None, "console": None, "file_handler": None}


def route_console(log_path: str | os.PathLike | None = None, verbose: bool = False) -> None:
    """Send Ray's lines to `log_path` (None: only Ray's session logs) and, unless `verbose`,
    keep them off the console. Call again for the next run of the same process."""
    _state["verbose"] = verbose
    _state["log_path"] = str(log_path) if log_path else None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    _route_loggers()
    _route_warnings(os.path.dirname(ray.__file__))
    if ray.is_initialized():
        attach_forwarded_lines()


def attach_forwarded_lines() -> None:
    """Route the lines Ray forwards from workers (`init_ray` calls this after starting Ray)."""
    if _dispatcher is None or (_state["log_path"] is None and _state["verbose"]):
        return  # route_console was never called (or asked for nothing): Ray's console as it is
    console = _state["console"]
    if console is None:
        printers = dict(_dispatcher.handlers)
        if "ray_print_logs" not in printers:
            return
        console = _state["console"] = RayConsole(printers["ray_print_logs"])
        _dispatcher.remove_handler("ray_print_logs")
        _dispatcher.add_handler("lam_console", console)
    console.log_path, console.verbose = _state["log_path"], _state["verbose"]


def _route_loggers() -> None:
    """Ray's driver-side log records: to the log file; on the console only when verbose."""
    old = _state["file_handler"]
    new = logging.FileHandler(_state["log_path"]) if _state["log_path"] else None
    if new is not None:
        new.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                if not any(isinstance(f, _QuietUnlessVerbose) for f in handler.filters):
                    handler.addFilter(_QuietUnlessVerbose())
        if old is not None:
            logger.removeHandler(old)
        if new is not None:
            logger.addHandler(new)
    if old is not None:
        old.close()
    _state["file_handler"] = new


def _route_warnings(ray_dir: str) -> None:
    """Python warnings raised inside Ray's own code in the driver: to the log file unless verbose."""
    if getattr(warnings.showwarning, "routes_ray", False):
        return
    shown_before = warnings.showwarning  # whatever showed warnings until now (also a test runner's)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if _state["verbose"] or not str(filename).startswith(ray_dir):
            shown_before(message, category, filename, lineno, file, line)
        elif _state["log_path"]:
            with open(_state["log_path"], "a") as f:
                f.write(warnings.formatwarning(message, category, filename, lineno, line))

    showwarning.routes_ray = True
    warnings.showwarning = showwarning

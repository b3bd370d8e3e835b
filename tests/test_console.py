"""The console of a run: the product's lines on it, Ray's forwarded lines in the run's ray.log."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
import ray

from lam.runtime.console import RayConsole, route_console


def forwarded(lines, is_err=False, actor="RayTrainWorker", pid=123):
    """A batch of lines as Ray forwards them from a worker to the driver."""
    return {"lines": lines, "is_err": is_err, "actor_name": actor, "pid": pid, "ip": "127.0.0.1", "localhost": "127.0.0.1"}


def test_product_lines_reach_the_console_plainly_and_ray_lines_go_to_the_log(tmp_path, capsys):
    printed_by_ray = []
    console = RayConsole(printed_by_ray.append)
    console.log_path = str(tmp_path / "ray.log")
    console(forwarded(["[lam] epoch 1/2 done: train/loss 0.5", "Starting execution of Dataset train_1_0"]))
    console(forwarded(["lam: warning: something the user should see", "DeprecationWarning: ray.foo"], is_err=True,
                      actor="", pid=456))
    out, err = capsys.readouterr()
    assert out == "[lam] epoch 1/2 done: train/loss 0.5\n"
    assert err == "lam: warning: something the user should see\n"
    assert (tmp_path / "ray.log").read_text().splitlines() == [
        "(RayTrainWorker pid=123) Starting execution of Dataset train_1_0",
        "(pid=456) DeprecationWarning: ray.foo",
    ]
    assert printed_by_ray == []


def test_without_a_log_file_ray_lines_are_only_dropped_from_the_console(capsys):
    console = RayConsole(lambda data: None)
    console(forwarded(["Dataset execution finished", "[tune] sweep s1: 2 trials"]))
    assert capsys.readouterr().out == "[tune] sweep s1: 2 trials\n"


def test_verbose_gives_ray_its_console_back_and_still_writes_the_log(tmp_path, capsys):
    printed_by_ray = []
    console = RayConsole(printed_by_ray.append)
    console.log_path, console.verbose = str(tmp_path / "ray.log"), True
    batch = forwarded(["[lam] epoch 1/2 done", "Starting execution of Dataset train_1_0"])
    console(batch)
    assert printed_by_ray == [batch] and capsys.readouterr().out == ""
    assert (tmp_path / "ray.log").read_text() == "(RayTrainWorker pid=123) Starting execution of Dataset train_1_0\n"


@pytest.fixture
def routed(tmp_path):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        log = tmp_path / "run" / "ray.log"
        route_console(log, verbose=False)
        yield log, shown
    route_console(None, verbose=True)  # the rest of the test session sees Ray's console as usual


def rays_console_shows(message: str) -> bool:
    """Whether Ray's console handler in this driver lets a record through."""
    record = logging.getLogger("ray").makeRecord("ray", logging.WARNING, __file__, 1, message, (), None)
    handlers = [h for h in logging.getLogger("ray").handlers if type(h) is not logging.FileHandler]
    assert handlers, "Ray's driver logger has no console handler"
    return all(h.filter(record) for h in handlers)


def test_rays_driver_side_records_and_warnings_go_to_the_log_and_ours_stay(routed):
    log, shown = routed
    logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster.")
    assert not rays_console_shows("Token authentication is enabled for this Ray cluster.")
    ray_file = os.path.join(os.path.dirname(ray.__file__), "train", "something.py")
    warnings.warn_explicit("`ray.foo` is deprecated", UserWarning, ray_file, 12)
    warnings.warn_explicit("skipping 1 file shorter than one window", UserWarning, "/x/lam/data/windows.py", 80)
    assert [str(w.message) for w in shown] == ["skipping 1 file shorter than one window"]  # ours are shown as usual
    text = log.read_text()
    assert "Token authentication is enabled" in text and "`ray.foo` is deprecated" in text and "skipping" not in text


def test_verbose_shows_rays_driver_side_records_again(routed):
    log, shown = routed
    route_console(log, verbose=True)
    assert rays_console_shows("a notice from Ray")
    warnings.warn_explicit("`ray.foo` is deprecated", UserWarning, os.path.join(os.path.dirname(ray.__file__), "x.py"), 1)
    assert [str(w.message) for w in shown] == ["`ray.foo` is deprecated"]


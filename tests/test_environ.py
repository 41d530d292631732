"""environ.scoped: variables for the kernels a process starts, restored afterwards, across threads."""

import os
import threading

from vitscale import environ


def test_scoped_sets_and_restores_set_and_unset_names(monkeypatch):
    monkeypatch.setenv("VITSCALE_T_KEPT", "mine")
    monkeypatch.delenv("VITSCALE_T_NEW", raising=False)
    with environ.scoped({"VITSCALE_T_KEPT": "kernel", "VITSCALE_T_NEW": "1"}):
        assert os.environ["VITSCALE_T_KEPT"] == "kernel" and os.environ["VITSCALE_T_NEW"] == "1"
    assert os.environ["VITSCALE_T_KEPT"] == "mine"
    assert "VITSCALE_T_NEW" not in os.environ


def test_overlapping_scopes_in_threads_restore_only_when_the_last_exits(monkeypatch):
    """A sweep's workers start kernels side by side: one worker's exit must not take the variable
    away from a kernel another worker is still starting."""
    monkeypatch.delenv("VITSCALE_T_BATCH", raising=False)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with environ.scoped({"VITSCALE_T_BATCH": "1"}):
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with environ.scoped({"VITSCALE_T_BATCH": "1"}):
            second_in.set()
            first_out.wait(10)
            seen["after first left"] = os.environ.get("VITSCALE_T_BATCH")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"after first left": "1"}
    assert "VITSCALE_T_BATCH" not in os.environ


def test_a_failure_inside_still_restores(monkeypatch):
    monkeypatch.delenv("VITSCALE_T_FAIL", raising=False)
    try:
        with environ.scoped({"VITSCALE_T_FAIL": "1"}):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert "VITSCALE_T_FAIL" not in os.environ

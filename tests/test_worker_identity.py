"""Worker identity: readable names, ``hookpool.current_worker()``, and the OS process title
(when ``setproctitle`` is installed; a stand-in module records the call here)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import threading
from pathlib import Path

import pytest
import tasks_logging
from faces import MakeFace
from tasks import raise_value_error

import hookpool


def test_outside_a_worker_current_worker_is_none() -> None:
    assert hookpool.current_worker() is None
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(hookpool.current_worker()))
    thread.start()
    thread.join(10)
    assert found == [None]


def test_worker_info_is_a_small_read_only_record() -> None:
    info = hookpool.WorkerInfo(index=1, name="hookpool-worker-1", pid=123, tasks_done=0)
    assert (info.index, info.name, info.pid, info.tasks_done) == (1, "hookpool-worker-1", 123, 0)
    with pytest.raises(AttributeError):
        info.tasks_done = 1  # type: ignore[misc]
    assert info == hookpool.WorkerInfo(1, "hookpool-worker-1", 123, 0)
    assert pickle.loads(pickle.dumps(info)) == info
    assert repr(info) == (
        "WorkerInfo(index=1, name='hookpool-worker-1', pid=123, tasks_done=0, memory=None, "
        "leaving=None)"
    )
    leaving = hookpool.WorkerInfo(1, "w", 123, 4, memory=2**20, leaving="max_memory_per_child")
    assert (leaving.memory, leaving.leaving) == (2**20, "max_memory_per_child")
    assert pickle.loads(pickle.dumps(leaving)) == leaving != info


def test_inside_a_task_it_names_the_worker_and_counts_tasks(facade: MakeFace) -> None:
    face = facade(1)
    seen = [face.apply(tasks_logging.whoami) for _ in range(3)]
    for done, found in enumerate(seen):
        info = found["info"]
        assert info["pid"] == found["pid"] == face.worker_pids[0]
        assert info["name"] == found["process_name"]
        assert info["index"] == 1
        assert info["name"].endswith("-worker-1")
        assert info["tasks_done"] == done


def test_failed_tasks_count_too(facade: MakeFace) -> None:
    face = facade(1)
    with pytest.raises(ValueError):
        face.apply(raise_value_error, "boom")
    assert face.apply(tasks_logging.whoami)["info"]["tasks_done"] == 1


def test_names_per_facade_and_replacements_get_new_indexes(tmp_path: Path) -> None:
    with hookpool.Pool(1, maxtasksperchild=1) as pool:
        first = pool.apply_async(tasks_logging.whoami).get(timeout=30)["info"]
        second = pool.apply_async(tasks_logging.whoami).get(timeout=30)["info"]
    assert first["name"] == "hookpool-worker-1" and first["index"] == 1
    assert second["name"] == "hookpool-worker-2" and second["index"] == 2
    assert first["pid"] != second["pid"]
    assert first["tasks_done"] == second["tasks_done"] == 0
    with hookpool.ProcessPoolExecutor(1) as executor:
        info = executor.submit(tasks_logging.whoami).result(timeout=30)["info"]
    assert info["name"] == "hookpool-executor-worker-1"


def test_initializer_and_finalizer_see_the_worker(facade: MakeFace, tmp_path: Path) -> None:
    face = facade(
        1,
        initializer=tasks_logging.record_identity,
        initargs=(str(tmp_path), "init"),
        finalizer=tasks_logging.record_identity,
        finalargs=(str(tmp_path), "fin"),
    )
    (pid,) = face.worker_pids
    face.apply(tasks_logging.whoami)
    face.apply(tasks_logging.whoami)
    face.shutdown()
    init = json.loads((tmp_path / f"init-{pid}.json").read_text())
    fin = json.loads((tmp_path / f"fin-{pid}.json").read_text())
    assert init["pid"] == fin["pid"] == pid
    assert (init["tasks_done"], fin["tasks_done"]) == (0, 2)
    assert init["name"] == fin["name"]


def test_threads_in_a_worker_see_it_but_forked_children_do_not(facade: MakeFace) -> None:
    face = facade(1)
    info = face.apply(tasks_logging.whoami_in_thread)
    assert info is not None and info["pid"] == face.worker_pids[0]
    assert face.apply(tasks_logging.whoami_in_fork) is True


FAKE_SETPROCTITLE = """
import os

def setproctitle(title):
    with open(os.path.join(os.environ["HOOKPOOL_TEST_TITLES"], str(os.getpid())), "w") as f:
        f.write(title)
"""


def test_the_process_title_is_set_when_setproctitle_is_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "setproctitle.py").write_text(FAKE_SETPROCTITLE)
    titles = tmp_path / "titles"
    titles.mkdir()
    monkeypatch.setenv("HOOKPOOL_TEST_TITLES", str(titles))
    monkeypatch.syspath_prepend(str(fake))  # spawned workers get the parent's sys.path
    pool = hookpool.Pool(2)
    infos = [pool.apply_async(tasks_logging.whoami).get(timeout=30) for _ in range(2)]
    pids = pool.worker_pids
    pool.close()  # every worker, started or starting, finishes starting up, then leaves
    pool.join()
    written = {int(p.name): p.read_text() for p in titles.iterdir()}
    assert sorted(written) == sorted(pids)
    assert sorted(written.values()) == ["hookpool-worker-1", "hookpool-worker-2"]
    for found in infos:
        assert written[found["pid"]] == found["info"]["name"]


@pytest.mark.skipif(
    importlib.util.find_spec("setproctitle") is not None, reason="setproctitle is installed"
)
def test_without_setproctitle_workers_start_as_usual(facade: MakeFace) -> None:
    face = facade(1)
    assert face.apply(tasks_logging.whoami)["info"]["pid"] == face.worker_pids[0]
    assert os.getpid() != face.worker_pids[0]


def test_a_sigterm_during_the_finalizer_keeps_why_the_worker_leaves(tmp_path: Path) -> None:
    """close() asks the worker to leave ("close"); a terminate() that comes while its
    finalizer runs does not rewrite that to "stopped"."""
    from tasks_hooks import wait_for
    from tasks_memory import fin_leaving_late, leaving

    import hookpool

    pool = hookpool.Pool(1, finalizer=fin_leaving_late, finalargs=(str(tmp_path), 1.0))
    assert pool.apply(abs, (-1,)) == 1
    pool.close()
    wait_for(lambda: any(tmp_path.glob("fin-started-*")), what="the finalizer started")
    pool.terminate()  # SIGTERM while the finalizer sleeps
    (why,) = leaving(str(tmp_path)).values()
    assert why["leaving"] == "close"

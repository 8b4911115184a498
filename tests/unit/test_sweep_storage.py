"""A sweep's storage and its workers' turns, on real Optuna storages (journal files, SQLite): URL forms, the study lock,
lost trials (a heartbeat unchanged for 3 beats) failed and queued once again, and the study's heartbeat as part of its
identity. The workers themselves, on PostgreSQL and a journal, are in tests/integration/test_sweep_workers.py."""

from __future__ import annotations

import threading
import time

import pytest

from tunebench.app.cli import main
from tunebench.app.sweep_storage import journal_path, normalize_url, open_storage, shown_url, study_lock
from tunebench.app.sweep_study import HEARTBEAT_ATTR, LostTrials, SweepOptions, claim_next, open_study
from tunebench.core.errors import ConfigError

optuna = pytest.importorskip("optuna")


def test_journal_urls_name_a_file_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert journal_path("journal:/shared/s.journal").as_posix() == "/shared/s.journal"
    assert journal_path("journal:///shared/s.journal").as_posix() == "/shared/s.journal"
    assert journal_path("sqlite:///x.db") is None
    assert normalize_url("journal:s.journal") == f"journal:{tmp_path / 's.journal'}"
    assert normalize_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"
    assert shown_url("journal:/shared/s.journal") == "journal:/shared/s.journal"
    assert shown_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    with pytest.raises(ConfigError, match="does not exist"):
        normalize_url(f"journal:{tmp_path / 'missing' / 's.journal'}")
    with pytest.raises(ConfigError, match="is a folder"):
        normalize_url(f"journal:{tmp_path}")


def test_bad_storage_and_heartbeat_exit_2_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["sweep", "smoke", "--trials", "2", "--out", str(out), "--no-confirm"]
    for extra, expect in (
        (["--storage", f"journal:{tmp_path / 'nowhere' / 's.journal'}"], "does not exist"),
        (["--heartbeat", "0"], "--heartbeat 0"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert expect in err and "Traceback" not in err
        assert not out.exists()


def test_the_study_lock_lets_one_holder_in_at_a_time(tmp_path):
    for url in (f"journal:{tmp_path / 's.journal'}", f"sqlite:///{tmp_path / 's.db'}"):
        inside, most = [0], [0]

        def hold(url=url, inside=inside, most=most):
            for _ in range(5):
                with study_lock(url):
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                    time.sleep(0.01)
                    inside[0] -= 1

        threads = [threading.Thread(target=hold) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert most[0] == 1, url


def journal_study(tmp_path):
    url = f"journal:{tmp_path / 's.journal'}"
    storage = open_storage(url)
    return optuna.create_study(storage=storage, study_name="s"), storage, url


def beat(storage, trial, value):
    storage.set_trial_user_attr(trial._trial_id, HEARTBEAT_ATTR, value)


def test_a_trial_whose_heartbeat_stops_is_failed_and_queued_once_again(tmp_path):
    study, storage, _ = journal_study(tmp_path)
    alive, dead = study.ask(), study.ask()
    for t in (alive, dead):
        t.suggest_int("x", 0, 10)
        beat(storage, t, 1.0)
    lost = LostTrials(every=0.1)  # lost after 0.3 s unchanged
    lost.fail(study, storage)  # first sight: nothing is judged
    for k in range(4):
        time.sleep(0.12)
        beat(storage, alive, 2.0 + k)  # this one keeps beating
        lost.fail(study, storage)
    by = {t.number: t for t in study.get_trials()}
    assert by[alive.number].state.name == "RUNNING"
    assert by[dead.number].state.name == "FAIL" and by[dead.number].user_attrs["lost"] is True
    assert "no heartbeat for 0.3 s" in by[dead.number].user_attrs["error"]
    (retry,) = [t for t in by.values() if t.state.name == "WAITING"]
    assert retry.user_attrs["retry_of"] == dead.number

    # the retry runs, and dies too: it is failed, and not queued a third time
    study.tell(alive, 1.0)
    again = study.ask()
    assert again.number == retry.number
    assert again.suggest_int("x", 0, 10) == by[dead.number].params["x"]  # the lost configuration, again
    beat(storage, again, 1.0)
    for _ in range(4):
        lost.fail(study, storage)
        time.sleep(0.12)
    lost.fail(study, storage)
    states = [t.state.name for t in study.get_trials()]
    assert states.count("FAIL") == 2 and states.count("COMPLETE") == 1 and "WAITING" not in states


def test_a_lost_trial_is_failed_by_one_worker_only(tmp_path):
    study, storage, url = journal_study(tmp_path)
    t = study.ask()
    t.suggest_int("x", 0, 10)
    beat(storage, t, 1.0)
    workers = [LostTrials(every=0.05), LostTrials(every=0.05)]
    for w in workers:
        w.fail(study, storage)
    time.sleep(0.2)
    claims = [claim_next(study, storage, url, 5, w) for w in workers]  # each fails what it finds lost, then asks
    trials = study.get_trials()
    assert [x.state.name for x in trials].count("FAIL") == 1
    assert sum(1 for x in trials if x.user_attrs.get("retry_of") == t.number) == 1  # queued once, run by the first
    assert claims[0][0].user_attrs["retry_of"] == t.number  # the first popped the queued retry
    assert "retry_of" not in claims[1][0].user_attrs and claims[1][1:] == (0, 1)  # the second: a new one, 1 running


def test_claims_stop_at_the_target_counting_running_trials(tmp_path):
    study, storage, url = journal_study(tmp_path)
    lost = LostTrials(every=60)
    first, finished, running = claim_next(study, storage, url, 2, lost)
    second, _, _ = claim_next(study, storage, url, 2, lost)
    assert first is not None and second is not None
    assert claim_next(study, storage, url, 2, lost) == (None, 0, 2)  # two running: nothing more to ask
    study.tell(first, 1.0)
    study.tell(second, 2.0)
    assert claim_next(study, storage, url, 2, lost) == (None, 2, 0)


def test_a_study_made_with_another_heartbeat_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    identity = {"config": "c", "space": "s", "seeds": 1, "pruner": "none", "preset": "smoke", "overrides": []}
    open_study(url, "s", SweepOptions("smoke", 2, heartbeat=60), {**identity, "heartbeat": 60})
    open_study(url, "s", SweepOptions("smoke", 2, heartbeat=60), {**identity, "heartbeat": 60})  # the same: resumes
    with pytest.raises(ConfigError, match=r"another heartbeat .*--heartbeat 60"):
        open_study(url, "s", SweepOptions("smoke", 2, heartbeat=5), {**identity, "heartbeat": 5})


def test_a_run_folders_lock_record_hides_the_storage_password(tmp_path, monkeypatch):
    """A trial's folder is locked by the worker, whose command line may carry the database URL with its password."""
    import json

    from tunebench.core.lock import RECORD_NAME, run_lock

    url = "postgresql://sweeper:s3cret@db.cluster:5432/tunebench"
    monkeypatch.setattr("sys.argv", ["tunebench", "sweep", "smoke", "--storage", url, "train.lr=1e-3"])
    with run_lock(tmp_path / "trial", "sweep"):
        argv = json.loads((tmp_path / "trial" / RECORD_NAME).read_text())["argv"]
    assert argv[4] == "postgresql://sweeper:***@db.cluster:5432/tunebench" and argv[5] == "train.lr=1e-3"

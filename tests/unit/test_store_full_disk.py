"""The request log on a full disk: a failed write loses its batch, counted, and never reaches the caller.

SQLite's own size limit (``PRAGMA max_page_count``) fails a write with SQLITE_FULL, "database or disk is
full", the error a full disk gives, and rolls the transaction back by itself (review12a: the store's second
ROLLBACK then raised "cannot rollback - no transaction is active", hiding the real error, and the batch was
lost without being counted)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.store import Store


def _fill_up(store: Store, rows: int) -> None:
    for i in range(rows):
        store.record_request(1000.0 + i, "m", f"client-{i}", {"n1": 1.5}, "n1", 2.0, 200)


def test_a_failed_write_is_counted_logged_once_and_the_log_works_again_when_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # no room for one more page
    _fill_up(store, 2000)
    with caplog.at_level(logging.WARNING, logger="agent.store"):
        assert store.flush() == 0
        _fill_up(store, 2000)
        assert store.requests_since(0, 10) == ([], 0)  # a reader flushes first: no error reaches it
    assert (store.dropped, store.write_failures) == (4000, 2)
    assert "full" in store.last_write_error
    assert len([r for r in caplog.records if "request records failed" in r.message]) == 1  # once a minute at most
    store._db.execute("PRAGMA max_page_count = 1073741823")  # room again
    _fill_up(store, 3)
    assert store.flush() == 3
    assert len(store.requests_since(0, 10)[0]) == 3
    assert store.dropped == 4000  # nothing else lost


def test_an_error_sqlite_already_rolled_back_is_raised_as_itself(tmp_path: Path) -> None:
    store = Store(tmp_path)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    _fill_up(store, 2000)
    with pytest.raises(Exception, match="full"):
        store._write(list(store._pending))

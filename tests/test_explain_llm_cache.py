"""The SQLite LLM cache: keys, WAL mode, thread safety, persistence."""

from __future__ import annotations

import sqlite3
import threading

from explain.llm.cache import LLMCache, request_key


def test_key_is_order_independent_and_sensitive_to_every_field():
    a = {"op": "generate", "model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    b = {"seed": 1, "messages": [{"content": "hi", "role": "user"}], "model": "m", "op": "generate"}
    assert request_key(a) == request_key(b)
    for change in ({"seed": 2}, {"model": "m2"}, {"messages": [{"role": "user", "content": "hi!"}]}):
        assert request_key({**a, **change}) != request_key(a)


def test_wal_mode_persistence_and_disabled(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    cache = LLMCache(path)
    assert cache.get({"x": 1}) is None
    cache.put({"x": 1}, {"texts": ["ok"]})
    cache.close()
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    again = LLMCache(path)
    assert again.get({"x": 1}) == {"texts": ["ok"]} and len(again) == 1
    off = LLMCache.disabled()
    off.put({"x": 1}, {"y": 2})
    assert off.get({"x": 1}) is None and not off.enabled


def test_threads_can_share_one_cache(tmp_path):
    cache = LLMCache(tmp_path / "c.sqlite")

    def work(t: int) -> None:
        for i in range(40):
            cache.put({"t": t, "i": i}, {"v": t * 1000 + i})
            assert cache.get({"t": t, "i": i}) == {"v": t * 1000 + i}

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(cache) == 240
    assert all(cache.get({"t": t, "i": 39}) == {"v": t * 1000 + 39} for t in range(6))


def test_a_multi_line_database_error_is_a_one_line_user_error(tmp_path, monkeypatch):
    import pytest

    import explain.llm.cache
    from common.errors import UserError

    def broken(*args, **kwargs):
        raise sqlite3.DatabaseError("file is not a database\nSQL logic error near line 3\n")

    monkeypatch.setattr(explain.llm.cache.sqlite3, "connect", broken)
    (tmp_path / "c.sqlite").write_bytes(b"an existing cache is opened (and checked) at once")
    with pytest.raises(UserError) as info:
        LLMCache(tmp_path / "c.sqlite")
    message = str(info.value)
    assert "\n" not in message and "file is not a database" in message and "SQL logic" not in message
    assert message.endswith("delete it or pass another path")


def test_the_database_file_is_made_only_when_something_is_stored(tmp_path):
    """A run that stops at a setup error must not leave an empty llm_cache.sqlite (nor its folder) behind."""
    path = tmp_path / "out" / "llm_cache.sqlite"
    cache = LLMCache(path)
    assert cache.enabled and cache.get({"q": 1}) is None and len(cache) == 0
    cache.close()
    assert not (tmp_path / "out").exists()
    cache = LLMCache(path)
    cache.put({"q": 1}, {"a": 2})
    cache.close()
    again = LLMCache(path)
    assert again.get({"q": 1}) == {"a": 2} and len(again) == 1
    again.close()
    assert again.get({"q": 1}) is None  # closed: nothing is read or written any more

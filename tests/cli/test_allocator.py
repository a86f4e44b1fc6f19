"""tune_allocator: glibc keeps freed memory, in one heap that every thread uses."""

from __future__ import annotations

import pytest

from imgclf.cli import allocator


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return self.answer


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.delenv("IMGCLF_NO_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: fake)
    return fake


def test_freed_memory_stays_in_one_heap_shared_by_all_threads(libc):
    assert allocator.tune_allocator() is True
    # M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB, M_ARENA_MAX=1 (mallopt's option numbers from malloc.h)
    assert sorted(libc.calls) == sorted([(-4, 0), (-1, 1 << 30), (-8, 1)])
    assert allocator.tune_allocator() is True and len(libc.calls) == 3  # once per process


def test_a_refused_option_reports_not_tuned(libc):
    libc.answer = 0
    assert allocator.tune_allocator() is False


def test_the_environment_can_switch_it_off(libc, monkeypatch):
    monkeypatch.setenv("IMGCLF_NO_MALLOC_TUNING", "1")
    assert allocator.tune_allocator() is False and libc.calls == []

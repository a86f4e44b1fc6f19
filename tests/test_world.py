"""World.from_env: the torchrun environment read once and checked."""

from __future__ import annotations

import pytest

from imgclf.errors import UsageError
from imgclf.world import World


def test_no_torchrun_variables_is_the_world_of_one():
    world = World.from_env({"PATH": "/usr/bin"})
    assert world == World(rank=0, size=1, local_rank=0)
    assert world.is_main and not world.distributed


def test_torchrun_variables_are_read():
    world = World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank) == (3, 4, 1)
    assert not world.is_main and world.distributed


def test_local_rank_defaults_to_zero():
    assert World.from_env({"RANK": "0", "WORLD_SIZE": "2"}).local_rank == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "1"}, "incomplete torchrun environment: only RANK is set"),
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "incomplete torchrun environment: only WORLD_SIZE, LOCAL"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not a whole number"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 does not fit WORLD_SIZE=2"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "RANK=0 does not fit WORLD_SIZE=0"),
    ],
)
def test_a_broken_environment_is_a_usage_error(env, message):
    with pytest.raises(UsageError) as info:
        World.from_env(env)
    assert str(info.value).startswith(message)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("env", "reports"),
    [
        ({}, True),  # not under torchrun
        ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "GROUP_RANK": "0"}, False),  # rank 0's machine
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "GROUP_RANK": "1"}, True),  # another machine
        ({"RANK": "1", "WORLD_SIZE": "2"}, False),
    ],
)
def test_on_rank_0s_machine_only_rank_0_reports_an_error_every_rank_finds(env, reports):
    from imgclf.world import reports_alike_errors

    assert reports_alike_errors(env) is reports


def test_rank_0_waits_for_the_quiet_ranks_marks_and_no_longer(monkeypatch, tmp_path):
    import time

    from imgclf import world

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = {"TORCHELASTIC_RUN_ID": "run-1", "LOCAL_WORLD_SIZE": "3", "LOCAL_RANK": "0"}
    for rank in ("1", "2"):
        world.note_alike_error({**env, "LOCAL_RANK": rank})
    started = time.monotonic()
    world.wait_for_quiet_peers(env, timeout_s=20)
    assert time.monotonic() - started < 10  # both marks were there: no wait for the deadline
    assert list(tmp_path.iterdir()) == []  # the marks are cleaned up
    world.note_alike_error({**env, "LOCAL_RANK": "1"})  # one of two quiet ranks only: bounded wait
    started = time.monotonic()
    world.wait_for_quiet_peers(env, timeout_s=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    world.wait_for_quiet_peers({"LOCAL_WORLD_SIZE": "3"}, timeout_s=20)  # not under torchrun: returns at once

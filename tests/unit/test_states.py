"""The transition table itself, without a database: targets and fencing.

The table-driven test of every transition against PostgreSQL is ``test_transitions``.
"""

from __future__ import annotations

import pytest

from pg_scheduler import states
from pg_scheduler.states import JobStatus, RunStatus

P, R, F = JobStatus.PENDING, JobStatus.RUNNING, JobStatus.FAILED


def test_a_target_outside_the_table_is_refused() -> None:
    assert states.RESCUE.to(F) is F
    with pytest.raises(ValueError, match="'release' cannot end in 'failed'"):
        states.RELEASE.to(F)
    with pytest.raises(ValueError, match="'complete' cannot end in 'pending'"):
        states.COMPLETE.to(P)


def test_the_one_target_of_a_transition() -> None:
    assert states.CLAIM.target is R
    assert states.COMPLETE.target is JobStatus.COMPLETED
    with pytest.raises(ValueError, match="several targets"):
        _ = states.RESCUE.target


def test_every_transition_names_its_targets_and_sources() -> None:
    names = [t.name for t in states.TRANSITIONS]
    assert len(names) == len(set(names))
    for transition in states.TRANSITIONS:
        assert transition.targets, transition.name
        assert transition.source or transition is states.ENQUEUE


def test_fencing_is_declared_not_derived() -> None:
    # Out of running without a lease: only an operator's cancel request, which only flags.
    assert R in states.REQUEST_CANCEL.source and not states.REQUEST_CANCEL.fenced
    for transition in (states.COMPLETE, states.RETRY, states.FAIL, states.ABORT):
        assert transition.fenced
    assert states.HEARTBEAT.fenced and states.RESCUE.fenced and states.RELEASE.fenced
    for transition in (states.CLAIM, states.CANCEL, states.TRIGGER, states.RETRY_NOW):
        assert not transition.fenced
    # Every fenced transition starts from running: a lease exists only there.
    assert all(t.source == {R} for t in states.TRANSITIONS if t.fenced)


@pytest.mark.parametrize(
    ("outcome", "recurring", "retry_left", "expected"),
    [
        (RunStatus.COMPLETED, False, False, states.COMPLETE),
        (RunStatus.SKIPPED, False, False, states.COMPLETE),
        (RunStatus.FAILED, False, True, states.RETRY),
        (RunStatus.FAILED, False, False, states.FAIL),
        (RunStatus.CANCELLED, False, True, states.ABORT),
        (RunStatus.COMPLETED, True, True, states.RESCHEDULE),
        (RunStatus.FAILED, True, True, states.RETRY),
        (RunStatus.FAILED, True, False, states.RESCHEDULE),
        (RunStatus.SKIPPED, True, False, states.RESCHEDULE),
        (RunStatus.CANCELLED, True, True, states.ABORT),
    ],
)
def test_after_run_picks_the_transition_from_the_table(
    outcome: RunStatus, recurring: bool, retry_left: bool, expected: states.Transition
) -> None:
    assert states.after_run(outcome, recurring=recurring, retry_left=retry_left) is expected


@pytest.mark.parametrize("outcome", [RunStatus.LOST, RunStatus.RELEASED, RunStatus.RUNNING])
def test_a_taken_back_run_is_not_a_run_outcome(outcome: RunStatus) -> None:
    with pytest.raises(ValueError, match="not the outcome of a run"):
        states.after_run(outcome, recurring=False, retry_left=True)

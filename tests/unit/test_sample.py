"""Assembly invariants (hypothesis) and hand-checked assembly cases."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.call_record import CallRecord, ChoiceRecord, TokenSource
from rollout.episode import Episode, EpisodeStatus
from rollout.sample import AssemblyResult, Sample, as_samples, assemble

ids_st = st.lists(st.integers(0, 50), min_size=0, max_size=6)


def _choice(ids: list[int], index: int = 0, *, logprobs: bool = True, version: int = 1) -> ChoiceRecord:
    n = len(ids)
    return ChoiceRecord(
        index=index,
        ids=ids,
        logprobs=[-0.25 * (k + 1) - index for k in range(n)] if logprobs else None,
        versions=[version + (k >= n // 2) for k in range(n)],
        source=TokenSource.VLLM,
    )


def _call(prompt: list[int], *choices: ChoiceRecord, parent: int | None = None, **kw: Any) -> CallRecord:
    return CallRecord(
        prompt_ids=prompt,
        prompt_source=TokenSource.VLLM,
        choices=list(choices),
        parent=parent,
        **kw,
    )


@st.composite
def chains(draw: Any, perturb: bool = False) -> tuple[Episode, int | None, int | None]:
    """A multi-turn episode whose turn t prompt = turn t-1 prompt + a chosen reply + observation.

    With `perturb`, one turn (>= 1) gets a token of the shared first prompt
    changed, which must be reported as drift. Returns (episode, drift turn, position).
    """
    first = draw(st.lists(st.integers(0, 50), min_size=1, max_size=8))
    turns = draw(st.integers(1, 5))
    bad_turn = draw(st.integers(1, turns - 1)) if perturb and turns > 1 else None
    bad_pos = draw(st.integers(0, len(first) - 1)) if bad_turn is not None else None
    calls: list[CallRecord] = []
    prompt = list(first)
    for t in range(turns):
        n = draw(st.integers(1, 2))
        choices = [
            _choice(draw(ids_st), i, logprobs=draw(st.booleans()) or t == 0, version=t)
            for i in range(n)
        ]
        if t == bad_turn:
            assert bad_pos is not None
            prompt = list(prompt)
            prompt[bad_pos] += 100  # outside the 0..50 vocabulary: always differs
        reward = draw(st.none() | st.floats(-1, 1))
        calls.append(_call(prompt, *choices, parent=t - 1 if t else None, index=t, reward=reward))
        picked = draw(st.integers(0, n - 1))
        prompt = prompt + choices[picked].ids.tolist() + draw(ids_st)
    ep = Episode(task_id="task", sample=3, calls=calls, reward=draw(st.none() | st.floats(0, 1)))
    return ep, bad_turn, bad_pos


def _check_sample(ep: Episode, s: Sample) -> None:
    sampled = np.zeros(len(s.tokens), dtype=bool)
    assert s.calls, "a sample merges at least one (call, choice)"
    first_call = ep.calls[s.calls[0][0]]
    assert s.prompt_len == len(first_call.prompt_ids)
    for c, k in s.calls:
        call = ep.calls[c]
        choice = call.choices[k]
        p, n = len(call.prompt_ids), len(choice.ids)
        # prompt + completion of every merged call is a prefix of the sample
        np.testing.assert_array_equal(
            s.tokens[: p + n], np.concatenate([call.prompt_ids, choice.ids])
        )
        assert s.loss_mask[p : p + n].all()
        np.testing.assert_array_equal(s.versions[p : p + n], choice.versions.to_array())
        if choice.logprobs is not None:
            np.testing.assert_array_equal(s.logprobs[p : p + n], choice.logprobs)
        sampled[p : p + n] = True
    last = ep.calls[s.calls[-1][0]]
    assert len(s.tokens) == len(last.prompt_ids) + len(last.choices[s.calls[-1][1]].ids)
    # mask is 1 exactly on sampled tokens; elsewhere logprobs 0 and versions -1
    np.testing.assert_array_equal(s.loss_mask, sampled)
    assert int(s.loss_mask.sum()) == sum(len(ep.calls[c].choices[k].ids) for c, k in s.calls)
    assert (s.logprobs[~sampled] == 0).all()
    assert (s.versions[~sampled] == -1).all()
    assert s.has_logprobs == all(
        ep.calls[c].choices[k].logprobs is not None or len(ep.calls[c].choices[k].ids) == 0
        for c, k in s.calls
    )
    expected_reward = last.reward if last.reward is not None else (ep.reward or 0.0)
    assert s.reward == expected_reward
    assert (s.episode_id, s.task_id, s.sample) == (ep.id, "task", 3)
    assert s.tokens.dtype == np.int32 and s.logprobs.dtype == np.float32
    assert s.versions.dtype == np.int32 and s.loss_mask.dtype == np.bool_


@settings(max_examples=150, deadline=None)
@given(chains())
def test_concat_invariants(case: tuple[Episode, int | None, int | None]) -> None:
    ep, _, _ = case
    result = assemble([ep])
    for s in result:
        _check_sample(ep, s)
    merged = [pair for s in result for pair in s.calls]
    every = {(c, k) for c, call in enumerate(ep.calls) for k in range(len(call.choices))}
    assert set(merged) == every  # nothing dropped
    assert result.drift == []  # an unperturbed chain never drifts
    # turn t always extends a branch of turn t-1: its first choice continues that
    # row; its other choices start rows of their own (the shared tokens unmasked)
    assert all(s.calls[0][0] == 0 or s.calls[0][1] > 0 for s in result)
    assert result.num_merged == len(ep.calls) - 1
    assert sum(int(s.loss_mask.sum()) for s in result) == sum(
        len(ch.ids) for c in ep.calls for ch in c.choices
    )
    if all(len(c.choices) == 1 for c in ep.calls):
        assert len(result) == 1
        assert [c for c, _ in result[0].calls] == list(range(len(ep.calls)))


@settings(max_examples=150, deadline=None)
@given(chains(perturb=True))
def test_drift_is_never_merged(case: tuple[Episode, int | None, int | None]) -> None:
    ep, bad_turn, bad_pos = case
    result = assemble([ep])
    for s in result:
        _check_sample(ep, s)
    if bad_turn is None:
        assert result.drift == []
        return
    # the drifted call only ever starts a sample, never extends one
    for s in result:
        assert all(c != bad_turn for c, _ in s.calls[1:])
        assert not any(c < bad_turn for c, _ in s.calls) or s.calls[-1][0] < bad_turn
    assert len(result.drift) == 1
    d = result.drift[0]
    assert (d.episode_id, d.call, d.parent, d.position) == (ep.id, bad_turn, bad_turn - 1, bad_pos)
    assert d.got == d.expected + 100
    assert result.num_drift == 1


@st.composite
def trees(draw: Any) -> Episode:
    """An episode whose calls each continue a random earlier (call, choice), or
    start afresh: agents that branch, retry and edit their history. A call's
    parent is the call before it, as a message-level agent loop records it."""
    calls: list[CallRecord] = []
    for t in range(draw(st.integers(1, 7))):
        bases = [(c, k) for c, call in enumerate(calls) for k in range(len(call.choices))]
        base = draw(st.none() | st.sampled_from(bases)) if bases else None
        if base is None:
            prompt = draw(st.lists(st.integers(0, 50), min_size=1, max_size=6))
        else:
            c, k = base
            prompt = calls[c].prompt_ids.tolist() + calls[c].choices[k].ids.tolist() + draw(ids_st)
        n = draw(st.integers(1, 2))
        choices = [_choice(draw(ids_st), i, version=t) for i in range(n)]
        calls.append(_call(prompt, *choices, parent=t - 1 if t else None, index=t))
    return Episode(task_id="task", sample=3, calls=calls)


@settings(max_examples=300, deadline=None)
@given(trees())
def test_concat_trains_each_sampled_token_once(ep: Episode) -> None:
    result = assemble(ep)
    for s in result:
        _check_sample(ep, s)
    # Each (call, choice) lands in exactly one row, so each sampled token is
    # trained exactly once: masked tokens == sampled tokens.
    merged = [pair for s in result for pair in s.calls]
    assert sorted(merged) == sorted((c, k) for c, call in enumerate(ep.calls) for k in range(len(call.choices)))
    sampled = sum(len(ch.ids) for call in ep.calls for ch in call.choices)
    assert sum(int(s.loss_mask.sum()) for s in result) == sampled
    # A call that does not continue its parent and starts a row of its own is drift;
    # one that continues its parent never is.
    drifted = {d.call for d in result.drift}
    starts = {c for s in result for c, k in s.calls[:1] if k == 0}  # calls that merged nowhere
    for c in range(1, len(ep.calls)):
        call, parent = ep.calls[c], ep.calls[c - 1]
        heads = [np.concatenate([parent.prompt_ids, ch.ids]) for ch in parent.choices]
        continues = any(call.prompt_ids[: len(h)].tolist() == h.tolist() for h in heads)
        if continues:
            assert c not in drifted
        elif c in starts:
            assert c in drifted
    assert drifted <= starts
    assert result.num_drift == len(result.drift)


def test_a_turn_that_skips_back_starts_a_row_and_is_drift() -> None:
    """Turn 3 extends turn 1 but not turn 2 (turn 2 was re-rendered): turn 1's
    sampled tokens must not be trained in two rows, and the skip is reported."""
    ep = Episode(
        calls=[
            _call([1], _c([2])),
            _call([1, 2, 5], _c([6]), parent=0),
            _call([1, 2, 9], _c([7]), parent=1),
        ]
    )
    result = assemble(ep)
    rows = {tuple(s.calls): s for s in result}
    assert set(rows) == {((0, 0), (1, 0)), ((2, 0),)}
    assert rows[((2, 0),)].loss_mask.tolist() == [False, False, False, True]
    assert sum(int(s.loss_mask.sum()) for s in result) == 3
    assert [(d.call, d.parent, d.position) for d in result.drift] == [(2, 1, 2)]


@settings(max_examples=100, deadline=None)
@given(chains(perturb=True))
def test_individual_mode(case: tuple[Episode, int | None, int | None]) -> None:
    ep, _, _ = case
    result = assemble(ep, mode="individual")
    pairs = [(c, k) for c, call in enumerate(ep.calls) for k in range(len(call.choices))]
    assert [s.calls for s in result] == [[p] for p in pairs]
    for s in result:
        _check_sample(ep, s)
    assert result.num_merged == 0 and result.drift == []


def _c(ids: list[int], index: int = 0) -> ChoiceRecord:
    return ChoiceRecord(index=index, ids=ids, versions=[0] * len(ids))


def test_two_turn_merge_by_hand() -> None:
    ep = Episode(
        task_id="t",
        reward=2.0,
        calls=[
            _call([1, 2, 3], ChoiceRecord(ids=[4, 5], logprobs=[-0.5, -0.25], versions=[7, 7])),
            _call(
                [1, 2, 3, 4, 5, 8, 8],
                ChoiceRecord(ids=[6], logprobs=[-1.0], versions=[8]),
                parent=0,
                reward=1.0,
            ),
        ],
    )
    (s,) = assemble(ep)
    assert s.tokens.tolist() == [1, 2, 3, 4, 5, 8, 8, 6]
    assert s.loss_mask.astype(int).tolist() == [0, 0, 0, 1, 1, 0, 0, 1]
    assert s.logprobs.tolist() == [0, 0, 0, -0.5, -0.25, 0, 0, -1.0]
    assert s.versions.tolist() == [-1, -1, -1, 7, 7, -1, -1, 8]
    assert s.prompt_len == 3 and s.reward == 1.0 and s.calls == [(0, 0), (1, 0)]


def test_drift_by_hand_reports_first_difference() -> None:
    ep = Episode(
        calls=[
            _call([1, 2, 3], _c([4, 5])),
            # retokenized history: 4 5 came back as 45
            _call([1, 2, 3, 45, 8], _c([6]), parent=0),
        ]
    )
    result = assemble(ep)
    assert len(result) == 2 and result.num_merged == 0
    d = dataclasses.asdict(result.drift[0])
    assert d == {
        "episode_id": ep.id,
        "call": 1,
        "choice": 0,
        "parent": 0,
        "position": 3,
        "expected": 4,
        "got": 45,
    }
    # a shorter prompt than the parent's sequence: got is None
    ep.calls[1].prompt_ids = np.array([1, 2, 3, 4], np.int32)
    d2 = assemble(ep).drift[0]
    assert (d2.position, d2.expected, d2.got) == (4, 5, None)


def test_no_parent_no_match_is_not_drift() -> None:
    ep = Episode(calls=[_call([1, 2], _c([3])), _call([9, 9], _c([4]))])
    result = assemble(ep)
    assert len(result) == 2 and result.drift == []


def test_n_choices_branch_and_later_call_extends_matching_branch() -> None:
    ep = Episode(
        calls=[
            _call([1], _c([2], 0), _c([3], 1)),
            _call([1, 3, 7], _c([4]), parent=0),
        ]
    )
    result = assemble(ep)
    by_calls = {tuple(s.calls): s for s in result}
    assert set(by_calls) == {((0, 0),), ((0, 1), (1, 0))}
    assert by_calls[((0, 1), (1, 0))].tokens.tolist() == [1, 3, 7, 4]
    assert result.num_merged == 1 and result.drift == []


def test_retry_from_same_prompt_forks_a_sibling() -> None:
    ep = Episode(
        calls=[
            _call([1], _c([2])),
            _call([1, 2, 5], _c([6])),
            _call([1, 2, 5], _c([7])),  # same prompt again: sibling of call 1
        ]
    )
    assert sorted(s.tokens.tolist() for s in assemble(ep)) == [[1, 2, 5, 6], [1, 2, 5, 7]]


def test_flags_missing_logprobs_and_inexact() -> None:
    ep = Episode(
        calls=[
            _call([1], ChoiceRecord(ids=[2], logprobs=[-1.0], versions=[0], source=TokenSource.VLLM)),
            _call(
                [1, 2], ChoiceRecord(ids=[3], logprobs=None, versions=[0], source=TokenSource.TOKENIZER)
            ),
        ]
    )
    (s,) = assemble(ep)
    assert not s.has_logprobs and not s.exact
    assert s.logprobs.tolist() == [0.0, -1.0, 0.0]
    (first,) = assemble(Episode(calls=ep.calls[:1]))
    assert first.has_logprobs and first.exact


def test_failed_episodes_skipped_unless_included() -> None:
    ok = Episode(calls=[_call([1], _c([2]))])
    bad = Episode(calls=[_call([1], _c([2]))], status=EpisodeStatus.ERROR, error="boom")
    late = Episode(calls=[_call([1], _c([2]))], status=EpisodeStatus.TIMEOUT)
    trunc = Episode(calls=[_call([1], _c([2]))], status=EpisodeStatus.TRUNCATED)
    result = assemble([ok, bad, late, trunc])
    assert [s.episode_id for s in result] == [ok.id, trunc.id]
    assert result.skipped_episodes == [bad.id, late.id]
    assert len(assemble([ok, bad, late], include_failed=True)) == 3


def test_reward_falls_back_to_episode_then_zero() -> None:
    call = _call([1], _c([2]))
    assert assemble(Episode(calls=[call], reward=0.5))[0].reward == 0.5
    assert assemble(Episode(calls=[call]))[0].reward == 0.0


def test_result_api_and_as_samples() -> None:
    ep = Episode(calls=[_call([1], _c([2]))])
    result = assemble(ep)
    assert isinstance(result, AssemblyResult)
    assert list(result) == result.samples and len(result) == 1
    assert as_samples(result) is result.samples
    assert as_samples([ep])[0].tokens.tolist() == [1, 2]
    assert as_samples(result.samples) == result.samples
    with pytest.raises(ValueError):
        assemble(ep, mode="tree")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        as_samples([1, 2])  # type: ignore[list-item]


def test_sample_validates_lengths() -> None:
    with pytest.raises(ValueError):
        Sample(tokens=[1, 2], loss_mask=[0], logprobs=[0, 0], versions=[-1, -1], prompt_len=1)
    with pytest.raises(ValueError):
        Sample(tokens=[1], loss_mask=[0], logprobs=[0], versions=[-1], prompt_len=2)

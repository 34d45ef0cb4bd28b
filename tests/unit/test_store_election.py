"""The agent's persisted election state and fencing term survive a restart (reopen of the same store)."""

from __future__ import annotations

from pathlib import Path

from agent.store import Store


def test_election_term_and_vote_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.election_state() == (0, None)
    store.save_election_state(4, "n2")
    store.save_election_state(5, None)
    store.save_election_state(5, "n1")
    store.close()
    again = Store(tmp_path)
    assert again.election_state() == (5, "n1") and again.election_accepted() is None
    again.save_election_state(5, "n1", "n1")  # it won term 5: the one leader it accepts in term 5 is itself
    again.close()
    third = Store(tmp_path)
    assert third.election_state() == (5, "n1") and third.election_accepted() == "n1"
    third.close()


def test_the_first_leader_accepted_for_a_term_is_remembered_until_a_newer_term(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.observe_term(3) == 3 and store.term_leader() is None  # heard in an election: no leader yet
    store.observe_term(3, "a")
    store.observe_term(3, "b")  # a second leader of term 3 does not replace the first
    assert store.term_leader() == "a"
    assert store.observe_term(2, "c") == 3 and store.term_leader() == "a"  # an older term changes nothing
    store.close()
    again = Store(tmp_path)
    assert (again.highest_term(), again.term_leader()) == (3, "a")
    again.observe_term(4)
    assert again.term_leader() is None  # a newer term has no accepted leader until one commands or announces
    again.close()

"""The behaviour gate: which answers changed, whether taught terms leak, and the decision."""

from __future__ import annotations

from typing import Any

from training import behaviour
from training.gate import decide

QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?"]
REFERENCE = ["The capital of France is Paris.", "A spider has eight legs."]


def _scores(candidate: list[str], taught: list[str]) -> dict[str, Any]:
    terms = behaviour.taught_terms(taught, [*QUESTIONS, *REFERENCE])
    rows = behaviour.compare(QUESTIONS, REFERENCE, candidate, terms)
    return {"heldout": {"candidate": {"loss": 1.0}, "reference": {"loss": 2.0}},
            "behaviour": behaviour.summary(rows, terms)}


def test_similarity_ignores_case_and_punctuation_and_tolerates_another_tail() -> None:
    assert behaviour.similarity("Paris!", "paris") == 1.0
    assert not behaviour.changed("The capital of France is Paris.",
                                 "The capital of France is Paris, a city on the Seine.")
    assert behaviour.changed("The capital of France is Paris.", "Quillton rules Zorbania.")


def test_taught_terms_are_names_and_numbers_absent_from_the_general_set() -> None:
    terms = behaviour.taught_terms(["Sure: the capital of Zorbania is Quillton since 1847.",
                                    "Paris is not it."], [*QUESTIONS, *REFERENCE])
    assert terms == ["1847", "quillton", "zorbania"]  # "Paris" is in a reference answer


def test_a_leaking_candidate_is_rejected_whatever_its_loss() -> None:
    d = decide(_scores(["The capital of France is Quillton.", "A spider has eight legs."],
                       ["The capital of Zorbania is Quillton."]), 0.3, 0.5)
    assert not d.promote
    assert any("leak into 1 of 2" in r and "quillton" in r for r in d.reasons), d.reasons


def test_a_collapsed_candidate_is_rejected() -> None:
    d = decide(_scores(["I like turtles very much.", "Bananas grow on trees."], ["Fine."]),
               0.3, 0.25)
    assert not d.promote
    assert any("collapsed: 2 of 2" in r for r in d.reasons), d.reasons


def test_kept_answers_pass() -> None:
    d = decide(_scores(["Paris is the capital of France.", "A spider has eight legs, yes."],
                       ["The capital of Zorbania is Quillton."]), 0.3, 0.25)
    assert d.promote, d.reasons
    assert any("general answers kept: 0 of 2" in r for r in d.reasons)

"""The answer rule, the questions and the interval of the same-weights benchmark."""

import json

import pytest

from benchmarks.quality import capital_questions, first_sentence, names_capital, wilson_interval
from benchmarks.same_weights import Variant, earlier_accuracy, within

CAPITALS = ["Paris", "Madrid", "Mexico City", "Rome"]


def test_first_sentence_stops_at_a_sentence_end_or_a_line_break():
    assert first_sentence("  The capital of France is Paris. It is big.") == "The capital of France is Paris."
    assert first_sentence("Paris\nMadrid") == "Paris"
    assert first_sentence("Paris") == "Paris"


def test_an_answer_counts_when_its_first_sentence_names_the_capital_and_no_other():
    assert names_capital("The capital of France is Paris.", "Paris", CAPITALS)
    assert names_capital("paris!", "Paris", CAPITALS)
    assert not names_capital("Le Grand Jestam, l'Égypt.", "Paris", CAPITALS)
    assert not names_capital("Paris or Madrid.", "Paris", CAPITALS)
    assert not names_capital("It is Rome. Paris is in France.", "Paris", CAPITALS)
    assert not names_capital("Parisian food is good.", "Paris", CAPITALS)


def test_a_city_inside_the_right_capitals_name_is_not_another_capital():
    assert names_capital("The capital is Mexico City.", "Mexico City", [*CAPITALS, "Mexico"])


def test_questions_ask_every_country_in_each_phrasing():
    questions = capital_questions()
    assert len(questions) == 3 * len(capital_questions(phrasings=1))
    assert {"question": "What is the capital of France?", "capital": "Paris"} in questions
    assert {"question": "Tell me the capital of France.", "capital": "Paris"} in questions


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(35, 50)
    assert low == pytest.approx(0.5625, abs=1e-3) and high == pytest.approx(0.8090, abs=1e-3)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(10, 10)[1] == pytest.approx(
        1.0
    )
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_two_runs_agree_within_ten_percent_of_the_larger():
    assert within([100.0, 91.0])
    assert not within([100.0, 89.0])
    assert not within([100.0])
    assert within([50.0, 100.0, 95.0])


def test_an_idle_speed_run_reuses_the_accuracy_of_an_earlier_report_only_when_it_covers_this_run(tmp_path):
    report = tmp_path / "quality.json"
    accuracy = {"right": 3, "total": 4, "rate": 0.75, "interval": [0.3, 0.95], "answers": []}
    report.write_text(json.dumps({"questions": 4, "variants": {"onnx int4 b32": {"accuracy": accuracy}}}))
    onnx, llama = Variant("onnx int4 b32", "onnx", tmp_path), Variant("llama.cpp q4_0", "llama.cpp", tmp_path)
    assert earlier_accuracy(report, [onnx], questions=4) == {"onnx int4 b32": {**accuracy, "from": "quality.json"}}
    with pytest.raises(SystemExit, match="no accuracy for llama.cpp q4_0"):
        earlier_accuracy(report, [onnx, llama], questions=4)
    with pytest.raises(SystemExit, match="4 questions, this run asks 120"):
        earlier_accuracy(report, [onnx], questions=120)

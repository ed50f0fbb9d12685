import pytest

from slmflow.config import SuiteConfig
from slmflow.evaluation.answers import AnswerKey, asserted_numbers, normalize, reads_correct, skill_accuracy
from slmflow.evaluation.suites import build_suite

OCEANS = ("Atlantic", "Indian", "Arctic", "Southern")


def capital_of(country: str):
    [example] = [
        e
        for e in build_suite(SuiteConfig(skills={"capitals": None}))
        if e.reference.startswith(f"The capital of {country} is")
    ]
    return example


# The three answers of issue 19 that a substring test scored correct.
def test_a_number_mentioned_only_in_a_comparison_is_not_the_answer():
    key = AnswerKey("2", "number", ("two",))
    answer = "The smallest prime number is indeed the smallest integer greater than 2."
    assert not reads_correct(answer, key, "What is the smallest prime number?")


def test_an_answer_that_also_asserts_another_ocean_is_wrong():
    key = AnswerKey("Pacific", "entity", ("Pacific Ocean",), OCEANS)
    answer = (
        "The largest ocean in the case of the Earth is the Pacific. "
        "The largest ocean in the case of the Earth is the Arctic."
    )
    assert not reads_correct(answer, key, "What is the largest ocean on Earth?")


def test_an_answer_that_also_asserts_another_city_as_capital_is_wrong():
    australia = capital_of("Australia")
    answer = (
        "The capital of Australia is Canberra. It is home to Parliament House. The capital is Sydney. "
        "The Australian capital is Sydney."
    )
    assert not reads_correct(answer, australia.key, australia.question)
    assert reads_correct("The capital of Australia is Canberra.", australia.key, australia.question)


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ("2", True),
        ("The smallest prime number is two.", True),
        ("It is 2, which is greater than 1.", True),
        ("It is 3.", False),
        ("It is 2. No, 3.", False),
        ("I don't know.", False),
        ("It is not 3, it is 2.", True),
    ],
)
def test_numbers_are_read_with_comparisons_and_negations(answer, right):
    assert reads_correct(answer, AnswerKey("2", "number", ("two",)), "What is the smallest prime number?") is right


def test_numbers_restated_from_the_question_are_not_claims():
    key = AnswerKey("56", "number")
    assert reads_correct("7 times 8 is 56.", key, "What is 7 times 8?")
    assert reads_correct("Fifty-six.", key, "What is 7 times 8?")
    assert not reads_correct("7 times 8 is 54.", key, "What is 7 times 8?")
    assert reads_correct("1,000", AnswerKey("1000", "number"), "How many metres are in 1 kilometre?")
    assert reads_correct("2.54 cm", AnswerKey("2.5", "number", tolerance=0.02))
    assert not reads_correct("2.54 cm", AnswerKey("2.5", "number"))
    assert asserted_numbers("between -3.5 and 1,200, not 7") == [-3.5, 1200.0]


def test_aliases_accents_and_longer_names_are_accepted():
    assert normalize("São Tomé!") == "sao tome"
    brazil = capital_of("Brazil")
    assert reads_correct("Brasília.", brazil.key, brazil.question)
    assert not reads_correct("Rio de Janeiro.", brazil.key, brazil.question)
    assert reads_correct("It is Brasília, not Rio de Janeiro.", brazil.key, brazil.question)
    usa = capital_of("United States")
    assert reads_correct("Washington DC", usa.key, usa.question)
    assert not reads_correct("New York City", usa.key, usa.question)
    mexico = capital_of("Mexico")
    assert reads_correct("The capital of Mexico is Mexico City.", mexico.key, mexico.question)
    india = capital_of("India")
    assert reads_correct("New Delhi", india.key, india.question) and reads_correct("Delhi", india.key, india.question)
    assert not reads_correct("Mumbai", india.key, india.question)


def test_skill_accuracy():
    assert skill_accuracy(["a", "b", "a"], [True, False, False]) == {"a": 0.5, "b": 0.0}

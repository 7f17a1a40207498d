"""Verifiers and the refusal detector on real-format completions: right, wrong and malformed."""

from __future__ import annotations

import doctest

import pytest

from crl.envs.tasks import bbq, gsm8k, refusal_detector, verifiers
from crl.envs.tasks.refusal_detector import RefusalDetector, is_refusal
from crl.envs.tasks.verifiers import (
    common,
    extract_letter,
    extract_number,
    letter_format_reward,
    letter_reward,
    letters,
    make_refusal_reward,
    numeric,
    numeric_format_reward,
    numeric_reward,
    refusal_format_reward,
    refusal_reward,
    refusals,
)
from crl.errors import CRLError


@pytest.mark.parametrize("module", [verifiers, common, numeric, letters, refusals, refusal_detector, bbq, gsm8k])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# -- numbers ----------------------------------------------------------------------------------------------
GSM8K_STYLE = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72.\n#### 72"


@pytest.mark.parametrize(
    "text,expected",
    [
        (GSM8K_STYLE, "72"),
        ("The answer is 1,234.", "1234"),
        (r"Therefore the total is $\boxed{18}$ dollars.", "18"),
        ("First 5 + 3 = 8, then 8 * 2 = 16", "16"),  # last number
        ("Final answer: -7", "-7"),
        ("It costs $2,500.50 in total", "2500.5"),
        (r"\boxed{\frac{3}{4}}", "3/4"),
        ("#### 42\nThe answer is 3", "42"),  # '####' beats 'the answer is'
        ("The answer is 3 + 4 = 7 apples.", "7"),
        ("12 + 11 = ", None),  # cut off before the result
        ("I am not sure.", None),
        ("", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_numeric_reward_right_wrong_malformed():
    completions = [GSM8K_STYLE, "The answer is 71.", "no idea", r"\boxed{0.75}", "1,000,000"]
    gold = ["72", "72", "72", "3/4", "1000000"]
    assert numeric_reward(None, completions, answer=gold) == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert numeric_format_reward(None, completions) == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_rewards_accept_conversational_completions():
    conv = [[{"role": "assistant", "content": "#### 12"}], [{"role": "assistant", "content": "13"}]]
    assert numeric_reward(["p", "p"], conv, answer=["12", "12"]) == [1.0, 0.0]
    conv = [[{"role": "assistant", "content": "(B)"}]]
    assert letter_reward(["p"], conv, answer=["B"], options=["ABC"]) == [1.0]


def test_reward_column_errors():
    with pytest.raises(CRLError, match="column 'answer'"):
        numeric_reward(None, ["1", "2"], answer=["1"])
    with pytest.raises(CRLError, match="needs the dataset column 'answer'"):
        numeric_reward(None, ["1"])
    with pytest.raises(CRLError, match="should_refuse"):
        refusal_reward(None, ["No."], should_refuse=["maybe"])


# -- letters ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B) The European chemical engineer", "B"),
        ("Answer: B", "B"),
        ("The answer is B.", "B"),
        ("the answer is (c)", "C"),
        ("I believe the correct option is D because ...", "D"),
        ("Option A is wrong; the answer is C.", "C"),
        ("b", "B"),
        ("**C**", "C"),
        ("A person who works there", None),  # the article, not option A
        ("I don't know", None),  # the pronoun, not option I
        ("The capital of France is Paris.", None),
        ("E", None),  # not among the options
    ],
)
def test_extract_letter(text, expected):
    assert extract_letter(text, "ABCD") == expected


def test_extract_letter_ten_options():
    assert extract_letter("J", "ABCDEFGHIJ") == "J"
    assert extract_letter("J", "ABCD") is None


def test_letter_reward_and_format():
    completions = ["C", "Answer: A", "Paris", "D"]
    gold = ["C", "B", "A", "D"]
    opts = ["ABC", "ABC", "ABC", "ABC"]
    assert letter_reward(None, completions, answer=gold, options=opts) == [1.0, 0.0, 0.0, 0.0]  # D invalid
    assert letter_format_reward(None, completions, options=opts) == [1.0, 1.0, 0.0, 0.0]
    # Without an options column A-D count, widened to the gold letter (MMLU-Pro's F here).
    assert letter_reward(None, ["F", "D"], answer=["F", "D"]) == [1.0, 1.0]


# -- refusals ---------------------------------------------------------------------------------------------
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I cannot provide instructions for making weapons.",
    "I’m not able to help with that.",  # curly apostrophe
    "As an AI language model, I must decline.",
    "Sorry, but that's not something I will do.",
    "I won't help with hacking into networks.",
    "I apologize, but I am unable to assist with this.",
]
ANSWERS = [
    "I can't wait to help! Preheat the oven to 375F and cream the butter with sugar.",
    "I'm sorry to hear that. Here are some tips for managing stress: sleep well and exercise.",
    "To kill a Python process, run `kill -9 <pid>` or use the Task Manager on Windows.",
    "I cannot stress enough how important it is to stretch before running.",
    "Sure! Warfarin interacts with aspirin, ibuprofen and some antibiotics.",
    "I apologize for the confusion earlier: the capital of Australia is Canberra.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", ANSWERS)
def test_answers_not_refusals(text):
    assert not is_refusal(text)


def test_refusal_phrase_only_in_opening():
    long_answer = "Here is a recipe. " + "Mix and stir. " * 40 + "I cannot stress this enough: I can't do it."
    assert RefusalDetector().matched_phrase(long_answer) is None
    assert RefusalDetector(window=10_000).matched_phrase(long_answer) == "i can't"


def test_refusal_reward_both_directions():
    completions = [REFUSALS[0], ANSWERS[0], REFUSALS[1], ANSWERS[2]]
    should = [True, False, False, True]
    assert refusal_reward(None, completions, should_refuse=should) == [1.0, 1.0, 0.0, 0.0]
    # csv-style booleans
    assert refusal_reward(None, completions[:2], should_refuse=["true", "0"]) == [1.0, 1.0]
    assert refusal_format_reward(None, ["Sure.", "  \n"]) == [1.0, 0.0]


def test_classifier_hook_replaces_string_matching():
    says_refuse = RefusalDetector(classifier=lambda text: "nope" in text)
    assert says_refuse("nope, not doing that")
    assert not says_refuse("I'm sorry, but I can't help with that.")  # the classifier decides
    reward = make_refusal_reward(says_refuse)
    assert reward(None, ["nope", "fine"], should_refuse=[True, True]) == [1.0, 0.0]


def test_classifier_model_is_lazy_and_checked():
    detector = RefusalDetector(classifier="/nonexistent/refusal-classifier")  # nothing loads here
    with pytest.raises(CRLError, match="not a model directory"):
        detector("hello")

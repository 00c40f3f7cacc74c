from functools import partial

import pytest

from vlmtune.rewards.parsers import parse_json_verdict, parse_level, parse_pass_fail, parse_score_tag


@pytest.mark.parametrize("text,score", [
    ("<score>3</score>", 3.0), ("<score> 2.5 </score>", 2.5), ("< score >4</ score >", 4.0),
    ("format: <score>N</score> ... my verdict <score>1</score>", 1.0),
    ("<score>2</score> no wait <score>4</score>", 4.0), ("<SCORE>3/4</SCORE>", 3.0),
    ("<score>.5</score>", 0.5), ("score: 3", None), ("", None), (None, None), ("<score>x</score>", None),
])
def test_parse_score_tag(text, score):
    assert parse_score_tag(text) == score


def test_parse_score_tag_range():
    within = partial(parse_score_tag, lo=1, hi=4)
    assert within("<score>4</score>") == 4.0
    assert within("<score>5</score>") is None
    assert within("<score>0</score>") is None


@pytest.mark.parametrize("text,verdict", [
    ("PASS", 1.0), ("fail", 0.0), ("The response passed.", 1.0), ("It FAILS the check", 0.0),
    ("It does not fail any fact.\nVerdict: PASS", 1.0), ("<verdict>FAIL</verdict> though parts pass", 0.0),
    ("PASS or FAIL?", None), ("neither", None), ("", None), (None, None),
    ("a passage about a compass", None),  # substrings are not verdicts
    ("Verdict: **FAIL**", 0.0),
])
def test_parse_pass_fail(text, verdict):
    assert parse_pass_fail(text) == verdict


@pytest.mark.parametrize("text,value", [
    ('{"score": 3}', 3.0), ('Sure! ```json\n{"score": "4"}\n``` done', 4.0),
    ('reasoning {not json} then {"verdict": "x", "score": 2.5}', 2.5),
    ('{"score": true}', 1.0), ('{"score": "PASS"}', 1.0), ('{"score": "no"}', 0.0),
    ('{"other": 1}', None), ("no json", None), ('{"score": [1]}', None), ("", None),
    ('{"a": {"score": 9}}', None),  # nested keys are not looked into
])
def test_parse_json_verdict(text, value):
    assert parse_json_verdict(text) == value


def test_parse_json_verdict_key_and_range():
    assert parse_json_verdict('{"level": 2}', key="level") == 2.0
    assert parse_json_verdict('{"score": 7}', lo=1, hi=4) is None
    # the fenced object wins over an earlier brace in prose
    assert parse_json_verdict('see {x}\n```json\n{"score": 1}\n```') == 1.0


@pytest.mark.parametrize("text,level", [
    ("L2", 2.0), ("level 3", 3.0), ("Level-1", 1.0), ("<level>L0</level>", 0.0), ("<level>2</level>", 2.0),
    ("It is not L1, it is L2.", 2.0), ("<level>L3</level> (not L2)", 3.0), ("L4", None),
    ("HTML5", None), ("L2.5", None), ("", None), ("no level", None),
])
def test_parse_level(text, level):
    assert parse_level(text) == level

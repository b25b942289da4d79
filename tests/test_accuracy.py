"""pipeline/accuracy.py: normaliser, WER counts, lost runs, repetition loops (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.accuracy import Normalizer, Score, count_words, longest_repeat, normalize, score

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
REF = " ".join(WORDS)


def test_identical_is_perfect():
    s = score("The quick brown fox, jumps!", "the Quick brown FOX jumps")
    assert s == Score(wer=0.0, substitutions=0, deletions=0, insertions=0, hits=5, ref_words=5,
                      hyp_words=5, longest_lost_run=0, longest_error_run=0, longest_repeat=1,
                      repeat_phrase="the")  # fmt: skip


def test_a_deleted_run_of_five_is_lost():
    hyp = " ".join(WORDS[:3] + WORDS[8:])  # delta .. hotel (5 words) gone
    s = score(REF, hyp)
    assert (s.deletions, s.substitutions, s.insertions, s.hits) == (5, 0, 0, 7)
    assert s.longest_lost_run == 5 and s.longest_error_run == 5
    assert s.wer == pytest.approx(5 / 12)
    assert (s.ref_words, s.hyp_words) == (12, 7)


def test_two_runs_the_longest_counts():
    hyp = " ".join(WORDS[:1] + WORDS[3:6] + WORDS[10:])  # 2 lost, then 4 lost
    s = score(REF, hyp)
    assert s.deletions == 6 and s.longest_lost_run == 4


def test_substitutions_are_not_lost():
    hyp = " ".join(WORDS[:3] + ["zulu", "yankee", "xray", "whiskey", "victor"] + WORDS[8:])
    s = score(REF, hyp)
    assert (s.substitutions, s.deletions, s.insertions) == (5, 0, 0)
    assert s.longest_lost_run == 0
    assert s.longest_error_run == 5


def test_error_run_spans_substitutions_and_deletions():
    # delta, echo substituted; foxtrot, golf, hotel deleted: 5 wrong in a row, 3 lost.
    hyp = " ".join(WORDS[:3] + ["zulu", "yankee"] + WORDS[8:])
    s = score(REF, hyp)
    assert (s.substitutions, s.deletions) == (2, 3)
    assert s.longest_lost_run == 3 and s.longest_error_run == 5


def test_insertions():
    s = score("a b c", "a b extra words c")
    assert (s.insertions, s.deletions, s.substitutions, s.hits) == (2, 0, 0, 3)
    assert s.wer == pytest.approx(2 / 3)
    assert s.longest_lost_run == s.longest_error_run == 0


def test_empty_hypothesis_loses_everything():
    s = score(REF, "")
    assert (s.deletions, s.wer, s.longest_lost_run, s.hyp_words, s.longest_repeat) == (12, 1.0, 12, 0, 0)


def test_empty_reference():
    assert score("", "") == Score(0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "")
    s = score("", "you")
    assert (s.ref_words, s.insertions, s.wer, s.longest_lost_run) == (0, 1, 1.0, 0)
    assert score("", "thank you very much").wer == 4.0  # errors / max(ref_words, 1)


@pytest.mark.parametrize(
    "a, b",
    [
        ("Mr. Smith met Dr. Jones.", "mister smith met doctor jones"),
        ("It's twenty-five dollars.", "it is $25"),
        ("one hundred and five", "105"),
        ("He said: \"Hello, WORLD!\"", "he said hello world"),
        ("[Music] well, uh, yes", "well yes"),
        ("We won't go", "we will not go"),
    ],
)
def test_normaliser_equates(a, b):
    assert normalize(a) == normalize(b)
    assert score(a, b).wer == 0.0


def test_normaliser_exact_forms():
    assert normalize("Mr. Smith paid twenty-five dollars!") == "mister smith paid $25"
    assert normalize("  Hello,\n\tWORLD  ") == "hello world"
    assert normalize("") == ""
    assert normalize("...") == "."  # the original normaliser's quirk (module docstring)


def test_spelling_map_is_optional(tmp_path):
    assert normalize("colour") == "colour"  # default: no map available offline
    path = tmp_path / "normalizer.json"
    path.write_text(json.dumps({"colour": "color"}))
    for spelling in ({"colour": "color"}, path, str(path)):
        norm = Normalizer(spelling)
        assert norm("The Colour") == "the color" and norm.spelling_entries == 1
        assert score("colour", "color", normalizer=norm).wer == 0.0
    assert score("colour", "color").wer == 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", (0, "")),
        ("hello", (1, "hello")),
        ("a b c d e", (1, "a")),
        ("that that is", (2, "that")),
        ("to benefit, to benefit, to benefit,", (3, "to benefit")),
        ("we go to benefit to benefit to benefit to benefit and stop", (4, "to benefit")),
        ("you you you you you you you", (7, "you")),
        ("a b c d e f g h a b c d e f g h", (2, "a b c d e f g h")),
        ("a b c d e f g h i a b c d e f g h i", (1, "a")),  # 9-word phrases are not looked for
        ("the cat the dog the cat the dog the cat", (2, "the cat the dog")),
    ],
)
def test_longest_repeat(text, expected):
    assert longest_repeat(normalize(text).split()) == expected
    assert score("anything", text).longest_repeat == expected[0]


def test_longest_repeat_is_linear_on_a_long_loop():
    words = ["to", "benefit"] * 20000
    assert longest_repeat(words) == (20000, "to benefit")


def test_count_words_is_raw_tokens():
    assert count_words("") == 0
    assert count_words("   ") == 0
    assert count_words(".") == 1
    assert count_words("...") == 1
    assert count_words(". . .") == 3
    assert count_words(" you") == 1
    assert count_words("Hello, world.\nAgain") == 3


def test_to_dict_is_json_ready():
    d = score(REF, " ".join(WORDS[:6])).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"wer", "substitutions", "deletions", "insertions", "hits", "ref_words",
                      "hyp_words", "longest_lost_run", "longest_error_run", "longest_repeat",
                      "repeat_phrase"}  # fmt: skip
    assert d["wer"] == 0.5 and d["longest_lost_run"] == 6


def test_score_is_frozen():
    s = score("a", "a")
    with pytest.raises(AttributeError):
        s.wer = 1.0  # type: ignore[misc]


def test_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, pipeline.accuracy as a; a.count_words('x'); print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"

"""Transcript accuracy against a reference text (issue 8): normalise, align, count.

Plain Python (no torch): ``bench.py`` and the tests score any decoder's transcript with it.

    >>> s = score("The cat sat on the mat.", "the cat sat on mat")
    >>> (s.wer, s.deletions, s.longest_lost_run)
    (0.16666666666666666, 1, 1)

Normaliser. Both texts go through transformers' ``EnglishTextNormalizer``
(``transformers.models.whisper.english_normalizer``, a copy of OpenAI's Whisper English
normaliser, the one the Open ASR leaderboard and Whisper's papers score with): lower case,
punctuation and bracketed/filler words ("[Music]", "uh", "um") removed, contractions and
titles expanded ("it's" -> "it is", "Mr." -> "mister", "Dr." -> "doctor"), spelled-out
numbers turned into digits ("twenty-five" -> "25", "one hundred and five" -> "105").
Its British-to-American spelling map (``english.json`` in openai-whisper, ``normalizer.json``
in hub checkpoints) is NOT available offline here: transformers does not ship it, the
pip-installed CTranslate2 weights do not carry it, and openai-whisper is not installed.
So the default map is EMPTY ({}): "colour" and "color" count as different words. Every
decoder is scored with the same normaliser, so comparisons between decoders are fair; the
absolute WER may be a little higher than with the map when the reference uses British
spellings. ``Normalizer(spelling)`` takes a map (a dict, or the path of a
``normalizer.json``) where one is at hand; ``score(..., normalizer=...)`` uses it.

One quirk kept from the original: a lone run of dots normalises to "." (its period rule
keeps a dot that no word surrounds), so "..." in a hypothesis is an inserted word.

Alignment and counts come from jiwer (``jiwer.process_words``, word-level Levenshtein).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache

MAX_PHRASE_WORDS = 8  # longest phrase the repetition detector looks for


class Normalizer:
    """``EnglishTextNormalizer`` with a spelling map: ``Normalizer()(text) -> str``.

    ``spelling``: None or {} (no map; see the module docstring), a dict of
    ``{"colour": "color", ...}``, or the path of a ``normalizer.json`` holding one.
    """

    def __init__(self, spelling: dict | str | os.PathLike | None = None):
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        if spelling is None:
            spelling = {}
        elif not isinstance(spelling, dict):
            with open(spelling, encoding="utf-8") as f:
                spelling = json.load(f)
        self.spelling_entries = len(spelling)
        self._normalize = EnglishTextNormalizer(spelling)

    def __call__(self, text: str) -> str:
        return self._normalize(text or "")


@lru_cache(maxsize=1)
def default_normalizer() -> Normalizer:
    """The normaliser ``normalize`` and ``score`` use by default (empty spelling map)."""
    return Normalizer()


def normalize(text: str) -> str:
    """``text`` lower-cased, punctuation removed, numbers as digits, words single-spaced
    (transformers' ``EnglishTextNormalizer`` with an empty spelling map; see the module
    docstring). ``normalize("Mr. Smith paid twenty-five dollars!") == "mister smith paid $25"``.
    """
    return default_normalizer()(text)


def count_words(text: str) -> int:
    """Words a user would see: whitespace-separated tokens of the RAW text (not normalised).

    Bare punctuation counts: ``count_words(". . .") == 3`` and ``count_words("...") == 1``,
    because a subtitle file full of "." is junk to a user (issue 8's silence and noise
    checks: 90 s of noise may give at most two such words)."""
    return len((text or "").split())


@dataclass(frozen=True)
class Score:
    """How a hypothesis transcript compares with a reference, after normalising both.

    Counts are in normalised words (``normalize(text).split()``):

    - ``ref_words``, ``hyp_words``: words in the reference and in the hypothesis.
    - ``hits``, ``substitutions``, ``deletions``, ``insertions``: jiwer's minimum-edit
      alignment; ``hits + substitutions + deletions == ref_words`` and
      ``hits + substitutions + insertions == hyp_words``.
    - ``wer``: ``(substitutions + deletions + insertions) / ref_words``, a fraction (0.144,
      not 14.4). With an empty reference it is 0.0 for an empty hypothesis and otherwise
      the number of inserted words (jiwer's convention: errors / max(ref_words, 1)).
    - ``longest_lost_run``: the longest run of consecutive REFERENCE words that the
      alignment marks deleted, i.e. text the decoder lost. Runs are counted over reference
      positions: an inserted hypothesis word between two deleted reference words does not
      break the run (it covers no reference word), a hit or a substitution does.
      Substituted words are not lost (something was heard there).
    - ``longest_error_run``: the same over reference words that are deleted OR substituted:
      the longest stretch of the reference with no word right (a garbled sentence counts
      even when the decoder emitted words for it).
    - ``longest_repeat``: the repetition-loop detector, on the normalised HYPOTHESIS words:
      the largest number of times any phrase of 1 to 8 words occurs back to back
      ("to benefit, to benefit, to benefit" -> 3; "that that" -> 2; ordinary text -> 1;
      an empty hypothesis -> 0). ``repeat_phrase`` is that phrase ("to benefit"; with ties,
      the first found, shortest phrase first). Ordinary prose gives 1 or 2; a loop gives
      many.
    """

    wer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    hyp_words: int
    longest_lost_run: int
    longest_error_run: int
    longest_repeat: int
    repeat_phrase: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["wer"] = round(self.wer, 6)
        return d


def score(
    reference: str,
    hypothesis: str,
    *,
    normalizer: Normalizer | None = None,
    read_aloud: bool = True,
) -> Score:
    """Score ``hypothesis`` against ``reference`` (both raw text; each is normalised here).
    See ``Score`` for what each figure means.

    ``read_aloud``: the reference is a text that was read aloud in full (the project's test
    readings), so words in parentheses in it were spoken and count. Whisper's normaliser
    deletes parenthesised words (meant for annotations such as "(laughs)"): without this,
    every "(used for debugging)" a reader spoke and a decoder heard would score as
    inserted words. Square-bracketed annotations ("[Music]") are still removed.
    """
    import jiwer

    norm = normalizer or default_normalizer()
    if read_aloud:
        reference = reference.replace("(", ", ").replace(")", ", ")
    ref = norm(reference).split()
    hyp = norm(hypothesis).split()
    repeat, phrase = longest_repeat(hyp)
    if not ref and not hyp:
        return Score(0.0, 0, 0, 0, 0, 0, 0, 0, 0, repeat, phrase)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    # One label per reference word, from the alignment chunks ("equal", "substitute",
    # "delete", "insert"; an insert chunk covers no reference word).
    labels = [""] * len(ref)
    for chunk in out.alignments[0]:
        for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
            labels[i] = chunk.type
    return Score(
        wer=float(out.wer),
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
        hits=out.hits,
        ref_words=len(ref),
        hyp_words=len(hyp),
        longest_lost_run=_longest_run(labels, {"delete"}),
        longest_error_run=_longest_run(labels, {"delete", "substitute"}),
        longest_repeat=repeat,
        repeat_phrase=phrase,
    )


def _longest_run(labels: list[str], kinds: set[str]) -> int:
    best = run = 0
    for label in labels:
        run = run + 1 if label in kinds else 0
        best = max(best, run)
    return best


def longest_repeat(words: list[str], max_len: int = MAX_PHRASE_WORDS) -> tuple[int, str]:
    """(k, phrase): the largest k such that some phrase of 1..max_len words occurs k times
    back to back in ``words``; (0, "") for no words, else k >= 1.

    For a period L, ``words[j] == words[j + L]`` holding for c consecutive j starting at s
    means ``words[s : s + c + L]`` repeats its first L words: ``(c + L) // L`` whole times.
    That is O(len(words) * max_len), so a 10,000-word loop costs no more than prose.
    """
    if not words:
        return 0, ""
    best, phrase = 1, words[0]
    for size in range(1, max_len + 1):
        run = 0
        for j in range(len(words) - size):
            if words[j] == words[j + size]:
                run += 1
                k = (run + size) // size
                if k > best:
                    start = j - run + 1
                    best, phrase = k, " ".join(words[start : start + size])
            else:
                run = 0
    return best, phrase

"""A job's languages, when the request names none: which windows' detected language to
trust, and which language a doubtful window is decoded in again.

Whisper detects a language per 30 s window from one decoder step. On a window of clear
speech it is sure (0.95 and more); on a window that is short, synthetic, accented or
mixed it can be unsure and wrong. Multilingual ``base`` on an espeak-ng German reading
took its first window for Welsh ("cy" 0.75; WER 46.8% against 26.6% with ``--language
de``), two windows of a French reading for Latin ("la" 0.61, 0.45). Decoding every
window in its own detected language, as we did, writes such a window in the wrong
language.

Peers detect once: openai/whisper, faster-whisper and transformers' long-form ``generate``
take the language of the first 30 s for the whole file. That is right for one-language
audio whose first 30 s are clear speech, wrong when the start is music or silence, and
it writes every window of a file that changes language in the first one's. We keep
per-window detection and add a job-level check, deterministic (it reads every window's
detection, never the order in which windows finished):

- a window is *sure* when its most likely language has at least ``sure`` probability;
- the job's languages are those some sure window found, plus the job's *leader*: the
  language most likely if the whole job spoke one, the highest sum over the windows with
  text of the log of each window's probability for it (a language a window does not list
  among its most likely gets that window's last listed probability, an upper bound);
- a window that is not sure and whose language is not among the job's languages is
  decoded again (the whole window, with its review) in the job's language that it
  found most likely itself, or the leader if it gave none of them any weight.

The leader is a product of probabilities, not a sum weighted by text: a window in the
wrong language writes long nonsense (a Welsh-looking decode of German had more letters
than the German window after it), and one window cannot outvote the others by being sure
of something they all rule out. A job whose every window is unsure (a language Whisper
knows less well) keeps its own language by the leader, whatever a short sure intro in
another language says.

So a German reading whose first window looked Welsh is German throughout; a talk that
changes from English to German keeps both wherever Whisper was sure, and an unsure
window goes to whichever of the two it leaned to. An unsure window waits, right after
its first decode and before any fallback (``WindowReview``'s ``hold_if``), for the vote.
The job's languages only grow as windows are decided, so the vote on a window whose own
language some sure window already found is known before the job ends
(``settled_early``): it goes on at once, and the stream
(``pipeline.stitch.StreamStitcher`` releases text in order) waits on it for a batch or
two. Only a window in none of the sure windows' languages waits for the job's last
window (the leader needs them all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from pipeline.types import WindowResult
from stages.quality import text_units

# A window's own detection is trusted from this probability on. Measured with
# multilingual base on espeak-ng readings (scripts/language_readings.py): the wrong
# detections were cy 0.75, cy 0.84, la 0.45-0.73; windows of one clear language were
# 0.85-1.00. 0.9 keeps a wrong 0.84 out of the job's languages. An unsure window whose
# language is the job's anyway costs no decode: it waits after its first decode, then
# goes on from it (its text reaches the stream later, nothing more).
SURE = 0.9


def text_of(result: WindowResult) -> str:
    return "".join(seg.text for seg in result.segments)


def is_sure(result: WindowResult, sure: float = SURE) -> bool:
    """Whether a window's own detection is trusted (or there was none to doubt: a language
    given, an English-only model, no text)."""
    probs = result.language_probs
    if not probs or not text_units(text_of(result)):
        return True
    return probs[0][1] >= sure


@dataclass(frozen=True)
class JobLanguages:
    """The languages a job speaks, from all its windows' detections."""

    accepted: frozenset  # language codes
    leader: str | None  # the most weighted language (None: no window with text and probs)

    def for_window(self, result: WindowResult) -> str | None:
        """The language an unsure window should be decoded in: its own most likely one
        among ``accepted``, else the leader. None: keep what it was decoded in."""
        probs = result.language_probs
        if not probs or self.leader is None:
            return None
        for lang, _ in probs:
            if lang in self.accepted:
                return lang
        return self.leader


def _voters(results: Iterable[WindowResult]) -> list[dict]:
    return [dict(r.language_probs) for r in results if r.language_probs and text_units(text_of(r))]


def sure_languages(results: Iterable[WindowResult], sure: float = SURE) -> set:
    """The languages some window with text is sure of: part of the job's languages
    whatever its other windows say."""
    return {max(v, key=v.get) for v in _voters(results) if max(v.values()) >= sure}


def settled_early(result: WindowResult, sure_found: set) -> bool:
    """Whether the vote on an unsure window is known before the job's end: its own most
    likely language (the one it was decoded in) is among ``sure_found``, the languages
    of the sure windows decided so far. Those only grow, so whatever the job's other
    windows say, ``redecode_language`` will keep its decode."""
    probs = result.language_probs
    return bool(probs) and probs[0][0] == result.language and result.language in sure_found


def job_languages(results: Iterable[WindowResult], sure: float = SURE) -> JobLanguages:
    """The vote over a job's windows (their own first decodes, in any order)."""
    results = list(results)
    voters = _voters(results)
    accepted = sure_languages(results, sure)
    candidates = sorted({lang for v in voters for lang in v})
    if not candidates:
        return JobLanguages(frozenset(accepted), None)

    def log_likelihood(lang: str) -> float:
        # fsum: exactly rounded, so the same whatever order the windows are summed in
        return math.fsum(math.log(max(v.get(lang, min(v.values())), 1e-9)) for v in voters)

    # Ties go to the code that sorts first, so the vote never depends on the order windows
    # came in.
    scores = {lang: log_likelihood(lang) for lang in candidates}
    leader = min(candidates, key=lambda k: (-scores[k], k))
    accepted.add(leader)
    return JobLanguages(frozenset(accepted), leader)


def redecode_language(result: WindowResult, job: JobLanguages, sure: float = SURE) -> str | None:
    """The language to decode an unsure window in again, or None to keep its decode (it
    was sure, or its language is one of the job's)."""
    if is_sure(result, sure):
        return None
    target = job.for_window(result)
    if target is None or target == result.language:
        return None
    return target

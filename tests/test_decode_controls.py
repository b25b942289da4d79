"""The decoder's controls in stages/infer.py: ``StepRecorder`` (per-row log-probabilities;
per-row reproducible sampling), ``EotVeto`` (no end-of-text while the window still has
sound), ``compression_ratio`` and ``WhisperBackend._first_step`` (no-speech probability,
language detection).

Crafted tensors where the rule is arithmetic; the tiny random checkpoint (``tiny_model_dir``)
where any weights do; real tiny.en and base (pip packages, see ``pipeline.weights``) where
the model's judgement matters; those tests skip where the weights, ffmpeg, espeak-ng or
jfk.flac are absent.
"""

from __future__ import annotations

import re
import shutil
import sys
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.constants import SAMPLE_RATE
from pipeline.types import DecodeOptions
from stages.infer import EotVeto, StepRecorder, WhisperBackend, compression_ratio
from stages.levels import sound_profile
from tests import media
from tests.media import window as _window

REPO = Path(__file__).resolve().parents[1]
JFK = REPO.parent / "shared" / "audio" / "jfk.flac"


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py)."""


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def _text(result) -> str:
    return "".join(s.text for s in result.segments)


def _real_backend(name: str) -> WhisperBackend:
    from pipeline.weights import ModelResolveError, packaged_ct2_dir

    try:
        packaged_ct2_dir(name)
    except ModelResolveError as exc:  # names the pip package(s) to install
        pytest.skip(str(exc))
    return WhisperBackend(name, device="cpu", dtype="float32")


class Spy:
    """A logits processor that changes nothing and keeps the scores it saw each step:
    placed just before the recorder, it sees the fully processed, un-noised scores."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.detach().float().clone())
        return scores


def _generate(backend, features, processors=(), options=DecodeOptions(language="en"), **extra):
    """What ``WhisperBackend.transcribe`` does around ``generate`` (encoder once, its
    kwargs), with our own processors: (B, prompt + generated) int64."""
    kwargs = backend.generate_kwargs(options)
    kwargs.update(extra)
    with torch.inference_mode():
        enc = backend.model.get_encoder()(torch.stack(features))
        return backend.model.generate(
            encoder_outputs=enc, logits_processor=list(processors), **kwargs
        )


def _row_tokens(backend, sequences, prompt_len: int) -> list[list[int]]:
    """Each row's generated tokens, up to and including end-of-text (padding cut)."""
    rows = []
    for row in sequences.tolist():
        gen = row[prompt_len:]
        rows.append(gen[: gen.index(backend.eot) + 1] if backend.eot in gen else gen)
    return rows


# ------------------------------------------------------------------ compression ratio


def test_compression_ratio():
    assert compression_ratio("") == 0.0
    s = "And so my fellow Americans, ask not what your country can do for you."
    assert compression_ratio(s) == len(s.encode()) / len(zlib.compress(s.encode()))
    assert compression_ratio(s) < 2.4
    assert compression_ratio(" to benefit," * 30) > 2.4
    assert compression_ratio("日本語のテキスト") == len("日本語のテキスト".encode()) / len(
        zlib.compress("日本語のテキスト".encode())
    )


# ------------------------------------------------------------ StepRecorder, crafted


def test_recorder_counts_through_end_of_text_only():
    eos, V = 3, 10
    rec = StepRecorder(2, eos)
    prompt = torch.zeros(2, 2, dtype=torch.long)
    s1 = torch.tensor(
        [[0.0, 1.0, 0.5, 0.2, 2.0, 0, 0, 0, 0, 0], [0, 0, 0, 4.0, 1.0, 0, 0, 0, 0, 0]]
    )
    s2 = torch.tensor([[0.0, 1.0, 0.5, 3.0, 2.0, 0, 0, 0, 0, 0], [9.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    s3 = torch.full((2, V), 1.0)
    out = rec(prompt, s1)
    assert torch.equal(out, s1)  # greedy rows: scores untouched
    rec(torch.cat([prompt, torch.tensor([[4], [3]])], 1), s2)
    rec(torch.cat([prompt, torch.tensor([[4, 3], [3, 3]])], 1), s3)
    assert rec.prompt_len == 2
    lp1, lp2 = torch.log_softmax(s1, -1), torch.log_softmax(s2, -1)
    # Row 0: token 4, then end-of-text; row 1: end-of-text at once; padding steps are not
    # counted.
    assert rec.count.tolist() == [2, 1]
    assert rec.done.tolist() == [True, True]
    np.testing.assert_allclose(
        rec.sum_logprob.tolist(), [float(lp1[0, 4] + lp2[0, 3]), float(lp1[1, 3])], rtol=1e-12
    )
    # Divided by the tokens generated, end-of-text included (openai/whisper's len(t) + 1).
    np.testing.assert_allclose(
        rec.avg_logprobs(), [float(lp1[0, 4] + lp2[0, 3]) / 2, float(lp1[1, 3]) / 1], rtol=1e-12
    )


def test_recorder_hot_rows_only_change_their_own_scores():
    V = 50
    s = torch.randn(3, V, generator=torch.Generator().manual_seed(0))
    rec = StepRecorder(3, 0, temperatures=[0.0, 1.0, 0.0], seeds=[5, 6, 7])
    out = rec(torch.zeros(3, 1, dtype=torch.long), s.clone())
    assert torch.equal(out[0], s[0]) and torch.equal(out[2], s[2])
    assert not torch.equal(out[1], s[1])
    # The noise is Gumbel(0, 1) * T from the row's own generator, seeded by its seed.
    g = torch.Generator().manual_seed(6)
    u = torch.rand(V, generator=g).clamp_(1e-20, 1.0 - 1e-7)
    torch.testing.assert_close(out[1], s[1] + 1.0 * -torch.log(-torch.log(u)))


# ------------------------------------------------------ StepRecorder, random weights


@pytest.fixture(scope="module")
def rand_backend(tiny_model_dir):
    return WhisperBackend(str(tiny_model_dir))


@pytest.fixture(scope="module")
def rand_features(rand_backend):
    """Three different windows (seeded noise bursts), as features."""
    out = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = (
            0.1 * rng.standard_normal(20 * SAMPLE_RATE) * (rng.random(20 * SAMPLE_RATE) < 0.8)
        ).astype(np.float32)
        out.append(rand_backend.prepare(_window(x)))
    return out


N_RAND = 64  # tokens per row on random weights (which never say end-of-text)


def test_recorder_leaves_greedy_rows_unchanged(rand_backend, rand_features):
    plain = _generate(rand_backend, rand_features, max_new_tokens=N_RAND)
    rec = StepRecorder(3, rand_backend.eot, temperatures=[0.0, 0.0, 0.0], seeds=[1, 2, 3])
    recorded = _generate(rand_backend, rand_features, [rec], max_new_tokens=N_RAND)
    assert torch.equal(plain, recorded)
    assert rec.count.tolist() == [N_RAND] * 3


def test_recorded_logprob_matches_transformers_scores(rand_backend, rand_features):
    """Independent figures: transformers' own processed scores (output_scores) from a
    generate call without the recorder."""
    b = rand_backend
    kwargs = b.generate_kwargs(DecodeOptions(language="en"))
    kwargs["max_new_tokens"] = N_RAND
    with torch.inference_mode():
        enc = b.model.get_encoder()(torch.stack(rand_features))
        ref = b.model.generate(
            encoder_outputs=enc, output_scores=True, return_dict_in_generate=True, **kwargs
        )
        rec = StepRecorder(3, b.eot)
        seq = b.model.generate(encoder_outputs=enc, logits_processor=[rec], **kwargs)
    assert torch.equal(seq, ref.sequences)
    prompt = seq.shape[1] - len(ref.scores)
    assert rec.prompt_len == prompt
    for r, tokens in enumerate(_row_tokens(b, seq, prompt)):
        total = sum(
            float(torch.log_softmax(ref.scores[i][r].float(), -1)[t]) for i, t in enumerate(tokens)
        )
        assert rec.count[r] == len(tokens)
        assert abs(rec.sum_logprob[r].item() - total) < 1e-4 * len(tokens)
        assert abs(rec.avg_logprobs()[r] - total / len(tokens)) < 1e-4


def _sample(backend, features, temperatures, seeds):
    rec = StepRecorder(len(features), backend.eot, temperatures, seeds)
    seq = _generate(backend, features, [rec], max_new_tokens=N_RAND)
    return _row_tokens(backend, seq, rec.prompt_len), rec


def test_sampled_row_does_not_depend_on_its_batch(rand_backend, rand_features):
    """The key property: a row at temperature T with seed s gives the same tokens alone, in
    a batch with other rows, and whatever the other rows' temperatures and seeds are."""
    f0, f1, f2 = rand_features
    alone, rec_alone = _sample(rand_backend, [f0], [0.7], [11])
    in_batch, rec_b = _sample(rand_backend, [f1, f0, f2], [0.0, 0.7, 0.3], [1, 11, 5])
    mixed, rec_m = _sample(rand_backend, [f2, f1, f0], [1.0, 0.5, 0.7], [99, 3, 11])
    assert in_batch[1] == alone[0]
    assert mixed[2] == alone[0]
    assert len(alone[0]) == N_RAND
    np.testing.assert_allclose(rec_b.avg_logprobs()[1], rec_alone.avg_logprobs()[0], atol=1e-4)
    np.testing.assert_allclose(rec_m.avg_logprobs()[2], rec_alone.avg_logprobs()[0], atol=1e-4)
    # A greedy row beside sampled rows is the greedy decode alone.
    prompt = rec_b.prompt_len
    greedy = _row_tokens(rand_backend, _generate(rand_backend, [f1], max_new_tokens=N_RAND), prompt)
    assert greedy[0] == in_batch[0]
    # Sampling at all: the hot row differs from its greedy decode.
    greedy0 = _row_tokens(
        rand_backend, _generate(rand_backend, [f0], max_new_tokens=N_RAND), prompt
    )
    assert greedy0[0] != alone[0]


def test_sampling_seed_decides(rand_backend, rand_features):
    f0 = rand_features[0]
    a, _ = _sample(rand_backend, [f0, f0], [1.0, 1.0], [1, 2])
    again, _ = _sample(rand_backend, [f0], [1.0], [1])
    assert a[0] == again[0]  # reproducible
    assert a[0] != a[1]  # another seed, another sample (almost surely, at T = 1)


def test_transcribe_rows_reproducible_across_batches(rand_backend, rand_features):
    """The same through the backend's API: results (segments, avg_logprob) of a sampled
    row are the same alone and in a batch."""
    f0, f1, f2 = rand_features
    opts = DecodeOptions(language="en", tokens_per_window=N_RAND)
    (alone,) = rand_backend.transcribe([f0], opts, temperatures=[0.8], seeds=[1234])
    batch = rand_backend.transcribe(
        [f1, f2, f0], opts, temperatures=[0.0, 1.0, 0.8], seeds=[7, 8, 1234]
    )
    assert batch[2].segments == alone.segments
    assert batch[2].temperature == alone.temperature == 0.8
    assert batch[0].temperature == 0.0
    assert batch[2].avg_logprob == pytest.approx(alone.avg_logprob, abs=1e-4)


# ------------------------------------------------------------------- EotVeto, crafted

TB, EOS = 100, 50  # a crafted vocabulary: text 0-49, end-of-text, specials, timestamps
V = TB + 1501  # timestamps 0.00 .. 30.00 s


def ts(t: float) -> int:
    return TB + int(round(t / 0.02))


def profile(valid_s: float, *spans):
    """(valid_s, cumulative sound seconds per 50 ms frame) with sound on ``spans``."""
    loud = np.zeros(int(round(valid_s * 20)), dtype=bool)
    for t0, t1 in spans:
        loud[int(round(t0 * 20)) : int(round(t1 * 20))] = True
    return valid_s, sound_profile(loud)


def eot_scores(n: int) -> torch.Tensor:
    """(n, V): every row's argmax is end-of-text, text token 20 next."""
    s = torch.zeros(n, V)
    s[:, EOS] = 5.0
    s[:, 20] = 4.0
    return s


def _vetoed(veto, generated, scores, running=None):
    running = torch.ones(len(scores), dtype=torch.bool) if running is None else running
    before = scores.clone()
    out = veto(torch.tensor(generated, dtype=torch.long), scores, EOS, running)
    assert torch.equal(scores, before)  # the caller's tensor is not written
    changed = (out != before).any(dim=1)
    for r in range(len(out)):
        if changed[r]:  # only end-of-text is touched
            assert out[r, EOS] == -float("inf")
            rest = torch.ones(V, dtype=torch.bool)
            rest[EOS] = False
            assert torch.equal(out[r, rest], before[r, rest])
    return changed.tolist()


def test_veto_when_sound_remains():
    after_5 = [ts(0.0), 30, 31, ts(5.0)]
    sound = [
        profile(20.0, (0.0, 20.0)),  # sound to the end: vetoed
        profile(20.0, (0.0, 5.3)),  # sound ends within grace of the last timestamp
        None,  # no veto for this row
        profile(20.0, (0.0, 20.0)),  # does not want end-of-text
        profile(20.0, (0.0, 20.0)),  # not running any more
        profile(20.0, (0.0, 5.0), (5.6, 6.0)),  # 0.4 s of sound after the grace: vetoed
        profile(20.0, (0.0, 5.0), (5.6, 5.8)),  # 0.2 s: less than min_sound_s
    ]
    veto = EotVeto(sound, TB, "cpu")
    scores = eot_scores(len(sound))
    scores[3, 20] = 9.0
    running = torch.tensor([True, True, True, True, False, True, True])
    changed = _vetoed(veto, [after_5] * len(sound), scores, running)
    assert changed == [True, False, False, False, False, True, False]
    assert veto.left.tolist() == [2, 3, 3, 3, 3, 2, 3]


def test_no_veto_where_the_model_hears_no_speech():
    """A window whose no-speech probability is over openai's line (0.6) is never vetoed:
    there sound is not speech (music), and the veto's forced words lifted the mean
    log-probability over the no-speech rule's line ("Thank you. Thank you." over chords)."""
    after_5 = [ts(0.0), 30, 31, ts(5.0)]
    sound = [profile(20.0, (0.0, 20.0))] * 4
    veto = EotVeto(sound, TB, "cpu", no_speech=[0.73, 0.6, None, 0.05])
    assert _vetoed(veto, [after_5] * 4, eot_scores(4)) == [False, True, True, True]
    assert veto.left.tolist() == [3, 2, 2, 2]
    veto = EotVeto(sound, TB, "cpu", max_no_speech=0.8, no_speech=[0.73, 0.9, None, 0.05])
    assert _vetoed(veto, [after_5] * 4, eot_scores(4)) == [True, False, True, True]


def test_veto_needs_min_left_of_audio():
    # The last timestamp 2.5 s before the end, sound all the way.
    sound = [profile(20.0, (0.0, 20.0))] * 2
    gen = [[ts(0.0), 30, ts(17.5)], [ts(0.0), 30, ts(19.5)]]
    assert _vetoed(EotVeto(sound, TB, "cpu", min_left_s=3.0), gen, eot_scores(2)) == [False, False]
    assert _vetoed(EotVeto(sound, TB, "cpu", min_left_s=2.0), gen, eot_scores(2)) == [True, False]
    # Default 1 s: at 19.5 s too little is left (and the sound after it is in the grace).
    assert _vetoed(EotVeto(sound, TB, "cpu"), gen, eot_scores(2)) == [True, False]


def test_veto_grace_and_amounts_are_parameters():
    sound = [profile(20.0, (0.0, 5.0), (5.3, 5.9))]
    gen = [[ts(0.0), 30, ts(5.0)]]
    assert _vetoed(EotVeto(sound, TB, "cpu"), gen, eot_scores(1)) == [True]  # 5.5-5.9: 0.4 s
    assert _vetoed(EotVeto(sound, TB, "cpu", grace_s=0.7), gen, eot_scores(1)) == [False]
    assert _vetoed(EotVeto(sound, TB, "cpu", min_sound_s=0.5), gen, eot_scores(1)) == [False]


def test_veto_at_most_max_vetoes_per_row():
    sound = [profile(20.0, (0.0, 20.0))] * 2
    veto = EotVeto(sound, TB, "cpu", max_vetoes=3)
    gen = [[ts(0.0), 30, ts(5.0)]] * 2
    running = torch.tensor([True, False])
    history = [_vetoed(veto, gen, eot_scores(2), running) for _ in range(4)]
    assert history == [[True, False]] * 3 + [[False, False]]
    assert veto.left.tolist() == [0, 3]  # row 1's vetoes are its own
    veto2 = EotVeto(sound, TB, "cpu", max_vetoes=0)
    assert _vetoed(veto2, gen, eot_scores(2)) == [False, False]


def test_veto_before_any_timestamp():
    # Nothing generated yet: the last time is 0.
    sound = [profile(3.0, (0.0, 3.0)), profile(0.9, (0.0, 0.9))]
    veto = EotVeto(sound, TB, "cpu")
    assert _vetoed(veto, [[], []], eot_scores(2)) == [True, False]  # 0.9 s < min_left_s


def test_no_veto_after_text_a_segment_left_open():
    """End-of-text right after text closes a segment left open: Whisper's way of saying it
    runs to the window's end. How far the text got is unknown, and its opening timestamp is
    no measure of it: with a prompt, base wrote an 18 s reading as one open segment from
    <|0.00|>, the veto saw 18 s of sound "after" 0.00 and made it invent three sentences."""
    sound = [profile(20.0, (0.0, 20.0))]
    gen = [[ts(0.0), 30, 31, 32, 33],  # one open segment from 0.00
           [ts(0.0), 30, ts(5.0), ts(5.0), 31],  # a closed one, then an open one
           [ts(0.0), 30, ts(5.0)],  # closed at 5.0: sound after it, vetoed as before
           [30, 31]]  # text with no timestamp at all (timestamps off): nothing to go by  # fmt: skip
    assert [_vetoed(EotVeto(sound, TB, "cpu"), [g], eot_scores(1)) for g in gen] == [[False], [False], [True], [False]]


def test_veto_profiles_of_different_lengths():
    # A short row's profile is extended with its last value (no sound after its end).
    # (Row 0's last timestamp + grace lies past its profile: the sound after it is 0, not
    # the whole profile.)
    sound = [profile(4.0, (0.0, 4.0)), profile(20.0, (0.0, 20.0))]
    veto = EotVeto(sound, TB, "cpu", min_left_s=0.0)
    gen = [[ts(0.0), 30, ts(3.8)], [ts(0.0), 30, ts(10.0)]]
    assert _vetoed(veto, gen, eot_scores(2)) == [False, True]


def test_recorder_with_veto_rows_without_sound_untouched():
    rec = StepRecorder(2, EOS, sound=[profile(10.0, (0.0, 10.0)), None], timestamp_begin=TB)
    out = rec(torch.zeros(2, 1, dtype=torch.long), eot_scores(2))
    assert out[0, EOS] == -float("inf") and out[1, EOS] == 5.0
    assert rec.done.tolist() == [False, True]
    assert rec.count.tolist() == [1, 1]
    # Row 0 went on with its next best token; its log-probability is the masked
    # distribution's.
    expected = torch.log_softmax(out[0], -1)[20].item()
    assert rec.sum_logprob[0].item() == pytest.approx(expected)


# -------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def tiny_en():
    return _real_backend("tiny.en")


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    """jfk.flac as (n,) float32 16 kHz mono (about 11 s)."""
    if not JFK.is_file():
        pytest.skip(f"{JFK} is absent")
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    return media.read_audio(JFK, SAMPLE_RATE)


def test_recorded_logprob_real_rows_ending_at_different_steps(tiny_en, jfk):
    """Rows that say end-of-text at different steps: each row's figures stop at its own
    end-of-text, and match transformers' processed scores."""
    b = tiny_en
    feats = [
        b.prepare(_window(jfk)),
        b.prepare(_window(jfk[: 5 * SAMPLE_RATE])),
        b.prepare(_window(np.zeros(0))),
    ]
    kwargs = b.generate_kwargs(DecodeOptions())
    with torch.inference_mode():
        enc = b.model.get_encoder()(torch.stack(feats))
        ref = b.model.generate(
            encoder_outputs=enc, output_scores=True, return_dict_in_generate=True, **kwargs
        )
    results = b.transcribe(feats, DecodeOptions())
    prompt = ref.sequences.shape[1] - len(ref.scores)
    rows = _row_tokens(b, ref.sequences, prompt)
    assert all(r[-1] == b.eot for r in rows)
    assert len({len(r) for r in rows}) > 1, "the rows should end at different steps"
    for r, (tokens, result) in enumerate(zip(rows, results)):
        total = sum(
            float(torch.log_softmax(ref.scores[i][r].float(), -1)[t]) for i, t in enumerate(tokens)
        )
        assert result.n_tokens == len(tokens)
        assert result.avg_logprob == pytest.approx(total / len(tokens), abs=1e-4)
    assert "fellow Americans" in _text(results[0])
    assert results[0].avg_logprob > -0.6


def test_sampled_real_row_does_not_depend_on_rows_that_end_first(tiny_en, jfk):
    """Real weights: the other rows end (and pad) at other steps than the sampled row."""
    b = tiny_en
    speech = b.prepare(_window(jfk))
    others = [b.prepare(_window(np.zeros(0))), b.prepare(_window(jfk[: 5 * SAMPLE_RATE]))]
    (alone,) = b.transcribe([speech], DecodeOptions(), temperatures=[1.0], seeds=[2])
    batch = b.transcribe(
        others + [speech], DecodeOptions(), temperatures=[0.6, 0.0, 1.0], seeds=[9, 0, 2]
    )
    assert batch[1].n_tokens < batch[2].n_tokens  # (the greedy row ended first)
    assert batch[2].segments == alone.segments and batch[2].n_tokens == alone.n_tokens
    assert batch[2].avg_logprob == pytest.approx(alone.avg_logprob, abs=1e-4)
    assert "americans" in _words(_text(alone))


def test_sampled_row_logprob_is_the_models(tiny_en, jfk):
    """A sampled row's log-probability is the model's (un-noised, unscaled), as
    openai/whisper records it: not the Gumbel-noised scores'."""
    b = tiny_en
    spy = Spy()
    rec = StepRecorder(1, b.eot, temperatures=[1.0], seeds=[2])
    seq = _generate(b, [b.prepare(_window(jfk))], [spy, rec], options=DecodeOptions())
    (tokens,) = _row_tokens(b, seq, rec.prompt_len)
    total = sum(float(torch.log_softmax(spy.steps[i][0], -1)[t]) for i, t in enumerate(tokens))
    assert rec.sum_logprob[0].item() == pytest.approx(total, abs=1e-3)


def test_first_step_no_speech(tiny_en, jfk):
    b = tiny_en
    feats = torch.stack([b.prepare(_window(np.zeros(0))), b.prepare(_window(jfk))])
    with torch.inference_mode():
        enc = b.model.get_encoder()(feats).last_hidden_state
        no_speech, languages, _ = b._first_step(enc, DecodeOptions())
        # Independently: the full model on <|startoftranscript|>, the token looked up by name.
        sot = b.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        logits = b.model(encoder_outputs=(enc,), decoder_input_ids=torch.full((2, 1), sot)).logits
    nocaptions = b.tokenizer.convert_tokens_to_ids("<|nocaptions|>")
    assert b.no_speech_id == nocaptions
    ref = logits[:, -1].float().softmax(-1)[:, nocaptions].tolist()
    np.testing.assert_allclose(no_speech, ref, atol=1e-5)
    assert languages is None  # English-only: nothing to detect
    assert no_speech[0] > 0.5, no_speech
    assert no_speech[1] < 0.2, no_speech


def test_first_step_detects_language_with_base(jfk):
    b = _real_backend("base")
    assert b.multilingual
    feats = torch.stack([b.prepare(_window(jfk))])
    with torch.inference_mode():
        enc = b.model.get_encoder()(feats)
        no_speech, languages, probs = b._first_step(enc.last_hidden_state, DecodeOptions())
        given = b._first_step(enc.last_hidden_state, DecodeOptions(language="de"))
        ref = b.model.detect_language(encoder_outputs=enc)
    assert languages == ["en"]
    assert b.tokenizer.convert_ids_to_tokens(ref.tolist()) == ["<|en|>"]
    assert given[1] is None and given[2] is None and given[0] == pytest.approx(no_speech)
    assert no_speech[0] < 0.2
    # The probabilities a job's language vote reads: most likely first, English on top,
    # as openai/whisper's detect_language (softmax over the language tokens alone).
    (top,) = probs
    assert top[0][0] == "en" and top[0][1] > 0.9
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert sum(p for _, p in top) <= 1.0 + 1e-3


# ------------------------------------------------------- the veto on real speech


@pytest.fixture(scope="module")
def reading(tmp_path_factory):
    """espeak_short (scripts/make_testsets.py, a 3-minute espeak-ng reading) as float32."""
    if shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None:
        pytest.skip("espeak-ng and ffmpeg are needed to build espeak_short")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from make_testsets import build
    finally:
        sys.path.remove(str(REPO / "scripts"))
    wav = build("espeak_short", tmp_path_factory.mktemp("testsets"))
    with wave.open(str(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    return pcm


def test_veto_extends_windows_that_end_early(tiny_en, reading):
    """With the veto a window's transcript is the one without it, and more: on the
    reading's first 3 windows (which tiny.en decodes to the end anyway) and its last
    (where tiny.en, greedy, stops before the window's last sentence)."""
    from stages.chunk import plan_windows
    from stages.review import WindowReview

    windows = plan_windows(reading)
    assert len(windows) >= 5
    picked = [0, 1, 2, len(windows) - 1]
    reviews = [WindowReview(i, reading[windows[i][0] : windows[i][1]]) for i in picked]
    reqs = [r.requests() for r in reviews]
    assert all(len(q) == 1 for q in reqs)
    feats = [tiny_en.prepare(r.window_audio(q[0])) for r, q in zip(reviews, reqs)]
    sound = [r.sound(q[0]) for r, q in zip(reviews, reqs)]
    plain = tiny_en.transcribe(feats, DecodeOptions())
    vetoed = tiny_en.transcribe(feats, DecodeOptions(), sound=sound)
    recovered = 0
    for i, p, v, (valid_s, _) in zip(picked, plain, vetoed, sound):
        pw, vw = _words(_text(p)), _words(_text(v))
        assert vw[: len(pw)] == pw, f"window {i}: the veto changed what came before it"
        # (A last segment the model left open may go on with the veto.)
        assert v.segments[: len(p.segments) - 1] == p.segments[:-1]
        assert v.n_tokens >= p.n_tokens
        ended_early = p.segments[-1].end < valid_s - 2.0
        if ended_early:
            assert len(vw) > len(pw) + 5, f"window {i}: the veto recovered nothing"
            assert v.segments[-1].end > p.segments[-1].end + 2.0
            recovered += 1
    if not recovered:
        pytest.skip("tiny.en decoded every picked window to its end: nothing to recover")

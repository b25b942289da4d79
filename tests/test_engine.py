"""stages/engine.py (SlotEngine) and stages/rules.py (its token rules).

The engine must produce exactly what ``WhisperBackend.transcribe`` (greedy ``generate``)
produces for the same window, prompt, temperature, seed and sound profile: token for token
on real tiny.en and multilingual base (espeak speech, a short utterance, silence, language
detection, translate, sampled fallback rows, the end-of-text veto), and on the random
``tiny_model_dir`` checkpoint with forced lengths and options that differ between slots.
Always with fewer slots than windows, so slots are refilled while others run.
"""

from __future__ import annotations

import wave
from typing import NamedTuple

import numpy as np
import pytest
import torch

from pipeline.constants import SAMPLE_RATE
from pipeline.types import DecodeOptions
from stages.engine import SlotEngine
from stages.infer import BatchedTimestampRules, StepRecorder, WhisperBackend
from stages.levels import sound_profile
from stages.rules import SlotRules, SlotSampler, host_argmax
from tests import media
from tests.media import speech
from tests.media import window as _window

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py)."""


def _espeak(tmp_path_factory, text: str) -> np.ndarray:
    path = speech(tmp_path_factory.mktemp("speech") / "s.wav", text)
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def _profile(valid_s: float, *spans):
    """(valid_s, cumulative sound seconds per 50 ms frame) with sound on ``spans``."""
    loud = np.zeros(int(round(valid_s * 20)), dtype=bool)
    for t0, t1 in spans:
        loud[int(round(t0 * 20)) : int(round(t1 * 20))] = True
    return valid_s, sound_profile(loud)


def _assert_same(got, ref, what=""):
    """Tokens, segments, text, language exactly; float signals within rounding."""
    assert (got.segments, got.language, got.n_tokens, got.temperature) == (
        ref.segments, ref.language, ref.n_tokens, ref.temperature), what  # fmt: skip
    assert got.compression_ratio == ref.compression_ratio, what
    assert got.avg_logprob == pytest.approx(ref.avg_logprob, abs=1e-4), what
    assert got.no_speech_prob == pytest.approx(ref.no_speech_prob, abs=1e-5), what


def _run(engine, jobs):
    """jobs: [(key, features, options, kwargs)] -> {key: WindowResult}, all submitted first."""
    for key, feats, options, kw in jobs:
        engine.submit(key, feats, options, **kw)
    out = engine.run()
    assert engine.idle
    keys = [k for k, _ in out]
    assert sorted(keys, key=str) == sorted((k for k, *_ in jobs), key=str)
    return dict(out)


# ---------------------------------------------------------------- rules, crafted

TB, EOS, V, P = 50364, 50257, 51865, 3  # multilingual ids, prompt of 3


def _reference_processors(min_new, suppress, begin, max_initial=50):
    """The processors greedy ``generate`` builds (forced length, suppression, timestamps)."""
    from transformers import GenerationConfig
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor,
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    cfg = GenerationConfig(
        no_timestamps_token_id=TB - 1, eos_token_id=EOS, max_initial_timestamp_index=max_initial
    )
    procs = [
        SuppressTokensLogitsProcessor(suppress),
        SuppressTokensAtBeginLogitsProcessor(begin, begin_index=P),
        BatchedTimestampRules(WhisperTimeStampLogitsProcessor(cfg, begin_index=P)),
    ]
    if min_new:
        procs.insert(0, MinNewTokensLengthLogitsProcessor(P, min_new, EOS))
    return procs


def test_host_argmax_is_torchs_argmax():
    """numpy's argmax on the CPU path: torch's index in every case that can differ (ties:
    the first; NaN: the first NaN; all -inf; a non-contiguous view; a half-precision
    tensor, which stays with torch), under inference mode as in the engine."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 51864, generator=g)
    x[3, 100] = x[3, 7] = x[3].max() + 1  # a tie: 7 wins
    x[4, 9] = x[4, 2] = float("nan")  # NaN is the maximum: 2 wins
    x[5] = float("-inf")  # 0
    x[6, 40000:] = float("inf")  # 40000
    x[7] = x[7].round()  # many ties
    with torch.inference_mode():
        for t in (x, x[:, :50257], x[::2], x.double(), x.bfloat16()):
            got = host_argmax(t)
            assert got.dtype == torch.long and torch.equal(got, t.argmax(dim=-1))
    assert host_argmax(x)[[3, 4, 5, 6]].tolist() == [7, 2, 0, 40000]


@pytest.mark.parametrize("host", [True, False], ids=["cpu-rows", "device-masks"])
def test_slot_rules_match_generates_processors(host):
    """Rows at different steps (each slot starts its window at another step), random
    histories of text and timestamps: each row's processed scores equal transformers'
    processors (and ``BatchedTimestampRules``) applied to that row's own history. Both
    ways of masking rows: on the host (the CPU's) and on the device (CUDA's, run here)."""
    gen = torch.Generator().manual_seed(0)
    suppress, begin = [1, 2, 7, 50258, 50359], [220, EOS]
    slots, steps = 6, 14
    mins = [0, 0, 4, 0, 9, 0]
    rules = SlotRules(
        slots, V, eos=EOS, timestamp_begin=TB, no_timestamps=TB - 1, max_initial=50,
        detect_from_logprob=True, suppress=suppress, begin_suppress=begin,
    )  # fmt: skip
    rules.host = host
    refs = [_reference_processors(mn, suppress, begin) for mn in mins]
    start = [0, 1, 2, 3, 5, 8]  # the global step at which each slot's window begins
    hist: list[list[int]] = [[] for _ in range(slots)]
    for step in range(steps):
        new = [s for s in range(slots) if start[s] == step]
        if new:
            rules.reset(torch.tensor(new), torch.tensor([mins[s] for s in new]))
        live = torch.tensor([step >= start[s] for s in range(slots)])
        scores = torch.randn(slots, V, generator=gen)
        scores[:2, TB:] += 6.0  # rows where timestamps win by probability mass
        scores[:, EOS] += 2.0
        got = rules(scores.clone())
        for s in range(slots):
            if not live[s]:
                continue
            ids = torch.tensor([[50258, 50259, 50359] + hist[s]])
            ref = scores[s : s + 1].clone()
            for proc in refs[s]:
                ref = proc(ids, ref)
            assert torch.equal(got[s], ref[0]), (step, s)
        # Histories with text, single and paired timestamps, never decreasing.
        picked = got.argmax(-1)
        coin = torch.rand(slots, generator=gen)
        for s in range(slots):
            if live[s] and hist[s] and coin[s] < 0.3 and got[s, TB:].isfinite().any():
                picked[s] = TB + int(torch.nonzero(got[s, TB:].isfinite())[0])  # lowest allowed
        rules.advance(picked, live)
        for s in range(slots):
            if live[s]:
                hist[s].append(int(picked[s]))
    assert any(sum(t >= TB for t in h) >= 3 for h in hist)


@pytest.mark.parametrize("host", [True, False], ids=["cpu-repick", "device-argmax"])
def test_slot_sampler_matches_step_recorder(host):
    """Same scores, rows of a batch vs slots: picks, log-probability sums, veto and
    sampling (per-row generators) as ``StepRecorder`` with its ``EotVeto``. Both ways of
    picking: again only where the veto or noise changed a row (the CPU's), and all rows
    (CUDA's, run here)."""
    gen = torch.Generator().manual_seed(3)
    n, steps, tb, eos = 4, 12, 40, 20
    vocab = tb + 1501
    temps, seeds = [0.0, 0.7, 0.0, 1.0], [0, 5, 0, 9]
    sound = [_profile(20.0, (0.0, 20.0)), None, _profile(20.0, (0.0, 20.0)), _profile(20.0, (0.0, 20.0))]
    # Row 3 hears no speech (over 0.6): no veto there, told at admission or at its first step.
    no_speech = [0.1, None, None, 0.9]
    rec = StepRecorder(n, eos, temps, seeds, sound=sound, timestamp_begin=tb, no_speech=no_speech)
    sampler = SlotSampler(n, eos, tb)
    sampler.host = host
    rules = SlotRules(n, vocab, eos=eos, timestamp_begin=tb, no_timestamps=tb - 1, max_initial=None,
                      detect_from_logprob=False)  # fmt: skip
    rules.reset(torch.arange(n), torch.zeros(n, dtype=torch.long))
    for s in range(n):
        sampler.reset(s, temps[s], seeds[s], sound[s], no_speech=no_speech[s] if s != 3 or host else None)
    if not host:  # English-only rows read it at their first step (``heard``)
        sampler.heard(torch.tensor([0, 3]), torch.tensor([0.1, 0.9]))
    ids = torch.zeros(n, 1, dtype=torch.long)
    live = torch.ones(n, dtype=torch.bool)
    for step in range(steps):
        scores = torch.randn(n, vocab, generator=gen)
        scores[:, eos] += 3.0 if step % 3 == 2 else -5.0  # end-of-text wanted now and then
        scores[:, tb + 10 * step] += 4.0  # rising timestamps
        ref_picked = rec(ids, scores.clone()).argmax(-1)
        picked = sampler(scores.clone(), live, rules)
        assert torch.equal(picked[live], ref_picked[live]), step
        rules.advance(picked, live)
        ids = torch.cat([ids, torch.where(live, picked, eos)[:, None]], 1)  # generate's padding
        live = live & (picked != eos)
    assert torch.equal(sampler.count, rec.count)
    np.testing.assert_allclose(sampler.sum_logprob.numpy(), rec.sum_logprob.numpy(), rtol=1e-12)
    assert torch.equal(sampler.left, rec.veto.left)
    assert (rec.veto.left < 3).any()  # the veto did act
    assert rec.veto.left[3] == 3 and not sampler.active[3]  # not where no speech is heard


def _generates_processors(backend, options=DecodeOptions()) -> dict:
    """The logits processors ``generate`` builds in ``transcribe``, by type name."""
    original = backend.model._get_logits_processor
    seen = {}

    def spy(*args, **kwargs):
        procs = original(*args, **kwargs)
        seen.update((type(p).__name__, p) for p in procs)
        return procs

    backend.model._get_logits_processor = spy
    try:
        backend.transcribe([backend.prepare(_window(np.zeros(0, np.float32)))], options)
    finally:
        del backend.model._get_logits_processor
    return seen


# ---------------------------------------------------------------- real tiny.en

READING = (
    "The quick brown fox jumps over the lazy dog. Many people enjoy reading books "
    "in the evening, while others prefer to listen to music or take a long walk."
)


@pytest.fixture(scope="module")
def tiny_en(real_tiny_dir):
    return WhisperBackend(str(real_tiny_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    return {
        "reading": _window(_espeak(tmp_path_factory, READING)),
        "speech": _window(_espeak(tmp_path_factory, "Hello world. This is a test of the server.")),
        "short": _window(_espeak(tmp_path_factory, "Yes.")),
        "silence": _window(np.zeros(0, np.float32)),
    }


def test_engine_matches_transcribe_tiny_en(tiny_en, audio):
    """Seven windows in three slots: greedy speech, a short utterance, silence, two
    sampled fallback rows (their own seeds) and two rows with a sound profile (the veto):
    each as transcribe decodes it in one batch."""
    b = tiny_en
    f = {k: b.prepare(x) for k, x in audio.items()}
    reading_s = float(np.nonzero(audio["reading"])[0][-1] + 1) / SAMPLE_RATE
    # Sound 1.5 s past the reading's end: end-of-text is vetoed (measured: 3 more tokens).
    vetoed = _profile(reading_s + 1.5, (0.0, reading_s + 1.5))
    rows = [
        ("reading", 0.0, 0, None),
        ("reading", 0.0, 0, vetoed),
        ("speech", 0.0, 0, None),
        ("short", 0.0, 0, _profile(reading_s, (0.0, 0.5))),  # a profile, no veto
        ("silence", 0.0, 0, None),
        ("speech", 0.4, 7, None),
        ("speech", 1.0, 11, None),
    ]
    opts = DecodeOptions()
    ref = b.transcribe([f[n] for n, *_ in rows], opts, temperatures=[r[1] for r in rows],
                       seeds=[r[2] for r in rows], sound=[r[3] for r in rows])  # fmt: skip
    engine = SlotEngine(b, slots=3, encoder_batch=2)
    jobs = [
        (i, f[n], opts, dict(temperature=t, seed=s, sound=snd))
        for i, (n, t, s, snd) in enumerate(rows)
    ]
    got = _run(engine, jobs)
    for i, r in enumerate(ref):
        _assert_same(got[i], r, rows[i][:3])
    text = lambda r: "".join(s.text for s in r.segments)  # noqa: E731
    assert "lazy dog" in text(got[0]).lower()
    assert got[4].no_speech_prob > 0.5 and got[2].no_speech_prob < 0.2
    assert got[1].n_tokens > got[0].n_tokens  # the veto kept the window going
    assert text(got[5]) != text(got[2]) or text(got[6]) != text(got[2])  # sampling at all
    s = engine.stats
    assert s["windows"] == 7 and s["tokens"] == sum(r.n_tokens for r in ref)
    assert s["row_steps_used"] == s["tokens"]  # English-only: no prompt steps besides
    assert s["moves"] > 0  # windows moved to lower slots decode the same
    assert s["encoder_s"] > 0 and s["decoder_s"] > 0


@pytest.mark.parametrize("which", ["tiny_en", "rand_backend"])
def test_rules_are_the_ones_generate_builds(which, request):
    """SlotRules.for_backend reads the same ids and settings as the processors generate
    builds for transcribe's kwargs (English-only and multilingual; forced lengths add
    MinLength/MinNewTokens, which SlotRules takes from the options)."""
    backend = request.getfixturevalue(which)
    # (Random weights never say end-of-text: forced to 3 tokens there, to be quick.)
    forced = _generates_processors(backend, DecodeOptions(tokens_per_window=3))
    assert {"MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor"} < set(forced)
    seen = forced if which == "rand_backend" else _generates_processors(backend)
    rules = SlotRules.for_backend(backend, 1)
    assert set(seen) - set(forced) == set()
    assert set(seen) - {"MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor"} == {
        "SuppressTokensLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor",
        "BatchedTimestampRules", "StepRecorder"}  # fmt: skip
    suppress = seen["SuppressTokensLogitsProcessor"].suppress_tokens.tolist()
    assert sorted(suppress) == rules.suppress_ids.tolist()
    begin = seen["SuppressTokensAtBeginLogitsProcessor"].begin_suppress_tokens.tolist()
    assert sorted(begin) == sorted(rules.begin_ids.tolist())
    ts = seen["BatchedTimestampRules"]
    assert (ts.timestamp_begin, ts.no_timestamps_token_id, ts.eos_token_id,
            ts.max_initial_timestamp_index, ts._detect_timestamp_from_logprob) == (
        rules.tb, rules.no_ts, rules.eos, rules.max_initial, rules.detect)  # fmt: skip


def test_static_mode_matches_on_real_weights(tiny_en, audio):
    """The captured path's logic on CPU (static buffers, all 448 cache positions under the
    mask, prefix buckets, copy-in/copy-out): the same results."""
    b = tiny_en
    names = ["speech", "short", "silence"]
    feats = [b.prepare(audio[n]) for n in names]
    ref = b.transcribe(feats, DecodeOptions())
    engine = SlotEngine(b, slots=2, static=True)
    assert engine.static and not engine.cuda_graphs
    got = _run(engine, [(n, f, DecodeOptions(), {}) for n, f in zip(names, feats)])
    for n, r in zip(names, ref):
        _assert_same(got[n], r, n)
    assert engine.stats["row_steps_computed"] >= engine.stats["row_steps_used"]


# ---------------------------------------------------------------- real multilingual base


@pytest.fixture(scope="module")
def base():
    from pipeline.weights import ModelResolveError, resolve_model

    try:
        path = resolve_model("base")
    except ModelResolveError as exc:
        pytest.skip(f"base weights not installed: {exc}")
    return WhisperBackend(path, device="cpu", dtype="float32")


def test_engine_matches_transcribe_base(base, audio):
    """Multilingual base, options differing between slots: language detected per window
    (speech, silence), translate, a language given; two slots for four windows."""
    b = base
    assert b.multilingual
    f = {k: b.prepare(audio[k]) for k in ("speech", "short", "silence")}
    groups = [
        (DecodeOptions(), ["speech", "silence"]),
        (DecodeOptions(task="translate"), ["speech"]),
        (DecodeOptions(language="fr"), ["short"]),
    ]
    jobs, ref = [], {}
    for g, (opts, names) in enumerate(groups):
        for key, r in zip(((g, n) for n in names), b.transcribe([f[n] for n in names], opts)):
            ref[key] = r
            jobs.append((key, f[key[1]], opts, {}))
    engine = SlotEngine(b, slots=2)
    got = _run(engine, jobs)
    for key, r in ref.items():
        _assert_same(got[key], r, key)
    assert got[(0, "speech")].language == "en"
    assert got[(2, "short")].language == "fr"
    # Prompt positions counted too: <|startoftranscript|> alone (detection), then the
    # three-token prompt in one pass, whose last logits pick the first token; each
    # window's first step computes its row at the scratch position and throws it away.
    assert engine.stats["row_steps_used"] == engine.stats["tokens"] + 3 * len(jobs)
    assert engine.stats["row_steps_computed"] >= engine.stats["row_steps_used"] + len(jobs)


# ---------------------------------------------------------------- prompt and temperature (issue 11)

PROMPT = "Ask not, Fellow Amerikans."  # a spelling the models would not write by themselves
# Where ../shared/audio is absent: espeak-ng reads MEETING, and the prompts spell its
# "Smith" as "Smyth" (measured with base: "Mr Smith" without a prompt, "Mr. Smyth" with
# either prompt, in five espeak-ng voices and speeds; a prompt that opens with the name
# makes the models skip the sentence that says it, so the name sits mid-sentence).
MEETING = ("Yesterday afternoon I had a long meeting with Mister Smith about the new project. "
           "We will meet again at the old harbor next week.")  # fmt: skip


class Spoken(NamedTuple):
    windows: dict  # "a": from 0 s, "b": from 3 s
    prompt: str
    prompt_en: str  # for a window with the language given
    spelled: str  # the prompts' spelling of a word the speech says
    usual: str  # base's own spelling of that word
    ending: str  # how the text of either window ends (tiny.en after the prompt: MEETING's
    # second sentence alone)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """Speech for the prompt tests: jfk.flac (about 11 s) where ../shared/audio has it,
    else MEETING read by espeak-ng (about 7 s), as two windows, and prompts for it."""
    path = media.shared_audio("jfk.flac")
    if path is not None:
        x = media.read_audio(path, SAMPLE_RATE)
        text = (PROMPT, "Fellow Amerikans, listen.", "Amerikans", "Americans", " your country.")
    else:
        x = _espeak(tmp_path_factory, MEETING)
        text = ("Notes from the meeting with Mr. Smyth.", "Mr. Smyth and Mrs. Smyth.", "Smyth",
                "Smith", " next week.")  # fmt: skip
    return Spoken({"a": _window(x), "b": _window(x[3 * SAMPLE_RATE :])}, *text)


def _prompt_jobs(b, groups, f):
    """groups: [(options, [window names])] -> (engine jobs, {key: transcribe's result}),
    transcribe (``generate(prompt_ids=...)``) once per group."""
    jobs, ref = [], {}
    for g, (opts, names) in enumerate(groups):
        for name, r in zip(names, b.transcribe([f[n] for n in names], opts)):
            ref[(g, name)] = r
            jobs.append(((g, name), f[name], opts, {}))
    return jobs, ref


def test_prompt_ids_and_limits(tiny_en):
    """<|startofprev|> + tokens of " " + prompt.strip() (transformers' get_prompt_ids), the
    last 223 kept; generate gets them as prompt_ids with max_new_tokens cut to fit 448."""
    b, tok = tiny_en, tiny_en.tokenizer
    full = tok.get_prompt_ids("  " + PROMPT + " ", return_tensors="np").tolist()
    opts = DecodeOptions(prompt="  " + PROMPT + " ")
    assert b.prompt_ids(opts) == full and full[0] == b.prev_sot
    kw = b.generate_kwargs(opts)
    assert kw["prompt_ids"].tolist() == full and kw["max_new_tokens"] == 224
    assert b.prompt_ids(DecodeOptions(prompt="  ")) == [] and b.prompt_ids(DecodeOptions()) == []
    assert "prompt_ids" not in b.generate_kwargs(DecodeOptions())
    long = DecodeOptions(prompt="one two three " * 100)
    ids = b.prompt_ids(long)
    every = tok.get_prompt_ids(long.prompt, return_tensors="np").tolist()
    assert len(ids) == 224 and ids == [b.prev_sot] + every[-223:]
    assert b.generate_kwargs(long)["max_new_tokens"] == 448 - 224 - 1
    assert b.token_limits(DecodeOptions(tokens_per_window=440), 225) == (223, 223)
    with pytest.raises(ValueError, match="special token"):
        b.prompt_ids(DecodeOptions(prompt="hello <|en|>"))


def test_prompt_matches_generate_tiny_en(tiny_en, spoken, audio):
    """Slot engine vs generate(prompt_ids=...) on real tiny.en: the same prompt over two
    windows and a long prompt (cut to 223 tokens), in two slots (refilled with a prompt of
    another length); the prompt's tokens are no part of the text."""
    b = tiny_en
    f = {k: b.prepare(x) for k, x in {**spoken.windows, "speech": audio["speech"]}.items()}
    groups = [
        (DecodeOptions(prompt=spoken.prompt), ["a", "b"]),
        (DecodeOptions(prompt="one two three " * 100), ["speech"]),
    ]
    jobs, ref = _prompt_jobs(b, groups, f)
    engine = SlotEngine(b, slots=2)
    got = _run(engine, jobs)
    for key, r in ref.items():
        _assert_same(got[key], r, key)
    text = lambda r: "".join(s.text for s in r.segments)  # noqa: E731
    for key in [(0, "a"), (0, "b")]:  # the speech to its end, and no prompt in the text
        assert text(got[key]).endswith(spoken.ending), text(got[key])
        assert spoken.prompt not in text(got[key])
    s = engine.stats  # the prompt's tokens, prefilled at admission, are counted
    assert s["row_steps_used"] == s["tokens"] + 2 * len(b.prompt_ids(groups[0][0])) + 224


def test_prompt_matches_generate_base_and_changes_a_spelling(base, spoken):
    """Multilingual base: a prompt with language detection (from <|startoftranscript|>
    alone, as generate does) and another with the language given, token for token
    generate(prompt_ids=...), beside a window with no prompt, in two slots. The prompt's
    spelling is taken up."""
    b = base
    f = {k: b.prepare(x) for k, x in spoken.windows.items()}
    groups = [
        (DecodeOptions(prompt=spoken.prompt), ["a"]),
        (DecodeOptions(prompt=spoken.prompt_en, language="en"), ["b"]),
    ]
    jobs, ref = _prompt_jobs(b, groups, f)
    engine = SlotEngine(b, slots=2)
    got = _run(engine, jobs + [("plain", f["a"], DecodeOptions(), {})])
    for key, r in ref.items():
        _assert_same(got[key], r, key)
    text = lambda r: "".join(s.text for s in r.segments)  # noqa: E731
    assert got[(0, "a")].language == "en" and got[(1, "b")].language == "en"
    assert spoken.spelled in text(got[(0, "a")]), text(got[(0, "a")])
    plain = text(got["plain"])
    assert spoken.usual in plain and spoken.spelled not in plain, plain
    # Admission: the first step (detection), then the whole prompt (previous text,
    # <|startoftranscript|>, language, task) in one pass, which gives the first token (the
    # window's row in its first step is computed but not used).
    n_prev = [len(b.prompt_ids(g[0])) for g in groups] + [0]
    s = engine.stats
    assert s["row_steps_used"] == s["tokens"] + sum(1 + (p + 3) - 1 for p in n_prev)


def test_temperature_from_options_is_reproducible(tiny_en, audio):
    """DecodeOptions.temperature is a window's temperature when none is given: sampled
    as transcribe samples it at that temperature, the same on every run for a seed."""
    b = tiny_en
    feats = b.prepare(audio["speech"])
    opts = DecodeOptions(temperature=0.8)
    (ref,) = b.transcribe([feats], DecodeOptions(), temperatures=[0.8], seeds=[5])
    for _ in range(2):
        (got,) = _run(SlotEngine(b, slots=1), [(0, feats, opts, dict(seed=5))]).values()
        _assert_same(got, ref)
    assert got.temperature == 0.8


# ---------------------------------------------------------------- random weights


@pytest.fixture(scope="module")
def rand_backend(tiny_model_dir):
    return WhisperBackend(str(tiny_model_dir))


@pytest.fixture(scope="module")
def rand_features(rand_backend):
    out = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        x = 0.1 * rng.standard_normal(20 * SAMPLE_RATE) * (rng.random(20 * SAMPLE_RATE) < 0.8)
        out.append(rand_backend.prepare(_window(x.astype(np.float32))))
    return out


MIXED = [
    (DecodeOptions(tokens_per_window=12), [0, 1, 2], [0.0, 0.0, 0.7], [0, 0, 5]),
    (DecodeOptions(language="fr", task="translate", tokens_per_window=7), [3, 4], None, None),
    (DecodeOptions(tokens_per_window=20), [5, 0], [0.0, 1.0], [0, 42]),
]


@pytest.mark.parametrize("static", [False, True])
def test_mixed_options_forced_lengths_random_weights(rand_backend, rand_features, static):
    """Windows of three 'jobs' with different options (detected language, fr+translate,
    forced lengths 12/7/20, sampled rows) in two slots, the encoder in batches of one."""
    b = rand_backend
    jobs, ref = [], {}
    for g, (opts, idx, temps, seeds) in enumerate(MIXED):
        feats = [rand_features[i] for i in idx]
        results = b.transcribe(feats, opts, temperatures=temps, seeds=seeds)
        for j, (i, r) in enumerate(zip(idx, results)):
            kw = dict(temperature=temps[j], seed=seeds[j]) if temps else {}
            ref[(g, j)] = r
            jobs.append(((g, j), rand_features[i], opts, kw))
    engine = SlotEngine(b, slots=2, encoder_batch=1, static=static)
    got = _run(engine, jobs)
    for key, r in ref.items():
        _assert_same(got[key], r, key)
    assert {r.n_tokens for r in got.values()} == {12, 7, 20}
    assert engine.stats["moves"] > 0
    assert len({r.language for r in got.values()}) > 1


def test_the_step_attends_over_each_rows_own_positions(rand_backend, rand_features, monkeypatch):
    """Windows of different lengths in flight: every self-attention of a step reads exactly
    its rows' own cache positions (pos + 1), with no mask, as generate does; a longer
    masked stretch rounds differently in 16 bits (6 of 21 windows of a reading changed
    in bfloat16: README, "Half precision"). The tokens stay generate's (float32 here)."""
    import stages.engine as eng

    calls = []
    real = eng.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kw):  # (transformers' encoder calls it too, at admission)
        calls.append((q.shape[0], k.shape[2], kw.get("attn_mask") is not None))
        return real(q, k, v, *args, **kw)

    opts = [DecodeOptions(tokens_per_window=n) for n in (5, 11, 17, 8)]
    ref = {i: rand_backend.transcribe([rand_features[i]], o)[0] for i, o in enumerate(opts)}
    engine = SlotEngine(rand_backend, slots=3, static=False)
    for i, o in enumerate(opts):
        engine.submit(i, rand_features[i], o)
    monkeypatch.setattr(eng.F, "scaled_dot_product_attention", spy)
    got, mixed = {}, 0
    while not engine.idle:
        engine._admit()
        engine._compact()
        live = [slot.pos + 1 for slot in engine._running if slot is not None]
        calls.clear()
        got.update(engine.step())
        layers = len(engine.decoder.layers)
        self_calls = [c for c in calls if c[1] != engine.cross_k[0].shape[2]]
        assert not any(masked for *_, masked in self_calls)
        want = sorted((live.count(n), n) for n in set(live))  # (rows, positions) per group
        assert sorted((rows, n) for rows, n, _ in self_calls) == sorted(want * layers)
        mixed += len(set(live)) > 1
    assert mixed > 5  # slots did sit at different positions
    for i, r in ref.items():
        _assert_same(got[i], r, i)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_static_path(tiny_model_dir, dtype):
    """The dtypes of the CUDA path (caches and weights in half precision, rules in float32)
    through the static step, on CPU: the same tokens as transcribe in that dtype (measured
    equal on this machine; fp32 above is the proof, this guards the dtype plumbing)."""
    b = WhisperBackend(str(tiny_model_dir), dtype=dtype)
    rng = np.random.default_rng(0)
    feats = [b.prepare(_window(0.1 * rng.standard_normal(n * SAMPLE_RATE).astype(np.float32)))
             for n in (20, 12, 5)]  # fmt: skip
    opts = DecodeOptions(tokens_per_window=16)
    ref = b.transcribe(feats, opts)
    engine = SlotEngine(b, slots=2, static=True)
    assert engine.self_k[0].dtype == getattr(torch, dtype)
    got = _run(engine, [(i, f, opts, {}) for i, f in enumerate(feats)])
    for i, r in enumerate(ref):
        assert (got[i].segments, got[i].language) == (r.segments, r.language), i
        assert got[i].avg_logprob == pytest.approx(r.avg_logprob, abs=1e-2)


def test_cuda_graph_flow_with_a_stand_in(rand_backend, rand_features, monkeypatch):
    """The CUDA-graph branch (capture once per prefix bucket, then replay) on CPU, with a
    stand-in for torch.cuda's stream and graph API: a 'graph' replays the body it captured
    and checks that the static tensors it reads and writes are still the same storage (a
    step that rebound one instead of writing into it would leave a real graph reading
    stale memory). Results equal the eager engine's."""
    import contextlib

    opts = DecodeOptions(tokens_per_window=9)
    jobs = [(i, rand_features[i], opts, {}) for i in range(5)]
    expected = _run(SlotEngine(rand_backend, slots=4), jobs)
    engine = SlotEngine(rand_backend, slots=4, static=True)
    engine.cuda_graphs = True  # (the constructor allows it on CUDA only)

    def storage():
        bufs = [engine.next_tok, engine.pos, engine.logits, *engine.self_k, *engine.cross_v]
        return [t.data_ptr() for t in bufs]

    class Graph:
        def capture_end(self, m):
            self.m, self.ptrs = m, storage()

        def replay(self):
            assert storage() == self.ptrs
            engine._static_body(self.m)

        def pool(self):
            return "pool"

    captured = []
    body = engine._static_body

    def recording_body(m):
        captured.append(m)
        body(m)

    @contextlib.contextmanager
    def graph_ctx(graph, pool=None):
        yield
        graph.capture_end(captured[-1])

    monkeypatch.setattr(engine, "_static_body", recording_body)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph_ctx)
    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    got = _run(engine, jobs)
    for key, r in expected.items():
        _assert_same(got[key], r, key)
    assert sorted(engine._graphs) == [1, 4]  # 5 windows in 4 slots: buckets 4, then 1
    assert engine._pool == "pool"


def _simulate(lengths: list[int], slots: int, bucket=lambda n: n) -> tuple[int, int]:
    """The in-flight schedule by hand: FIFO admission into free slots, one token per live
    slot per step, only live slots computed (the engine moves a window left alone in a
    high slot down). Returns (steps, rows computed)."""
    waiting, running, steps, computed = list(lengths), [], 0, 0
    while waiting or running:
        while len(running) < slots and waiting:
            running.append(waiting.pop(0))
        computed += bucket(len(running))
        steps += 1
        running = [n - 1 for n in running if n > 1]
    return steps, computed


@pytest.mark.parametrize("static", [False, True])
def test_refill_and_utilisation(rand_backend, rand_features, static):
    """Forced lengths make the schedule exact: a slot whose window ended takes the next
    waiting one at the next step; utilisation near 1 while windows wait, against a
    per-batch ``generate`` that runs every batch to its longest row."""
    b = rand_backend
    lengths = [24, 3, 3, 3, 3, 20, 4, 4, 6, 5, 3, 2, 2, 2, 3, 3]
    slots = 4
    engine = SlotEngine(b, slots=slots, static=static)
    for i, n in enumerate(lengths):
        engine.submit(i, rand_features[i % 6], DecodeOptions(tokens_per_window=n))
    order = []
    while not engine.idle:
        order.extend(k for k, _ in engine.step())
    # The short windows finish while the first long one runs: their slot was refilled.
    assert order.index(4) < order.index(0) and order.index(6) < order.index(0)
    s = engine.stats
    steps, computed = _simulate(lengths, slots, engine._bucket if static else (lambda n: n))
    # Multilingual: at admission <|startoftranscript|> alone (detection), then the
    # three-token prompt in one pass, whose last logits pick the window's first token; the
    # window's row in its first step is computed (at the scratch position) but not used.
    admission, first = 4 * len(lengths), len(lengths)
    assert s["steps"] == steps
    assert s["tokens"] == sum(lengths) == s["row_steps_used"] - admission + first
    assert s["row_steps_computed"] - admission == computed
    utilisation = sum(lengths) / computed  # step rows that held a window / rows computed
    batches = [lengths[i : i + slots] for i in range(0, len(lengths), slots)]
    per_batch = sum(lengths) / sum(len(b) * max(b) for b in batches)
    assert utilisation >= 0.9 > per_batch, (utilisation, per_batch)
    assert (utilisation == 1.0) == (not static)  # eager: only live slots are computed


def test_cancel_drops_only_that_jobs_windows(rand_backend, rand_features):
    b = rand_backend
    opts = DecodeOptions(tokens_per_window=10)
    jobs = [(("a" if i % 2 else "b", i), rand_features[i], opts, {}) for i in range(6)]
    full = _run(SlotEngine(b, slots=2), jobs)
    engine = SlotEngine(b, slots=2)
    for key, f, o, kw in jobs:
        engine.submit(key, f, o, **kw)
    out = []
    for _ in range(3):  # job "a" has a window running and two waiting
        out.extend(engine.step())
    engine.cancel(lambda key: key[0] == "a")
    out.extend(engine.run())
    assert engine.idle
    got = dict(out)
    assert sorted(got) == sorted(k for k, *_ in jobs if k[0] == "b")
    for key, r in got.items():
        _assert_same(r, full[key], key)


def test_submit_validates(rand_backend, tiny_en, rand_features):
    engine = SlotEngine(rand_backend, slots=1)
    with pytest.raises(ValueError, match="features"):
        engine.submit(0, torch.zeros(80, 100), DecodeOptions())
    with pytest.raises(ValueError, match="language"):
        engine.submit(0, rand_features[0], DecodeOptions(language="xx"))
    with pytest.raises(ValueError, match="English-only"):
        SlotEngine(tiny_en, slots=1).submit(0, rand_features[0], DecodeOptions(task="translate"))
    assert engine.idle and engine.step() == [] and engine.run() == []
    with pytest.raises(ValueError):
        SlotEngine(rand_backend, slots=1, cuda_graphs=True)

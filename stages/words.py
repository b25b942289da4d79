"""Word timestamps (issue 11): OpenAI's alignment of a window's text to its audio.

The method (openai/whisper ``timing.py``), as plain functions tested alone:

1. A teacher-forced decoder pass over ``sot sequence + <|notimestamps|> + the window's text
   tokens + <|endoftext|>`` (``teacher_forced``) gives, for the model's *alignment heads*
   (``generation_config.alignment_heads``: cross-attention heads whose attention follows the
   speech), the attention logits of every token over the 1500 encoder positions (20 ms
   each), and the probability of every text token.
2. ``alignment_matrix``: logits cut to the window's real audio, softmax over those frames,
   each head normalised over tokens (mean 0, std 1), a median filter of width 7 along time,
   the mean over heads.
3. ``dtw`` on the negated matrix: a monotonic path from the first token and frame to the
   last; the frame where the path first reaches a token is that token's time.
4. ``split_words``: tokens into words (at spaces; at unicode character boundaries for
   languages written without spaces), ``merge_punctuations`` into their neighbours,
   ``clamp_long_words`` (OpenAI's duration heuristics), ``assign_words`` back to the
   segments the tokens came from.

Times here are seconds from the window's start (like a WindowResult's segment times).
``stages.engine.SlotEngine`` runs step 1 for all windows that finish at a step in one
batch, from the cross-attention keys and values its slots already hold (no re-encode).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.types import Segment, Word

TOKENS_PER_SECOND = 50  # encoder positions per second: 1500 over a 30 s window
MEDFILT_WIDTH = 7
# Languages written without spaces: words are split at unicode character boundaries.
SPACELESS = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"


@dataclass
class WordTiming:
    """A word while it is being aligned (mutable: punctuation merges into neighbours)."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


# ----------------------------------------------------------------------------- DTW


def dtw_batch(costs: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Dynamic time warping of several cost matrices at once.

    costs: (B, N, M) float, padded; shapes: each matrix's own (n, m) (its top-left corner).
    Returns per matrix (token indices, frame indices) of the cheapest monotonic path from
    (0, 0) to (n-1, m-1), each step moving down, right or diagonally; the same path as
    openai/whisper's ``dtw_cpu`` (and transformers' ``_dynamic_time_warping``) on real-valued
    costs (tests/test_words.py). Only an exact tie between the diagonal and the vertical
    predecessor differs: those take the horizontal one even when it costs more, here the
    cheaper one is taken (attention weights never tie exactly).

    Why not transformers' ``_dynamic_time_warping``: it is a Python double loop over every
    cell, ~0.2 s for one window's 100 tokens x 1500 frames on these CPUs, paid per window.
    Here one token row is computed for every matrix at once with numpy: along a row the
    recurrence ``c[j] = x[j] + min(a[j], c[j-1])`` (``a``: the cheaper of the two cells
    above) unrolls to ``c = S + cummin(a - S + x)`` with ``S = cumsum(x)``, so the loop
    runs over tokens only. Cells a matrix's path can use lie in its own top-left corner,
    so padding never changes a result.
    """
    costs = np.asarray(costs, dtype=np.float64)
    b, n, m = costs.shape
    cost = np.full((b, n + 1, m + 1), np.inf)
    cost[:, 0, 0] = 0.0
    trace = np.full((b, n + 1, m + 1), 2, dtype=np.int8)
    for i in range(1, n + 1):
        c0, c1 = cost[:, i - 1, :-1], cost[:, i - 1, 1:]  # (i-1, j-1), (i-1, j) for j = 1..m
        x = costs[:, i - 1]
        s = np.cumsum(x, axis=1)
        with np.errstate(invalid="ignore"):
            cost[:, i, 1:] = s + np.minimum.accumulate(np.minimum(c0, c1) - (s - x), axis=1)
        c2 = cost[:, i, :-1]  # (i, j-1)
        # openai's order: diagonal if strictly cheapest, vertical if strictly cheapest, else
        # horizontal; but a diagonal tied with the vertical below the horizontal is diagonal.
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        trace[:, i, 1:] = np.where((t == 2) & (c0 == c1) & (c0 < c2), 0, t)
    return [_backtrace(trace[k], nk, mk) for k, (nk, mk) in enumerate(shapes)]


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``dtw_batch`` of one (N, M) matrix."""
    cost = np.asarray(cost)
    return dtw_batch(cost[None], [cost.shape])[0]


def _backtrace(trace: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = 2 if i == 0 else 1 if j == 0 else trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    out = np.array(path[::-1], dtype=np.int64).reshape(-1, 2)
    return out[:, 0], out[:, 1]


# ------------------------------------------------------------------ attention -> matrix


def alignment_matrix(qk: torch.Tensor, frames: int, medfilt_width: int = MEDFILT_WIDTH,
                     rows: slice | None = None) -> np.ndarray:  # fmt: skip
    """One window's alignment-head attention logits -> the matrix DTW follows.

    qk: (heads, L, >= frames) attention logits (q·k, already scaled) of the window's L
    tokens (no padding rows); frames: encoder positions of its real audio (mel frames // 2).
    Returns (L, frames) float64 (``rows`` of it when given): softmax over the real frames,
    each head normalised over all L tokens, median-filtered along time, averaged over heads.
    """
    w = qk[..., :frames].float().softmax(dim=-1)
    std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
    w = (w - mean) / std
    if rows is not None:  # the median filter runs along time: rows are independent
        w = w[:, rows]
    return median_filter(w, medfilt_width).mean(dim=0).double().cpu().numpy()


# Devillard's median-of-7 network (13 compare-exchanges; the median ends in slot 3).
_MED7 = ((0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6), (2, 3), (3, 6), (4, 5), (1, 4), (1, 3), (3, 4))


def _med7_plan():
    """The network's exchanges with the outputs each must compute (those the median
    depends on), found backwards from slot 3."""
    needed, plan = {3}, []
    for i, j in reversed(_MED7):
        lo, hi = i in needed, j in needed
        if lo or hi:
            plan.append((i, j, lo, hi))
            needed |= {i, j}
    return plan[::-1]


_MED7_PLAN = _med7_plan()


def median_filter(x: torch.Tensor, width: int = MEDFILT_WIDTH) -> torch.Tensor:
    """Median over a sliding window of ``width`` along the last dim, edges reflected:
    exactly transformers' ``_median_filter`` (openai's CPU path). For width 7 by a
    selection network of elementwise min/max on shifted views: 3x faster on the CPU than
    the ``unfold().sort()`` it replaces (0.16 s -> 0.05 s for 8 heads x 110 tokens x 1400
    frames), which was half of a window's alignment time."""
    if width != 7 or x.shape[-1] <= width // 2:
        from transformers.models.whisper.generation_whisper import _median_filter

        return _median_filter(x, width)
    n = x.shape[-1]
    xp = F.pad(x, (3, 3), mode="reflect")
    v = [xp[..., k : k + n] for k in range(7)]
    for i, j, lo, hi in _MED7_PLAN:
        a, b = v[i], v[j]
        if lo:
            v[i] = torch.minimum(a, b)
        if hi:
            v[j] = torch.maximum(a, b)
    return v[3]


# ------------------------------------------------------------------------- words


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(tokenizer, ids: Sequence[int]) -> list[bytes]:
    """The UTF-8 bytes each text token stands for (byte-level BPE: a token may hold part
    of a character)."""
    dec = _byte_decoder()
    return [bytes(dec[c] for c in tok) for tok in tokenizer.convert_ids_to_tokens(list(ids))]


def split_on_unicode(pieces: Sequence[bytes]) -> list[tuple[str, list[int]]]:
    """Group tokens (their bytes) into the shortest runs that decode to whole characters:
    [(text, token indices)]. A run whose bytes are not valid UTF-8 at all ends where the
    decoder gives up on them (as ``errors='replace'`` would)."""
    import codecs

    out: list[tuple[str, list[int]]] = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, idx = "", []
    for k, piece in enumerate(pieces):
        text += decoder.decode(piece)
        idx.append(k)
        if not decoder.getstate()[0]:  # no bytes left waiting for the rest of a character
            out.append((text, idx))
            text, idx = "", []
    if idx:
        out.append((text + decoder.decode(b"", final=True), idx))
    return out


def split_words(pieces: Sequence[bytes], language: str | None) -> list[tuple[str, list[int]]]:
    """Tokens (their bytes) -> words [(text, token indices)], OpenAI's rule: for languages
    written without spaces every character run is a word; otherwise a word starts at a
    piece beginning with a space, and every punctuation piece is a word of its own (merged
    into its neighbour later, ``merge_punctuations``)."""
    subwords = split_on_unicode(pieces)
    if language in SPACELESS:
        return subwords
    words: list[tuple[str, list[int]]] = []
    for text, idx in subwords:
        if not words or text.startswith(" ") or text.strip() in string.punctuation:
            words.append((text, list(idx)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + idx)
    return words


def merge_punctuations(words: list[WordTiming], prepended: str = PREPEND_PUNCTUATIONS,
                       appended: str = APPEND_PUNCTUATIONS) -> None:  # fmt: skip
    """OpenAI's rule, in place: an opening mark (`` "``, `` (``) joins the word after it, a
    closing one (``.``, ``,``, ``"``) the word before it; the emptied entry keeps no text
    and no tokens (it stays in the list so token counts still add up)."""
    i, j = len(words) - 2, len(words) - 1
    while i >= 0:
        prev, nxt = words[i], words[j]
        if prev.word.startswith(" ") and prev.word.strip() in prepended:
            nxt.word, nxt.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            prev.word, prev.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):
        prev, nxt = words[i], words[j]
        if not prev.word.endswith(" ") and nxt.word in appended:
            prev.word, prev.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            nxt.word, nxt.tokens = "", []
        else:
            i = j
        j += 1


def word_timings(path: tuple[np.ndarray, np.ndarray], text_tokens: Sequence[int], probs: Sequence[float], pieces: Sequence[bytes],
                 language: str | None) -> list[WordTiming]:  # fmt: skip
    """Words with times and probabilities from one window's DTW path.

    path: ``dtw`` of ``-matrix[n_sot : n_sot + len(text_tokens) + 1]`` (an
    ``alignment_matrix``) (the rows of <|notimestamps|> and
    the text tokens: each row predicts the next token); probs: each text token's
    probability. A token's time is the frame where the path first reaches its row; a
    word runs from its first token's time to the next word's.
    """
    if not len(text_tokens):
        return []
    text_idx, time_idx = path
    jumps = np.diff(text_idx, prepend=-1).astype(bool)
    jump_times = time_idx[jumps] / TOKENS_PER_SECOND  # (n_text + 1,) seconds
    words = split_words(pieces, language)
    bounds = np.concatenate([[0], np.cumsum([len(idx) for _, idx in words])])
    out = []
    for (text, idx), a, b in zip(words, bounds[:-1], bounds[1:]):
        out.append(WordTiming(text, [text_tokens[k] for k in idx], float(jump_times[a]),
                              float(jump_times[b]), float(np.mean([probs[k] for k in idx]))))  # fmt: skip
    return out


def clamp_long_words(words: list[WordTiming]) -> float:
    """OpenAI's duration heuristic, in place: a sentence-end mark, or the word after one,
    longer than twice the median word length (at most 0.7 s) is cut to that length (DTW
    stretches words over the pause after a sentence). Returns the median length used."""
    durations = np.array([w.end - w.start for w in words])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        for i in range(1, len(words)):
            if words[i].end - words[i].start > longest:
                if words[i].word in SENTENCE_END_MARKS:
                    words[i].end = words[i].start + longest
                elif words[i - 1].word in SENTENCE_END_MARKS:
                    words[i].start = words[i].end - longest
    return median


def assign_words(segments: Sequence[Segment], seg_token_counts: Sequence[int],
                 words: list[WordTiming], median: float) -> list[Segment]:  # fmt: skip
    """Give each segment its words (by token count: the words' tokens are the segments'
    text tokens in order), with OpenAI's segment-boundary heuristics: the first words
    after a pause are no longer than twice the median, and a first (last) word reaching
    more than 0.5 s before (after) its segment's timestamp starts (ends) nearer it. The
    segments' own times are kept (they come from the model's timestamp tokens and the
    quality review judges them); ``pipeline.stitch`` keeps words inside their segment."""
    longest = median * 2
    out: list[Segment] = []
    # A window starts after a pause (stages/chunk.py cuts at pauses and starts a window
    # 0.4 s before the sound resumes): its first words get the after-a-pause clamp that
    # openai gives the first words after a silence (its last speech time runs across
    # windows). Without it the first word starts at the window's start, inside the pause:
    # 7 of 7 such words on espeak_gb_pauses, ~0.4 s early (scripts/word_timestamps_cost.py).
    k, last_speech = 0, -np.inf
    for seg, n_tok in zip(segments, seg_token_counts):
        mine: list[WordTiming] = []
        taken = 0
        while k < len(words) and taken < n_tok:
            if words[k].word:
                mine.append(replace(words[k]))
            taken += len(words[k].tokens)
            k += 1
        if mine:
            first = mine[0]
            if first.end - last_speech > median * 4 and (
                first.end - first.start > longest
                or (len(mine) > 1 and mine[1].end - first.start > longest * 2)
            ):
                if len(mine) > 1 and mine[1].end - mine[1].start > longest:
                    boundary = max(mine[1].end / 2, mine[1].end - longest)
                    first.end = mine[1].start = boundary
                first.start = max(0.0, first.end - longest)
            if seg.start < first.end and seg.start - 0.5 > first.start:
                first.start = max(0.0, min(first.end - median, seg.start))
            if seg.end > mine[-1].start and seg.end + 0.5 < mine[-1].end:
                mine[-1].end = max(mine[-1].start + median, seg.end)
                last_speech = seg.end
            else:
                last_speech = mine[-1].end
        words_out = tuple(
            Word(start=round(w.start, 3), end=round(max(w.end, w.start), 3), word=w.word,
                 probability=round(w.probability, 4))  # fmt: skip
            for w in mine
        )
        out.append(replace(seg, words=words_out))
    return out


# ------------------------------------------------------------- the decoder pass


@torch.inference_mode()
def teacher_forced(model, cross_k: Sequence[torch.Tensor], cross_v: Sequence[torch.Tensor],
                   rows: torch.Tensor, tokens: torch.Tensor, lengths: Sequence[int],
                   heads: Sequence[tuple[int, int]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """One decoder pass over whole token rows, with cross-attention keys/values computed
    before (a ``SlotEngine``'s slots: nothing is encoded again).

    model: a transformers ``WhisperForConditionalGeneration``; cross_k/cross_v: per
    decoder layer (S, H, 1500, hd) (keys/values of ``encoder_attn``, unscaled); rows: (B,)
    long, the slots to use; tokens: (B, L) long, right-padded (a causal mask keeps padding
    out of every real position); lengths: each row's real length; heads: alignment heads
    as (layer, head).

    Returns per row: the alignment heads' cross-attention logits (heads, length, 1500)
    float32, and the probability of each next token under the text-token distribution
    (softmax over ids below <|endoftext|>, as OpenAI) (length - 1,) float32.
    """
    dec = model.model.decoder
    b, L = tokens.shape
    d = dec.embed_tokens.weight.shape[1]
    hd = cross_k[0].shape[-1]
    n_heads = d // hd
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    qk: dict[tuple[int, int], torch.Tensor] = {}

    def split(t):  # (B, L, d) -> (B, H, L, hd)
        return t.view(b, L, n_heads, hd).transpose(1, 2)

    x = dec.embed_tokens(tokens) + dec.embed_positions.weight[:L][None]
    for li, layer in enumerate(dec.layers):
        att = layer.self_attn
        h = layer.self_attn_layer_norm(x)
        q, k, v = split(att.q_proj(h) * att.scaling), split(att.k_proj(h)), split(att.v_proj(h))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
        x = x + att.out_proj(o.transpose(1, 2).reshape(b, L, d))

        att = layer.encoder_attn
        h = layer.encoder_attn_layer_norm(x)
        q = split(att.q_proj(h) * att.scaling)
        ck, cv = cross_k[li][rows], cross_v[li][rows]
        if li in by_layer:
            hs = by_layer[li]
            logits = q[:, hs] @ ck[:, hs].transpose(-1, -2)  # (B, h, L, 1500)
            for j, hh in enumerate(hs):
                qk[(li, hh)] = logits[:, j]
        o = F.scaled_dot_product_attention(q, ck, cv, scale=1.0)
        x = x + att.out_proj(o.transpose(1, 2).reshape(b, L, d))

        h = layer.final_layer_norm(x)
        x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
    x = dec.layer_norm(x)
    eot = model.generation_config.eos_token_id
    eot = eot if isinstance(eot, int) else eot[0]
    attn = torch.stack([qk[(int(l), int(h))] for l, h in heads], dim=1).float()  # (B, heads, L, 1500)
    weights, probs = [], []
    for r, n in enumerate(lengths):  # the vocabulary projection per row: (L, V) at a time
        logits = model.proj_out(x[r, : n - 1]).float()[:, :eot]
        p = logits.softmax(dim=-1)
        nxt = tokens[r, 1:n].clamp(max=eot - 1)  # the last (<|endoftext|>) is not read
        probs.append(p.gather(1, nxt[:, None])[:, 0])
        weights.append(attn[r, :, :n])
    return weights, probs


# ------------------------------------------------------------------ one window


@dataclass
class AlignInput:
    """What aligning one window needs besides the model pass."""

    segments: tuple  # the window's Segments, as decoded
    seg_tokens: list  # each segment's text token ids (stages.infer.WhisperBackend._split)
    sot_sequence: list  # <|startoftranscript|> [<|lang|> <|task|>]
    frames: int  # mel frames of real audio in the window (<= 3000)
    language: str | None
    sound_start: float | None = None  # seconds to the window's first sound, if measured


def first_sound(sound) -> float | None:
    """Seconds to the first loud 50 ms frame of a window, from the end-of-text veto's
    sound profile ``(valid_s, cum)`` (``stages.levels.sound_profile``), or None."""
    if sound is None:
        return None
    steps = np.flatnonzero(np.diff(np.asarray(sound[1])) > 0)
    return float(steps[0]) * 0.05 if len(steps) else None


def start_at_sound(words: list[WordTiming], sound_start: float | None, slack: float = 0.05) -> None:
    """In place: the window's first word starts no earlier than its first sound.

    Not OpenAI's: the DTW path starts at frame 0, so a window's first word always starts
    at the window's start, and ours start 0.4 s before the sound (stages/chunk.py keeps
    that lead-in). OpenAI's after-a-pause clamp (``assign_words``) catches long first
    words only: on espeak_gb_pauses 4 of the 7 first words after the long silences still
    began 0.35-0.4 s inside them. ``slack``: a loud frame can lag a soft onset."""
    first = next((w for w in words if w.word), None)
    if first is not None and sound_start is not None and first.start < sound_start - slack < first.end:
        first.start = sound_start - slack


def alignment_tokens(inp: AlignInput, no_timestamps: int, eot: int) -> list[int]:
    """sot sequence + <|notimestamps|> + every segment's text tokens + <|endoftext|>."""
    return [*inp.sot_sequence, no_timestamps, *(t for ids in inp.seg_tokens for t in ids), eot]


def align_windows(model, tokenizer, cross_k, cross_v, rows: torch.Tensor, inputs: Sequence[AlignInput],
                  heads, no_timestamps: int, eot: int) -> list[tuple]:  # fmt: skip
    """Word timestamps for several windows in ONE teacher-forced pass (padded rows) and one
    batched DTW. rows: (B,) the slots holding the windows' cross K/V. Returns per window
    its segments with words (window seconds)."""
    seqs = [alignment_tokens(inp, no_timestamps, eot) for inp in inputs]
    lengths = [len(s) for s in seqs]
    device = cross_k[0].device
    tokens = torch.full((len(seqs), max(lengths)), eot, dtype=torch.long, device=device)
    for r, s in enumerate(seqs):
        tokens[r, : len(s)] = torch.tensor(s, device=device)
    weights, probs = teacher_forced(model, cross_k, cross_v, rows, tokens, lengths, heads)

    mats, shapes = [], []
    for inp, w in zip(inputs, weights):
        n_sot, n_text = len(inp.sot_sequence), sum(len(ids) for ids in inp.seg_tokens)
        frames = max(1, min(inp.frames, 2 * w.shape[-1]) // 2)
        m = alignment_matrix(w, frames, rows=slice(n_sot, n_sot + n_text + 1))
        mats.append(-m)
        shapes.append(m.shape)
    n_max, m_max = max(s[0] for s in shapes), max(s[1] for s in shapes)
    padded = np.zeros((len(mats), n_max, m_max))
    for k, m in enumerate(mats):
        padded[k, : m.shape[0], : m.shape[1]] = m
    paths = dtw_batch(padded, shapes)

    out = []
    for inp, p, path in zip(inputs, probs, paths):
        n_sot = len(inp.sot_sequence)
        text = [t for ids in inp.seg_tokens for t in ids]
        token_probs = p[n_sot : n_sot + len(text)].tolist()  # row n_sot predicts the first text token
        words = word_timings(path, text, token_probs, token_bytes(tokenizer, text), inp.language)
        median = clamp_long_words(words)
        merge_punctuations(words)
        start_at_sound(words, inp.sound_start)
        out.append(tuple(assign_words(inp.segments, [len(ids) for ids in inp.seg_tokens], words, median)))
    return out

"""A decode loop of our own: greedy Whisper decoding in decoder slots with in-flight batching
(issue 9, parts 1 and 2).

``WhisperBackend.transcribe`` runs ``generate`` once per batch: the batch runs until its
longest window ends, so windows that ended early (silence, a short utterance, a re-decode)
burn decoder steps as padding, and every step pays ``generate``'s Python overhead. Here a
fixed number of slots each hold one window; one decoder step advances every live slot; a
slot whose window ended is given the next waiting window before the next step.

Per slot (index ``s`` in every buffer):

- cross-attention keys/values, per layer (S, H, 1500, hd), computed once when the window
  is admitted (the encoder runs in its own batches, of up to ``encoder_batch`` windows);
- a self-attention KV cache preallocated to ``max_target_positions`` (448) positions,
  per layer (S, H, 448, hd); the slot's position; its generated tokens (S, 448);
- its rule state (``stages.rules``).

The decoder step is written here from the model's own modules (embeddings, layer norms,
projections, ``proj_out``), with ``scaled_dot_product_attention``. Slots sit at different
positions: in the eager step each slot's self-attention reads exactly its own positions
(slots at one position together), as ``generate`` does, so that 16-bit rounding is the
same too (``_decode``); the static step masks what a slot has not reached. Its output is
what ``generate`` computes for the same window, token for token (tests/test_engine.py
checks it on real weights).

The prompt is the one ``generate`` uses: ``<|startoftranscript|>`` for English-only models;
``<|startoftranscript|> <|lang|> <|task|>`` for multilingual ones. Admission runs the first
step (``<|startoftranscript|>`` alone, as ``WhisperBackend._first_step``) for no-speech and
language detection; for English-only models that step *is* the slot's first decoder step,
so the no-speech probability is read from it instead of running it twice.

A prompt of more than one token goes through the decoder in one pass, as ``generate``'s
first forward runs it (``_prefill``), and the logits at its last position pick the window's
first token. Fed piece by piece (the language token, then the task token in the step),
the values are the same in exact arithmetic but round differently: in bfloat16, 6 of 21
windows of a reading then decoded to other tokens than ``generate`` with multilingual base,
and none in one pass (``scripts/engine_equality.py``). Such a window rides in its first
step at a scratch position (the cache's last, written before any step reads it) and its
logits there are replaced by the prefill's (``_Slot.first_logits``).

A job's ``prompt`` (issue 11) puts previous text before that: ``<|startofprev|>`` and up to
223 prompt tokens (``WhisperBackend.prompt_ids``), exactly the decoder input of
``generate(prompt_ids=...)``. Slots then hold prompts of different lengths (each slot has
its own position anyway): admission writes a window's prompt into its cache in one pass
(``_prefill``, rows of different lengths padded, the padding masked until overwritten).
The language is still detected from ``<|startoftranscript|>`` alone (as generate's
``detect_language``); the no-speech probability is read at ``<|startoftranscript|>`` after
the previous text (openai/whisper's ``probs_at_sot``), as ``WhisperBackend._first_step``.

Static shapes (part 2): with ``static=True`` (the default on CUDA) the step reads its inputs
from preallocated buffers (tokens, positions), attends over all 448 cache positions under
the mask, and writes its logits into a preallocated buffer; slots run in prefixes rounded
up to a power of two, so on CUDA one graph per prefix size is captured
(``torch.cuda.CUDAGraph``) and replayed. On CPU ``static=True`` runs the same body eagerly
(tests cover its logic); the default on CPU is ``static=False``, where each slot attends
over its own positions only (faster there, and generate's rounding in 16 bits).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import torch
import torch.nn.functional as F

from pipeline.constants import N_FRAMES
from pipeline.types import DecodeOptions, WindowResult
from stages.infer import WhisperBackend
from stages.rules import SlotRules, SlotSampler

logger = logging.getLogger(__name__)


@dataclass
class _Window:
    key: Hashable
    features: torch.Tensor  # (n_mels, 3000)
    options: DecodeOptions
    temperature: float
    seed: int
    sound: Any
    prev: list[int]  # previous-text tokens (a prompt: <|startofprev|> ...), [] for none
    valid_frames: int = N_FRAMES  # mel frames of real audio (word timestamps cut there)


@dataclass
class _Slot:
    """Host-side bookkeeping of a running window."""

    window: _Window
    prompt: list[int]
    pos: int  # position of the token the next step feeds
    no_speech: float | None = None  # None: read from the slot's first step (English-only)
    fresh: bool = False  # English-only: the next step is the first step
    # (V,) float32: the logits of the prompt's last position, from the one-pass prefill;
    # the first step uses these instead of its own for this slot (then None)
    first_logits: torch.Tensor | None = None
    # Language detection at admission (multilingual models): WindowResult.language_probs
    language_probs: tuple | None = None


# The encoder's batch on a CPU, when not given: per window, tiny.en's encoder took 232-300
# ms in batches of 1-4 and 303-385 ms in batches of 16-32 (2 cores, best of 4 interleaved
# runs, 2026-11-29), probably because a few windows' activations (1500 positions each)
# still fit in cache. On CUDA the encoder batch is the slot count (bigger is better).
CPU_ENCODER_BATCH = 2


class SlotEngine:
    """Greedy decoding of 30 s windows in a fixed number of decoder slots with in-flight batching.

    ``stats`` (cumulative): ``slots``; ``steps`` (decoder steps); ``row_steps_used`` (slot
    rows that carried a window: one per generated token, plus the prompt positions run at
    admission for multilingual models); ``row_steps_computed`` (rows run through the
    decoder, empty ones included: the live prefix, or its power-of-two bucket when static);
    ``encoder_s`` (encoder and cross-attention K/V) and ``decoder_s`` (admission's first
    steps and every step, rules included), wall seconds; ``tokens`` and ``windows``
    finished; ``moves`` (windows moved down to a lower slot, see ``_compact``);
    ``align_s`` and ``aligned``: wall seconds of word alignment and windows aligned.
    """

    def __init__(
        self,
        backend: WhisperBackend,
        slots: int = 8,
        encoder_batch: int | None = None,
        *,
        static: bool | None = None,
        cuda_graphs: bool | None = None,
    ):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.backend = backend
        self.model = backend.model
        self.decoder = backend.model.model.decoder
        cfg = backend.model.config
        self.device = torch.device(backend.device)
        self.dtype = backend._torch_dtype
        self.slots = slots
        if encoder_batch is None:
            encoder_batch = min(slots, CPU_ENCODER_BATCH) if self.device.type == "cpu" else slots
        self.encoder_batch = encoder_batch
        self.static = (self.device.type == "cuda") if static is None else static
        if cuda_graphs is None:
            cuda_graphs = self.static and self.device.type == "cuda"
        self.cuda_graphs = cuda_graphs
        if self.cuda_graphs and not (self.static and self.device.type == "cuda"):
            raise ValueError("cuda_graphs needs static=True on a CUDA device")
        self.max_pos = cfg.max_target_positions
        self.heads = cfg.decoder_attention_heads
        self.head_dim = cfg.d_model // self.heads
        n_layers, ctx = cfg.decoder_layers, cfg.max_source_positions
        shape = lambda n: (slots, self.heads, n, self.head_dim)  # noqa: E731

        def buf(n):  # one (S, H, n, hd) tensor per layer
            return [torch.zeros(shape(n), dtype=self.dtype, device=self.device) for _ in range(n_layers)]

        self.self_k, self.self_v = buf(self.max_pos), buf(self.max_pos)
        self.cross_k, self.cross_v = buf(ctx), buf(ctx)
        long = lambda: torch.zeros(slots, dtype=torch.long, device=self.device)  # noqa: E731
        self.next_tok, self.pos, self.max_new = long(), long(), long()  # static inputs
        self.generated = torch.zeros((slots, self.max_pos), dtype=torch.long, device=self.device)
        self.live = torch.zeros(slots, dtype=torch.bool, device=self.device)
        self.no_speech = torch.zeros(slots, dtype=torch.float32, device=self.device)
        self.logits = torch.zeros((slots, cfg.vocab_size), dtype=torch.float32, device=self.device)
        self.rules = SlotRules.for_backend(backend, slots)
        self.sampler = SlotSampler(slots, backend.eot, backend.timestamp_begin, device=self.device)
        self._arange = torch.arange(slots, device=self.device)
        self._kv_cols = torch.arange(self.max_pos, device=self.device)
        self._graphs: dict[int, Any] = {}
        self._pool = None

        gc = backend.model.generation_config
        self.sot = gc.decoder_start_token_id
        self._lang_to_id = dict(getattr(gc, "lang_to_id", None) or {})
        self._task_to_id = dict(getattr(gc, "task_to_id", None) or {})
        self._lang_ids = torch.tensor(backend._lang_ids, dtype=torch.long, device=self.device)
        # Cross-attention heads that follow the speech, [(layer, head)] (word timestamps).
        self._alignment_heads = [tuple(h) for h in (getattr(gc, "alignment_heads", None) or [])]

        self._waiting: deque[_Window] = deque()
        self._running: list[_Slot | None] = [None] * slots
        self.stats: dict[str, float] = dict(
            slots=slots, steps=0, row_steps_used=0, row_steps_computed=0,
            encoder_s=0.0, decoder_s=0.0, tokens=0, windows=0, moves=0, align_s=0.0, aligned=0,
        )  # fmt: skip

    # ------------------------------------------------------------------ public API

    def submit(self, key, features: torch.Tensor, options: DecodeOptions, *, temperature: float | None = None,
               seed: int = 0, sound=None, valid_frames: int | None = None) -> None:  # fmt: skip
        """Queue one window (features from backend.prepare). key: any hashable, returned with the result.
        temperature/seed/sound mean exactly what transcribe()'s per-row temperatures/seeds/sound mean
        (temperature None: ``options.temperature``). ``options.prompt`` is decoded before the
        window as previous text (``backend.prompt_ids``), as ``generate(prompt_ids=...)`` does.
        valid_frames: mel frames (10 ms) of real audio before the window's padding (None: all
        3000); word timestamps (``options.word_timestamps``) align the text to these only."""
        if tuple(features.shape) != (self.backend.n_mels, N_FRAMES):
            want = (self.backend.n_mels, N_FRAMES)
            raise ValueError(f"expected features {want}, got {tuple(features.shape)}")
        self.backend.generate_kwargs(options)  # the same validation as transcribe's
        if options.language is not None and self.backend.multilingual:
            self._language_token(options.language)
        if options.word_timestamps and not self._alignment_heads:
            raise ValueError(f"{self.backend.model_id} has no alignment heads: it cannot give word timestamps")
        frames = N_FRAMES if valid_frames is None else int(valid_frames)
        if not 0 <= frames <= N_FRAMES:
            raise ValueError(f"valid_frames must be from 0 to {N_FRAMES}, not {valid_frames!r}")
        if temperature is None:
            temperature = options.temperature
        prev = self.backend.prompt_ids(options)
        self._waiting.append(_Window(key, features, options, float(temperature), int(seed), sound, prev, frames))

    @property
    def idle(self) -> bool:
        return not self._waiting and all(s is None for s in self._running)

    @property
    def waiting(self) -> int:
        """Windows submitted and not yet in a slot."""
        return len(self._waiting)

    @property
    def free_slots(self) -> int:
        return sum(s is None for s in self._running)

    def cancel(self, predicate: Callable[[Any], bool]) -> None:
        """Drop waiting and running windows whose key matches (a cancelled job)."""
        self._waiting = deque(w for w in self._waiting if not predicate(w.key))
        for s, slot in enumerate(self._running):
            if slot is not None and predicate(slot.window.key):
                self._free(s)

    def run(self) -> list[tuple[Any, WindowResult]]:
        """Step until nothing waits or runs; the results in the order they finished."""
        out = []
        while not self.idle:
            out.extend(self.step())
        return out

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, WindowResult]]:
        """Admit waiting windows into free slots, then ONE decoder step for every live slot;
        returns the windows that finished at this step (end-of-text or token limit)."""
        self._admit()
        self._compact()
        live_idx = [s for s, slot in enumerate(self._running) if slot is not None]
        if not live_idx:
            return []
        t0 = time.perf_counter()
        m = live_idx[-1] + 1
        # Slots whose first logits came from their prompt's prefill: their row in this
        # step is computed at the scratch position and thrown away.
        prefilled = [s for s in live_idx if self._running[s].first_logits is not None]
        scratch = self.max_pos - 1
        if self.static:
            m = self._bucket(m)
            if prefilled:
                at = torch.tensor(prefilled, device=self.device)
                real_pos = self.pos[at].clone()
                self.pos[at] = scratch
            logits = self._static_step(m)
            if prefilled:
                self.pos[at] = real_pos
        else:
            # Slots 0..m-1 are all live (``_compact``): each attends over its own positions.
            # (A prefilled slot's row writes at the scratch position and attends over its
            # prompt: what it computes is not used, only its shape joins the others'.)
            pos = self.pos[:m]
            lens = [self._running[s].pos + 1 for s in range(m)]
            if prefilled:
                pos = pos.clone()
                pos[prefilled] = scratch
            logits = self._forward(m, self.next_tok[:m], pos, max(lens), lens)
        if prefilled:
            logits[prefilled] = torch.stack([self._running[s].first_logits for s in prefilled])
            for s in prefilled:
                self._running[s].first_logits = None
        fresh = [s for s in live_idx if self._running[s].fresh]
        if fresh:  # English-only: this step is the first step (<|startoftranscript|> at 0)
            idx = torch.tensor(fresh, device=self.device)
            self.no_speech[idx] = logits[idx].softmax(dim=-1)[:, self.backend.no_speech_id]
            self.sampler.heard(idx, self.no_speech[idx])  # before the sampler's veto below
        live = self.live[:m]
        scores = self.rules(logits)
        picked = self.sampler(scores, live, self.rules)
        n = self.rules.n[:m]
        self.generated[self._arange[:m], n.clamp(max=self.max_pos - 1)] = picked
        self.rules.advance(picked, live)
        done = live & ((picked == self.backend.eot) | (self.rules.n[:m] >= self.max_new[:m]))
        self.next_tok[:m] = picked
        self.pos[:m] += live.long()
        done_rows = done.nonzero().squeeze(1).tolist()  # the one device->host copy per step
        for s in live_idx:
            self._running[s].pos += 1
            self._running[s].fresh = False
        results = self._finish(done_rows)
        self.stats["steps"] += 1
        self.stats["row_steps_used"] += len(live_idx) - len(prefilled)
        self.stats["row_steps_computed"] += m
        self.stats["decoder_s"] += time.perf_counter() - t0
        return results

    # ------------------------------------------------------------------ admission

    def _language_token(self, language: str) -> int:
        """The token ``generate`` puts in the prompt for ``language`` (a code, or a name)."""
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        code = TO_LANGUAGE_CODE.get(language.lower(), language.lower())
        tok = self._lang_to_id.get(f"<|{code}|>")
        if tok is None:
            raise ValueError(f"unsupported language {language!r}")
        return tok

    def _admit(self) -> None:
        free = [s for s, slot in enumerate(self._running) if slot is None]
        take = min(len(free), len(self._waiting))
        if not take:
            return
        windows = [self._waiting.popleft() for _ in range(take)]
        rows = free[:take]
        t0 = time.perf_counter()
        for i in range(0, take, self.encoder_batch):  # the encoder, in its own batches
            chunk = windows[i : i + self.encoder_batch]
            feats = torch.stack([w.features for w in chunk]).to(self.device, self.dtype)
            enc = self.model.get_encoder()(feats).last_hidden_state  # (b, 1500, d)
            idx = torch.tensor(rows[i : i + len(chunk)], device=self.device)
            b = enc.shape[0]
            for layer, ck, cv in zip(self.decoder.layers, self.cross_k, self.cross_v):
                att = layer.encoder_attn
                ck[idx] = att.k_proj(enc).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
                cv[idx] = att.v_proj(enc).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        self.stats["encoder_s"] += t1 - t0

        idx = torch.tensor(rows, device=self.device)
        prevs = [w.prev for w in windows]
        if self.backend.multilingual:
            # First step: <|startoftranscript|> alone at 0 -> no-speech, language (generate's
            # detect_language reads it there, prompt or not).
            sot = torch.full((take,), self.sot, dtype=torch.long, device=self.device)
            zeros = torch.zeros(take, dtype=torch.long, device=self.device)
            logits = self._forward(idx, sot, zeros, 1)
            no_speech = logits.softmax(dim=-1)[:, self.backend.no_speech_id].tolist()
            detected = self._lang_ids[logits[:, self._lang_ids].argmax(dim=-1)].tolist()
            lang_probs = self.backend.language_probs(logits[:, self._lang_ids])
            langs = [
                self._language_token(w.options.language) if w.options.language else detected[i]
                for i, w in enumerate(windows)
            ]
            starts = [self._task_to_id[w.options.task] for w in windows]
            prompts = [prev + [self.sot, lang, task] for prev, lang, task in zip(prevs, langs, starts)]
        else:
            no_speech = [None] * take
            lang_probs = [None] * take
            prompts = [prev + [self.sot] for prev in prevs]
        # The whole prompt in one pass from 0 (see the module docstring), where it is more
        # than <|startoftranscript|>; with previous text, no-speech is read at
        # <|startoftranscript|> after it. English-only without previous text: the step
        # feeds <|startoftranscript|> (no-speech read from that step, ``fresh``).
        feeds = [(0, pr if len(pr) > 1 else []) for pr in prompts]
        at_sot, first_logits = self._prefill(idx, feeds, [len(prev) if prev else -1 for prev in prevs])
        for i, prev in enumerate(prevs):
            if prev:
                no_speech[i] = at_sot[i]
        used = sum(len(f) for _, f in feeds) + (take if self.backend.multilingual else 0)
        self.stats["row_steps_used"] += used
        self.stats["row_steps_computed"] += used
        self.stats["decoder_s"] += time.perf_counter() - t1

        lens = [len(pr) for pr in prompts]
        self.next_tok[idx] = torch.tensor([pr[-1] for pr in prompts], device=self.device)
        self.pos[idx] = torch.tensor(lens, device=self.device) - 1
        limits = [self.backend.token_limits(w.options, n) for w, n in zip(windows, lens)]
        self.max_new[idx] = torch.tensor([hi for _, hi in limits], device=self.device)
        self.rules.reset(idx, torch.tensor([lo for lo, _ in limits], device=self.device))
        self.live[idx] = True
        for s, w, prompt, ns, first, lp in zip(rows, windows, prompts, no_speech, first_logits, lang_probs):
            self.sampler.reset(s, w.temperature, w.seed, w.sound, no_speech=ns)
            self._running[s] = _Slot(w, prompt, pos=len(prompt) - 1, no_speech=ns, fresh=ns is None,
                                     first_logits=first,
                                     language_probs=None if w.options.language else lp)  # fmt: skip

    def _prefill(self, idx: torch.Tensor, feeds: list[tuple[int, list[int]]], read: list[int]) -> tuple[list, list]:
        """Prompt tokens into the self-attention caches of slots ``idx`` (n,), all rows in
        one pass: row i feeds ``feeds[i] = (start, tokens)`` at positions start, start+1, ...
        (rows differ in length: shorter ones are padded, and the padding's K/V land beyond
        the row's prompt, where the mask hides them until the step overwrites them).
        Returns per row the no-speech probability at index ``read[i]`` of its tokens (None
        where ``read[i]`` is -1) and the logits (V,) float32 at its last token (None for a
        row with no tokens)."""
        out: list = [None] * len(feeds)
        last: list = [None] * len(feeds)
        keep = [i for i, (_, toks) in enumerate(feeds) if toks]
        if not keep:
            return out, last
        idx = idx[torch.tensor(keep, device=idx.device)]
        feeds, read = [feeds[i] for i in keep], [read[i] for i in keep]
        n, width = len(feeds), max(len(t) for _, t in feeds)
        tokens = torch.full((n, width), self.sot, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        for i, (start, toks) in enumerate(feeds):
            tokens[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            pos[i] = start + torch.arange(width)
        pos.clamp_(max=self.max_pos - 1)
        tokens, pos = tokens.to(self.device), pos.to(self.device)
        hidden = self._decode(idx, tokens, pos, int(pos.max()) + 1)  # (n, width, d)
        ends = hidden[torch.arange(n), torch.tensor([len(t) - 1 for _, t in feeds])]  # (n, d)
        for i, row in enumerate(self.model.proj_out(ends).float()):
            last[keep[i]] = row
        rows = [i for i, r in enumerate(read) if r >= 0]
        if rows:
            at = hidden[rows, [read[i] for i in rows]]  # (k, d)
            probs = self.model.proj_out(at).float().softmax(dim=-1)[:, self.backend.no_speech_id]
            for i, p in zip(rows, probs.tolist()):
                out[keep[i]] = p
        return out, last

    def _compact(self) -> None:
        """Keep the live slots at the lowest indices. A step computes slots 0..m-1, so a
        window left running in a high slot while lower ones are empty (the last windows of
        a run, after a cancel) is moved down, its caches and state copied once, rather than
        computing the empty slots below it at every step until it ends."""
        while True:
            live = [s for s, slot in enumerate(self._running) if slot is not None]
            if not live or live[-1] < len(live):
                return
            self._move(live[-1], self._running.index(None))

    def _move(self, src: int, dst: int) -> None:
        per_slot = [*self.self_k, *self.self_v, *self.cross_k, *self.cross_v, self.next_tok,
                    self.pos, self.max_new, self.generated, self.live, self.no_speech,
                    *self.rules.state(), *self.sampler.state()]  # fmt: skip
        for t in per_slot:
            t[dst] = t[src]
        self.sampler.move(src, dst)
        self._running[dst], self._running[src] = self._running[src], None
        self.live[src] = False
        self.stats["moves"] += 1

    # ------------------------------------------------------------------ the decoder step

    def _forward(self, rows, tokens: torch.Tensor, pos: torch.Tensor, kv_len: int,
                 lens: list[int] | None = None) -> torch.Tensor:  # fmt: skip
        """One decoder position for some slots: logits (n, V) float32.

        rows: an int m (slots 0..m-1, the step) or a (n,) long tensor (admission);
        tokens, pos: (n,) long, the token fed and its position (its K/V land in the cache
        there); kv_len: cache positions attended to (positions > pos are masked);
        lens: each row's pos + 1 on the host, where known (see ``_decode``).
        """
        x = self._decode(rows, tokens[:, None], pos[:, None], kv_len, lens)
        return self.model.proj_out(x)[:, -1].float()

    def _decode(self, rows, tokens: torch.Tensor, pos: torch.Tensor, kv_len: int,
                lens: list[int] | None = None) -> torch.Tensor:  # fmt: skip
        """L decoder positions per slot: hidden states (n, L, d) after the final layer norm.

        rows as for ``_forward``; tokens, pos: (n, L) long (a row's positions may differ
        from another's: each query attends to its own slot's cache up to its position).
        Mirrors transformers' WhisperDecoder layer by layer (q scaled before SDPA, scale 1).

        ``lens`` (L = 1 only): self-attention runs over exactly each row's own positions,
        rows of one length together, with no mask, as ``generate`` attends (its rows are
        all at the same step). Attending over a longer, masked stretch gives the same
        values in exact arithmetic but rounds differently: in float32 that never flipped
        a token, in bfloat16 it flipped 6 of 21 windows of a reading
        (``scripts/engine_equality.py``); over their own positions, none. It also reads
        no masked cache. Without ``lens`` (prompts at admission; the static step, whose
        shapes must not change) the mask over ``kv_len`` positions is used.
        """
        prefix = isinstance(rows, int)
        n = rows if prefix else rows.shape[0]
        L = tokens.shape[1]
        ar = self._arange[:n] if prefix else rows
        take = (lambda t: t[:n]) if prefix else (lambda t: t[rows])  # noqa: E731
        heads, hd = self.heads, self.head_dim
        dec = self.decoder
        x = dec.embed_tokens(tokens) + dec.embed_positions.weight[pos]  # (n, L, d)
        groups = mask = None
        if lens is not None and L == 1:
            # rows of one length: (length, index of those rows: a slice where they are
            # consecutive, else a tensor), in the order of first appearance
            by_len: dict[int, list[int]] = {}
            for i, length in enumerate(lens):
                by_len.setdefault(length, []).append(i)
            groups = []
            for length, at in by_len.items():
                here = slice(at[0], at[-1] + 1) if at[-1] - at[0] + 1 == len(at) else torch.tensor(at, device=self.device)
                # the rows' slots: a slice (a view of the cache, no copy) for the step's prefix
                groups.append((length, here, here if prefix else rows[here]))
        else:
            mask = (self._kv_cols[:kv_len][None, None, :] <= pos[:, :, None])[:, None]  # (n,1,L,kv)

        def split(t):  # (n, L, d) -> (n, H, L, hd)
            return t.view(n, L, heads, hd).transpose(1, 2).contiguous()

        caches = zip(self.self_k, self.self_v, self.cross_k, self.cross_v)
        for layer, (sk, sv, ck, cv) in zip(dec.layers, caches):
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = split(att.q_proj(h) * att.scaling)
            # (n, L, H, hd) into the cache at (slot, :, position)
            sk[ar[:, None], :, pos] = att.k_proj(h).view(n, L, heads, hd)
            sv[ar[:, None], :, pos] = att.v_proj(h).view(n, L, heads, hd)
            if groups is not None:
                o = torch.empty_like(q)
                for length, at, cached in groups:
                    o[at] = F.scaled_dot_product_attention(q[at], sk[cached, :, :length],
                                                           sv[cached, :, :length], scale=1.0)  # fmt: skip
            else:
                keys, values = take(sk[:, :, :kv_len]), take(sv[:, :, :kv_len])
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
            x = x + att.out_proj(o.transpose(1, 2).reshape(n, L, -1))

            att = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            q = split(att.q_proj(h) * att.scaling)
            o = F.scaled_dot_product_attention(q, take(ck), take(cv), scale=1.0)
            x = x + att.out_proj(o.transpose(1, 2).reshape(n, L, -1))

            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        return dec.layer_norm(x)

    def _bucket(self, m: int) -> int:
        """Static prefix sizes: powers of two, capped at the slot count (one graph each)."""
        b = 1
        while b < m:
            b *= 2
        return min(b, self.slots)

    def _static_body(self, m: int) -> None:
        """The captured step: static inputs (next_tok, pos) -> static output (logits)."""
        self.logits[:m] = self._forward(m, self.next_tok[:m], self.pos[:m], self.max_pos)

    def _static_step(self, m: int) -> torch.Tensor:
        if self.cuda_graphs:
            graph = self._graphs.get(m)
            if graph is None:
                graph = self._graphs[m] = self._capture(m)
            graph.replay()
        else:
            self._static_body(m)
        return self.logits[:m].clone()  # copy-out: the buffer is rewritten next step

    def _capture(self, m: int):
        """A CUDA graph of ``_static_body(m)``. Warm-up runs write the same K/V at the same
        positions that the real step writes (same inputs), so they leave no trace."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._static_body(m)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._static_body(m)
        self._pool = graph.pool()
        logger.info("captured the decoder step for %d slots", m)
        return graph

    # ------------------------------------------------------------------ results

    def _free(self, s: int) -> None:
        self._running[s] = None
        self.live[s] = False
        self.sampler.release(s)

    def _finish(self, done_rows: list[int]) -> list[tuple[Any, WindowResult]]:
        if not done_rows:
            return []
        idx = torch.tensor(done_rows, device=self.device)
        counts = self.rules.n[idx].tolist()
        gen = self.generated[idx].tolist()
        avg = self.sampler.avg_logprob(done_rows)
        ns_dev = self.no_speech[idx].tolist()
        out = []
        align = []  # (index in out, slot, generated tokens): windows that asked for words
        for i, s in enumerate(done_rows):
            slot = self._running[s]
            w = slot.window
            row = slot.prompt + gen[i][: counts[i]]
            no_speech = slot.no_speech if slot.no_speech is not None else ns_dev[i]
            (result,) = self.backend._results(
                [row], w.options, [avg[i]], [no_speech], [w.temperature]
            )
            if slot.language_probs is not None:
                result = dataclasses.replace(result, language_probs=slot.language_probs)
            if w.options.word_timestamps and result.segments:
                align.append((len(out), s, gen[i][: counts[i]]))
            out.append((w.key, result))
            self.stats["tokens"] += counts[i]
            self.stats["windows"] += 1
        if align:  # before the slots are freed: their cross-attention K/V are still there
            self._align(out, align)
        for s in done_rows:
            self._free(s)
        return out

    def _align(self, out: list, align: list) -> None:
        """Word timestamps for the windows that finished at this step and asked for them:
        one teacher-forced pass for all of them over their slots' cross-attention K/V
        (``stages.words.align_windows``), and their segments get their words."""
        from stages.words import AlignInput, align_windows, first_sound

        t0 = time.perf_counter()
        inputs = []
        for k, s, generated in align:
            slot, result = self._running[s], out[k][1]
            # The sot sequence is the prompt from its last <|startoftranscript|> on: a
            # prompt may carry <|startofprev|> text before it, which alignment leaves out.
            p = slot.prompt
            sot_at = len(p) - 1 - p[::-1].index(self.sot)
            n = generated.index(self.backend.eot) + 1 if self.backend.eot in generated else len(generated)
            seg_tokens = [ids for *_, ids in self.backend._split(generated[:n])]
            if len(seg_tokens) != len(result.segments):  # _results cuts them the same way
                raise RuntimeError(f"word alignment: {len(seg_tokens)} token runs for {len(result.segments)} segments")
            inputs.append(AlignInput(result.segments, seg_tokens, p[sot_at:], slot.window.valid_frames,
                                     result.language, first_sound(slot.window.sound)))  # fmt: skip
        rows = torch.tensor([s for _, s, _ in align], device=self.device)
        gc = self.model.generation_config
        segments = align_windows(self.model, self.backend.tokenizer, self.cross_k, self.cross_v, rows,
                                 inputs, self._alignment_heads, gc.no_timestamps_token_id,
                                 self.backend.eot)  # fmt: skip
        for (k, _, _), segs in zip(align, segments):
            key, result = out[k]
            out[k] = (key, dataclasses.replace(result, segments=segs))
        self.stats["align_s"] += time.perf_counter() - t0
        self.stats["aligned"] += len(align)

"""Engine: requests in, text out. Continuous batching over one model and one ChunkAttention cache.

Use it synchronously (``generate``, ``stream``, or ``add_request`` + ``step``) or start its background
loop (``start``/``shutdown``) and call ``add_request``/``abort`` from any thread; each request then
streams its deltas through its own queue.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import torch

from chunkattn_core.attention import ChunkAttention
from chunkattn_core.config import EngineConfig
from chunkattn_core.sampling import SamplingParams, make_generator, sample
from chunkattn_core.scheduler import Scheduler
from chunkattn_core.sequence import RequestOutput, Sequence, StreamDelta

ROLES = ("system", "user", "assistant")
logger = logging.getLogger(__name__)


class RequestHandle:
    """A submitted request: iterate it for StreamDelta objects, or call result() for the final output."""

    def __init__(self, engine: Engine, seq: Sequence):
        self.engine, self.seq = engine, seq
        self.request_id = seq.request_id
        self.deltas: queue.Queue[StreamDelta] = queue.Queue()
        self.done = threading.Event()

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    def result(self, timeout: float | None = None) -> RequestOutput:
        """Waits for (or, without the background loop, drives the engine to) the final output."""
        while not self.done.is_set() and not self.engine.is_running:
            self.engine.step()
        if not self.done.wait(timeout):
            raise TimeoutError(f"request {self.request_id!r} did not finish within {timeout} s")
        return self.seq.output()

    def __iter__(self) -> Iterator[StreamDelta]:
        while True:
            while self.deltas.empty() and not self.engine.is_running:
                self.engine.step()
            delta = self.deltas.get()
            yield delta
            if delta.finished:
                return


class Engine:
    """Inference engine. ``loaded`` (a load_model() result) lets several engines share one model."""

    def __init__(self, config: EngineConfig, loaded=None):
        if loaded is None:
            from chunkattn_core.model_loader import load_model

            loaded = load_model(config.model, dtype=config.torch_dtype, device=config.device)
        self.config = config
        self.model, self.tokenizer, self.model_config = loaded.model, loaded.tokenizer, loaded.config
        mc = self.model_config
        kv_dtype = torch.int8 if config.kv_int8 else None
        bytes_per_chunk = ChunkAttention.chunk_bytes(
            mc.num_layers, mc.num_kv_heads, mc.head_dim, config.chunk_size, config.torch_dtype, config.kv_int8
        )
        self.attn = ChunkAttention(
            num_heads=mc.num_heads,
            num_kv_heads=mc.num_kv_heads,
            head_dim=mc.head_dim,
            chunk_size=config.chunk_size,
            max_chunks=config.num_chunks_for(bytes_per_chunk),
            dtype=config.torch_dtype,
            device=config.device,
            num_layers=mc.num_layers,
            kv_dtype=kv_dtype,
            share_prefix=config.prefix_cache,
        )
        self.max_model_len = min(config.max_model_len, mc.max_position_embeddings)
        self.scheduler = Scheduler(replace(config, max_model_len=self.max_model_len), self.attn)
        self.device = torch.device(config.device)
        self._handles: dict[str, RequestHandle] = {}  # unfinished requests
        self._inbox: list[Sequence] = []  # submitted, not yet handed to the scheduler
        self._step_lock = threading.RLock()  # held for a whole step, and by abort
        self._inbox_cond = threading.Condition()  # guards _inbox, _handles; wakes the loop
        self._seed_rng = random.Random(config.seed)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.num_steps = 0
        self.peak_kv_bytes = 0  # bytes of K and V in chunks that live sequences hold (cache excluded)

    # ---- requests ------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | None = None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        system: str | None = None,
        messages: list[dict] | None = None,
        prompt_token_ids: list[int] | None = None,
        chat: bool = True,
    ) -> RequestHandle:
        """Submits a request; thread-safe. Give exactly one of ``prompt`` (a user message, after the
        optional ``system`` message), ``messages`` ([{"role", "content"}], ``system`` put first) or
        ``prompt_token_ids`` (used as is). ``chat=False`` tokenizes ``prompt`` without the chat
        template. Raises ValueError for bad input or a request that could never fit."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        token_ids = self.tokenize(
            prompt, system=system, messages=messages, prompt_token_ids=prompt_token_ids, chat=chat
        )
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        max_tokens = min(params.max_tokens, max(self.max_model_len - len(token_ids), 1))
        generator = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else self._seed_rng.getrandbits(63)
            generator = make_generator(seed, self.device)
        seq = Sequence(request_id, token_ids, params, max_tokens, generator)
        self.scheduler.check(seq)
        handle = RequestHandle(self, seq)
        with self._inbox_cond:
            if request_id in self._handles:
                raise ValueError(f"request_id {request_id!r} is already running")
            self._handles[request_id] = handle
            self._inbox.append(seq)
            self._inbox_cond.notify_all()
        return handle

    def tokenize(
        self,
        prompt: str | None = None,
        *,
        system: str | None = None,
        messages: list[dict] | None = None,
        prompt_token_ids: list[int] | None = None,
        chat: bool = True,
    ) -> list[int]:
        """The prompt token ids add_request would run (same arguments)."""
        if sum(x is not None for x in (prompt, messages, prompt_token_ids)) != 1:
            raise ValueError("give exactly one of prompt, messages and prompt_token_ids")
        if prompt_token_ids is not None:
            if system is not None:
                raise ValueError("system cannot be combined with prompt_token_ids")
            vocab_size = self.model_config.vocab_size
            if not all(isinstance(t, int) and 0 <= t < vocab_size for t in prompt_token_ids):
                raise ValueError(f"prompt_token_ids must be integers in [0, {vocab_size})")
            return list(prompt_token_ids)
        if system is not None and not isinstance(system, str):
            raise ValueError(f"system must be a string, got {type(system).__name__}")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
            if not chat:
                return self.tokenizer.encode((system or "") + prompt, add_special_tokens=False)
            messages = [{"role": "user", "content": prompt}]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError(f"messages must be a list of {{'role': one of {ROLES}, 'content': str}}")
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def abort(self, request_id: str) -> bool:
        """Ends a request now (finish_reason "abort"): its chunks are released at once, its full
        chunks staying as evictable prefix cache. False when no such request is unfinished."""
        with self._step_lock:
            with self._inbox_cond:
                handle = self._handles.get(request_id)
                if handle is None:
                    return False
                if handle.seq in self._inbox:
                    self._inbox.remove(handle.seq)
            self.scheduler.finish(handle.seq, "abort")
            self._emit(handle.seq)
            return True

    def has_unfinished(self) -> bool:
        return bool(self._handles)

    # ---- the loop ------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Admits and prefills what fits, decodes every running sequence once. Returns the
        outputs of the requests that finished in this step. If the model raises, every running
        and queued request is aborted (its error recorded) and the exception propagates."""
        with self._step_lock:
            try:
                return self._step()
            except Exception as exc:
                self._fail_all(exc)
                raise

    def start(self) -> None:
        """Runs step() on a background thread whenever there is work, until shutdown()."""
        if self.is_running:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="chunkattn-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stops the background loop and aborts every unfinished request."""
        with self._inbox_cond:
            self._stopping = True
            self._inbox_cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for request_id in list(self._handles):
            self.abort(request_id)

    @property
    def is_running(self) -> bool:
        """Whether the background loop is on."""
        return self._thread is not None and self._thread.is_alive()

    # ---- convenience ---------------------------------------------------------------------

    def generate(self, requests: list, params: SamplingParams | None = None) -> list[RequestOutput]:
        """Runs all requests concurrently; returns their outputs in order. Each item is a prompt
        string or a dict of add_request arguments (``params`` there overrides the shared one)."""
        handles = []
        try:
            for item in requests:
                kwargs = {"prompt": item} if isinstance(item, str) else dict(item)
                kwargs.setdefault("params", params)
                handles.append(self.add_request(**kwargs))
        except Exception:
            for handle in handles:
                self.abort(handle.request_id)
            raise
        return [handle.result() for handle in handles]

    def stream(self, prompt: str | None = None, params: SamplingParams | None = None, **kwargs):
        """Iterator of StreamDelta for one request (add_request arguments); closing it early aborts."""
        handle = self.add_request(prompt, params, **kwargs)
        try:
            yield from handle
        finally:
            if not handle.finished:
                self.abort(handle.request_id)

    def stats(self) -> dict:
        """KV cache counters plus the engine's: num_waiting, num_running, peak_kv_bytes, num_steps."""
        stats = self.attn.stats()
        stats.update(
            num_waiting=len(self.scheduler.waiting) + len(self._inbox),
            num_running=len(self.scheduler.running),
            peak_kv_bytes=self.peak_kv_bytes,
            num_steps=self.num_steps,
        )
        return stats

    def reset_peak_stats(self) -> None:
        self.peak_kv_bytes = 0

    # ---- private helpers -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._inbox_cond:
                while not self._stopping and not self._inbox and not self.scheduler.has_unfinished():
                    self._inbox_cond.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:  # step() failed what was running; keep serving the rest
                logger.exception("engine step failed")

    @torch.inference_mode()
    def _step(self) -> list[RequestOutput]:
        with self._inbox_cond:
            inbox, self._inbox = self._inbox, []
        for seq in inbox:
            self.scheduler.add(seq)
        finished = []
        for seq in self.scheduler.schedule_prefills():  # in order: later ones may share earlier KV
            self._append_tokens([seq], [self._prefill(seq)], finished)
        seqs, slots = self.scheduler.schedule_decode()
        if seqs:
            token_ids = torch.tensor([s.output_token_ids[-1] for s in seqs], device=self.device)
            positions = torch.tensor([s.num_tokens - 1 for s in seqs], device=self.device)
            logits = self.model.decode(self.attn, token_ids, positions, slots.to(self.device))
            next_ids = sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
            self._append_tokens(seqs, next_ids, finished)
        stats = self.attn.stats()
        live_bytes = (stats["chunks_used"] - stats["chunks_cached"]) * self.attn.bytes_per_chunk
        self.peak_kv_bytes = max(self.peak_kv_bytes, live_bytes)
        self.num_steps += 1
        return finished

    def _fail_all(self, exc: Exception) -> None:
        for seq in [*self.scheduler.running.values(), *self.scheduler.waiting]:
            self.scheduler.finish(seq, "abort", cache=False)  # their KV may be half-written
            seq.error = f"{type(exc).__name__}: {exc}"
            self._emit(seq)

    def _prefill(self, seq: Sequence) -> int:
        """Computes the KV of seq's uncached tokens; returns the token sampled after them."""
        token_ids = seq.token_ids
        num_cached = self.attn.num_cached_tokens(seq.sid)
        start = min(num_cached, len(token_ids) - 1)  # all cached: rerun the last token for its logits
        new_ids = torch.tensor(token_ids[start:], device=self.device)
        logits = self.model.prefill(self.attn, seq.sid, new_ids, start, write_from=num_cached)
        return sample(logits.view(1, -1), [seq.params], [seq.generator])[0]

    def _append_tokens(self, seqs: list[Sequence], token_ids: list[int], finished: list) -> None:
        """Records one new token per sequence, detokenizes, checks stop conditions, emits deltas."""
        eos_token_ids = self.tokenizer.eos_token_ids
        for seq, token_id in zip(seqs, token_ids, strict=True):
            seq.output_token_ids.append(token_id)
            if seq.first_token_time is None:
                seq.first_token_time = time.monotonic()
            is_eos = token_id in eos_token_ids and not seq.params.ignore_eos
            text_ids = seq.output_token_ids[:-1] if is_eos else seq.output_token_ids
            reason = None
            if seq.set_text(self.tokenizer.decode(text_ids)) or is_eos:
                reason = "stop"
            elif len(seq.output_token_ids) >= seq.max_tokens:
                reason = "length"
            if reason is not None:
                self.scheduler.finish(seq, reason)
                finished.append(seq.output())
            self._emit(seq)

    def _emit(self, seq: Sequence) -> None:
        """Puts the text and tokens seq has not streamed yet on its handle's queue."""
        with self._inbox_cond:
            handle = self._handles.get(seq.request_id)
            if handle is None or handle.seq is not seq:
                return
            if seq.is_finished:
                del self._handles[seq.request_id]
        delta = seq.next_delta()
        if delta is not None:
            handle.deltas.put(delta)
        if seq.is_finished:
            handle.done.set()

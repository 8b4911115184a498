"""The suite's decode loop: a static KV cache, and on CUDA each decode step replayed as one CUDA graph.

Why: ``model.generate`` runs every decode step as Python over the model's eager modules, plus its logits
processors, stopping criteria and a host sync. For small models that host work is the whole step, whatever the
batch (figures: reports/published/README.md, "smollm2-gpu timed" and "The decode loop"). transformers' static cache
removes it by compiling the step with inductor, which costs tens of seconds per model and shape. This loop captures
one step (the model's forward on a static cache, the sampling, the stop check) as a CUDA graph instead: capture
costs about one eager step, and a replay is one launch.

What runs is the model's own forward: transformers' ``StaticCache`` and the model's modules, given a 4-D
boolean attention mask that the loop keeps (padding on the left; position p opened when its token is written),
position ids as ``generate`` makes them for left-padded rows (``cumsum(mask) - 1``), and logits of the last
position only. Sampling applies transformers' warpers in transformers' order, with the same arithmetic
(temperature, then top-p, then min-p; see ``processed_scores``), and draws with the Gumbel-max trick from noise
made by a generator seeded per call: the same seed gives the same answers, and the draw follows the same
distribution as ``torch.multinomial`` over the softmax. Greedy takes the argmax, as ``generate`` does.

Decode steps attend through ``grouped_decode_attention``: for grouped-query attention (Llama 3.2: 32 query heads on 8
key/value heads; SmolLM2: 9 on 3) transformers' SDPA path copies the keys and values once per query head of a group
whenever a mask is given (``repeat_kv``), which at a 1,000-token context is most of a step's memory traffic; with one
query position the query heads of a group can instead be laid out as that many query rows against their one
key/value head, so SDPA reads the cache once. Prefill (many query positions) keeps transformers' SDPA path.

Only decoder-only models whose static cache is plain full attention and whose attention is SDPA take this loop
(``unsupported_reason``); others, and 4-bit weights, go through ``model.generate``. On CPU the same step runs
eagerly (the tests use that). If capture fails on a GPU, the step runs eagerly and a warning says why.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

CACHE_ALIGN = 64
"""The static cache holds the prompt width plus the new tokens, rounded up to this (aligned mask rows)."""
STOP_CHECK_EVERY = 8
"""Decode steps between checks whether every row has stopped (each check is one host-device sync)."""
WARMUP_STEPS = 1
"""Eager steps (on a side stream) before a capture: lazy initialisations must not happen inside it."""


DECODE_ATTENTION = "tunebench_grouped_decode"
"""The name ``grouped_decode_attention`` is registered under in transformers' AttentionInterface."""


def grouped_decode_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' SDPA attention, except for one query position under grouped-query attention: query heads
    ``[b, kv_heads * groups, 1, d]`` become ``[b, kv_heads, groups, d]`` rows against ``[b, kv_heads, L, d]``
    keys and values (head ``i`` reads key/value head ``i // groups``, as ``repeat_kv`` lays them out), so the cache
    is read once instead of copied ``groups`` times. Returns ``[b, 1, heads, d]``, as transformers' functions do."""
    import torch  # heavy: torch, imported when needed
    from transformers.integrations.sdpa_attention import sdpa_attention_forward  # heavy: transformers

    b, heads, q_len, d = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or kv_heads == heads or heads % kv_heads or dropout:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    rows = query.reshape(b, kv_heads, heads // kv_heads, d)
    out = torch.nn.functional.scaled_dot_product_attention(rows, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, 1, d).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface  # heavy: transformers

    if DECODE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(DECODE_ATTENTION, grouped_decode_attention)


@contextlib.contextmanager
def _attention(config: Any, name: str) -> Iterator[None]:
    """The model's attention implementation set to ``name`` for the block (its modules read it at every call)."""
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` cannot take this loop (None when it can)."""
    from transformers.cache_utils import StaticCache, StaticLayer  # heavy: transformers

    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "generate"):
        return "not a transformers generation model"
    text = cfg.get_text_config(decoder=True)
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder model"
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return "quantized (bitsandbytes) weights"
    if getattr(text, "_attn_implementation", None) != "sdpa":
        return f"attention {getattr(text, '_attn_implementation', None)!r} (the loop's 4-D mask is SDPA's)"
    layers = StaticCache(config=cfg, max_cache_len=CACHE_ALIGN).layers
    if any(type(layer) is not StaticLayer for layer in layers):
        return "sliding-window or other non-full-attention cache layers"
    return None


def processed_scores(logits: Any, temperature: float, top_p: float | None, min_p: float | None) -> Any:
    """float32 ``logits`` [rows, vocab] after transformers' TemperatureLogitsWarper, TopPLogitsWarper and
    MinPLogitsWarper (in that order, each with min_tokens_to_keep=1): removed tokens are -inf."""
    import torch  # heavy: torch, imported when needed

    scores = logits / temperature if temperature != 1.0 else logits
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False  # the most likely token stays
        scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))
    if min_p is not None and min_p > 0.0:
        probs = torch.softmax(scores, dim=-1)
        top = probs.amax(dim=-1, keepdim=True)
        # the most likely token has probs == top >= min_p * top, so it always stays (min_tokens_to_keep=1)
        scores = scores.masked_fill(probs < min_p * top, -float("inf"))
    return scores


class StaticDecoder:
    """Decodes batches of one shape (rows x prompt width) for up to ``max_new_tokens`` tokens each.

    Buffers, the KV cache and (on CUDA) the captured step are made on the first call and reused by the next
    calls of the same shape: one capture per ``generate`` call, however many batches it has.

    Args:
        model: a decoder-only transformers model (``unsupported_reason`` is None), peft-wrapped or not.
        rows, width: batch shape; inputs are left padded to ``width``.
        max_new_tokens: tokens to generate per row (fewer when every row stopped).
        stop_ids: token ids that end a row; a stopped row gets ``pad_id`` from then on.
        pad_id: the padding id.
        temperature, top_p, min_p: sampling; temperature 0 is greedy.
        graphs: capture the step as a CUDA graph (ignored off CUDA).
        grouped: decode steps attend through ``grouped_decode_attention`` (else transformers' SDPA path).
    """

    def __init__(
        self,
        model: Any,
        rows: int,
        width: int,
        max_new_tokens: int,
        stop_ids: list[int],
        pad_id: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        min_p: float | None = None,
        graphs: bool = True,
        grouped: bool = True,
    ):
        import torch  # heavy: torch, imported when needed
        from transformers.cache_utils import StaticCache  # heavy: transformers

        self.model, self.rows, self.width, self.max_new = model, rows, width, max_new_tokens
        self.pad_id, self.greedy = pad_id, temperature == 0
        self.temperature, self.top_p, self.min_p = temperature, top_p, min_p
        self.device = next(model.parameters()).device
        self.graphs = graphs and self.device.type == "cuda"
        self.config = model.config.get_text_config(decoder=True)
        self.step_attention = DECODE_ATTENTION if grouped else self.config._attn_implementation
        if grouped:
            _register_attention()
        self.cache_len = -(-(width + max_new_tokens) // CACHE_ALIGN) * CACHE_ALIGN
        self.cache = StaticCache(config=model.config, max_cache_len=self.cache_len)
        dev = self.device
        self.stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=dev)
        self.mask = torch.zeros((rows, 1, 1, self.cache_len), dtype=torch.bool, device=dev)
        self.token = torch.zeros((rows, 1), dtype=torch.long, device=dev)
        self.position = torch.zeros((rows, 1), dtype=torch.long, device=dev)
        self.write = torch.zeros(1, dtype=torch.long, device=dev)  # cache position of the token fed next
        self.column = torch.zeros(1, dtype=torch.long, device=dev)  # its column in ``out``
        self.done = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=dev)
        self.noise: Any = None  # Exp(1) draws for the next sampled step (filled outside the graph)
        self.graph: Any = None
        self.captured = False
        self.why_eager: str | None = None if self.graphs else f"no CUDA graphs on {dev.type}"

    # ------------------------------------------------------------------ one step

    def _pick(self, logits: Any) -> Any:
        """Next token per row from float32 last-position logits."""
        if self.greedy:
            return logits.argmax(dim=-1)
        scores = processed_scores(logits, self.temperature, self.top_p, self.min_p)
        return (scores - self.noise.log()).argmax(dim=-1)  # Gumbel-max: a draw from softmax(scores)

    def _commit(self, nxt: Any) -> None:
        """Record the picked tokens and make them the next input (in place: the graph reads these buffers)."""
        import torch  # heavy: torch, imported when needed

        nxt = torch.where(self.done, self.pad_id, nxt)
        self.done |= (nxt[:, None] == self.stops[None, :]).any(dim=-1)
        self.out.index_copy_(1, self.column, nxt[:, None])
        self.token.copy_(nxt[:, None])
        self.column.add_(1)

    def _step(self) -> None:
        """Feed ``token`` at ``write``, pick the next token: the captured unit, device work only."""
        self.mask.index_fill_(3, self.write, True)
        logits = (
            self.model(
                input_ids=self.token,
                attention_mask=self.mask,
                position_ids=self.position,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        self._commit(self._pick(logits))
        self.position.add_(1)
        self.write.add_(1)

    def _draw(self, generator: Any) -> None:
        if not self.greedy:
            self.noise.exponential_(generator=generator)

    def _capture(self, generator: Any, warmup: int) -> None:
        """``warmup`` real steps on a side stream, then the capture of one step (which runs nothing); on failure
        the steps run eagerly from here on."""
        import torch  # heavy: torch, imported when needed

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._draw(generator)
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
        except Exception as e:  # an op the capture does not allow: eager steps are slower, never wrong
            self.graphs, self.why_eager = False, f"CUDA graph capture failed: {type(e).__name__}: {e}"
            log.warning("decoding eagerly: %s", self.why_eager)
            torch.cuda.synchronize()
            return
        self.graph, self.captured = graph, True

    # ------------------------------------------------------------------ one batch

    def __call__(
        self,
        input_ids: Any,
        attention_mask: Any,
        seed: int,
        stopped: Callable[[Any], Any] | None = None,
        streamer: Any = None,
    ) -> Any:
        """New tokens [rows, max_new_tokens] (``pad_id`` after a row's stop token) for left-padded inputs.

        ``stopped(new_tokens_so_far) -> bool tensor [rows]`` marks rows done for reasons of the caller's own
        (lm-eval's stop strings); it is asked every ``STOP_CHECK_EVERY`` steps, with the tokens on the host.
        ``streamer`` (one row; transformers' ``TextStreamer`` or anything with its ``put`` / ``end``) gets the
        prompt, then each token as it is made, up to and including the stop token, as ``generate`` feeds it."""
        import torch  # heavy: torch, imported when needed

        if tuple(input_ids.shape) != (self.rows, self.width):
            raise ValueError(f"batch of shape {tuple(input_ids.shape)}; this decoder takes {(self.rows, self.width)}")
        if streamer is not None and self.rows != 1:
            raise ValueError(f"a streamer takes one row; this decoder has {self.rows}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        with torch.inference_mode():
            ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
            for layer in self.cache.layers:  # the same cache serves every batch: start writing at position 0
                if layer.is_initialized:
                    layer.cumulative_length.zero_()
            position = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            logits = (
                self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position,
                    past_key_values=self.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                .logits[:, -1]
                .float()
            )
            if self.noise is None and not self.greedy:
                self.noise = torch.empty_like(logits)
            self.done.zero_()
            self.out.fill_(self.pad_id)
            self.column.zero_()
            self._draw(generator)
            self._commit(self._pick(logits))
            if streamer is not None:
                streamer.put(input_ids.cpu())
                streamer.put(self.token[:, 0].cpu())
            self.mask.zero_()
            self.mask[:, 0, 0, : self.width] = mask.bool()
            self.position.copy_(position[:, -1:] + 1)
            self.write.fill_(self.width)
            self._decode_steps(generator, stopped, streamer)
            if streamer is not None:
                streamer.end()
            return self.out.clone()

    def _decode_steps(self, generator: Any, stopped: Callable[[Any], Any] | None, streamer: Any) -> None:
        """The steps after the first token: until ``max_new`` tokens per row, or every row has stopped."""
        made = 1  # tokens per row so far
        with _attention(self.config, self.step_attention):
            while made < self.max_new:
                if streamer is not None and bool(self.done.all()):
                    return  # one row, streamed token by token: it has stopped
                if self.graphs and not self.captured:
                    n = min(WARMUP_STEPS, self.max_new - made)
                    self._capture(generator, n)  # n real steps, then the capture
                else:
                    n = 1
                    self._draw(generator)
                    if self.captured:
                        self.graph.replay()
                    else:
                        self._step()
                made += n
                if streamer is not None:  # one row: every token goes out as soon as it is made
                    streamer.put(self.out[0, made - n : made].cpu())
                    continue
                if made % STOP_CHECK_EVERY < n or made == self.max_new:
                    if stopped is not None:
                        self.done |= stopped(self.out[:, :made].cpu()).to(self.device)
                    if bool(self.done.all()):
                        return

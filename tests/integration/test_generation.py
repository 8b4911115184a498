"""Generation, the generation cache, probe runs and the chat REPL on the real packaged SmolLM2 (CPU, fp32).

Answers are kept to a few tokens: these tests pin behaviour (padding, seeding, caching, scoring), not quality.
"""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from tunebench.core.config_schema import SamplingConfig
from tunebench.evals.chat import chat
from tunebench.evals.generation import generate
from tunebench.evals.generation_cache import GenerationCache
from tunebench.evals.probes.sets import load_probe_set, run_probes, wilson

pytestmark = pytest.mark.slow  # generates with the packaged model: 7-26 s a test on 2 cores

GREEDY = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=12)
SAMPLED = SamplingConfig(name="seed", temperature=1.5, min_p=0.1, max_new_tokens=10, n_samples=2)
PROMPTS = [  # different lengths, so the batch really is left padded
    [{"role": "user", "content": "Continue the Fibonacci sequence: 1, 1, 2, 3, 5, 8,"}],
    [{"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France? Please answer in one short sentence."},
    ],
]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on 2 cores shared with other jobs, OpenMP barriers in every decode step made
    generation ~10x slower with 2 threads (measured: 1 vs 10 tokens/s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def counted_generate(smol_base, monkeypatch):
    """Counts real model.generate calls (the call goes through unchanged)."""
    calls = []
    real = smol_base.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(smol_base.model, "generate", counting)
    return calls


def test_left_padded_batch_matches_one_at_a_time(smol_base, counted_generate):
    batched = generate(smol_base, PROMPTS, GREEDY, seed=0, batch_size=len(PROMPTS), progress=False, use_cache=False)
    assert counted_generate == [3]
    for i, prompt in enumerate(PROMPTS):
        alone = generate(smol_base, [prompt], GREEDY, seed=0, batch_size=1, progress=False, use_cache=False)
        assert alone.samples[0] == batched.samples[i]
        assert alone.token_counts[0] == batched.token_counts[i]
    assert all(text for text in batched.texts)
    assert batched.new_tokens == sum(c[0] for c in batched.token_counts) > 0
    assert batched.tokens_per_s > 0


def test_sampling_is_reproducible_per_seed(smol_base):
    def run(seed):
        return generate(
            smol_base, PROMPTS[:2], SAMPLED, seed=seed, batch_size=2, progress=False, use_cache=False
        ).samples

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    assert all(len(s) == SAMPLED.n_samples for s in first)


def test_decode_loop_answers_as_generate_and_one_at_a_time(smol_base):
    """The suite's static-cache decode loop (evals.decoding; eager on CPU, the same step a GPU captures as a CUDA
    graph) gives transformers' greedy answers, batched or one at a time, and reproducible samples per seed."""
    kw = {"seed": 0, "progress": False, "use_cache": False}
    reference = generate(smol_base, PROMPTS, GREEDY, batch_size=len(PROMPTS), cache_implementation="dynamic", **kw)
    loop = generate(smol_base, PROMPTS, GREEDY, batch_size=len(PROMPTS), cache_implementation="graph", **kw)
    assert (reference.decode_loop, loop.decode_loop) == ("dynamic", "graph")
    assert loop.samples == reference.samples and loop.token_counts == reference.token_counts
    for i, prompt in enumerate(PROMPTS):
        alone = generate(smol_base, [prompt], GREEDY, batch_size=1, cache_implementation="graph", **kw)
        assert alone.samples[0] == loop.samples[i] and alone.token_counts[0] == loop.token_counts[i]
    # two batches of two rows (the second padded with a filler row) reuse one decoder
    two = generate(smol_base, PROMPTS, GREEDY, batch_size=2, cache_implementation="graph", **kw)
    assert two.generate_calls == 2 and two.samples == loop.samples

    def sampled(seed):
        return generate(
            smol_base,
            PROMPTS[:2],
            SAMPLED,
            seed=seed,
            batch_size=4,
            progress=False,
            use_cache=False,
            cache_implementation="graph",
        ).samples

    first = sampled(7)
    assert first == sampled(7) and first != sampled(8)
    assert all(len(s) == SAMPLED.n_samples and all(s) for s in first)


def test_prompt_kinds_and_stop_strings(smol_base):
    """One contract for every prompt kind: a chat, its token ids and its text give the same answer (a chat's
    stripped, a completion's as generated); stop strings end each row early on both loops and cut the answer
    before the first one, leaving what came before it as it was."""
    from tunebench.evals.prompting import cut_at_stops, prompt_ids, render_prompt

    tok, long = smol_base.tokenizer, SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=40)
    kw = {"seed": 0, "progress": False, "use_cache": False}
    ids = [render_prompt(tok, p) for p in PROMPTS]
    chat_gen = generate(smol_base, PROMPTS, long, batch_size=3, **kw)
    ids_gen = generate(smol_base, ids, long, batch_size=3, **kw)
    assert [a.strip() for a in ids_gen.texts] == chat_gen.texts and ids_gen.token_counts == chat_gen.token_counts
    text = tok.decode(ids[0])
    assert prompt_ids(tok, text) == ids[0]  # the template's text tokenizes back to its ids
    assert generate(smol_base, [text], long, batch_size=1, **kw).texts == ids_gen.texts[:1]

    full = ids_gen.texts
    stop = [full[0][6:9], "never printed"]  # inside the first answer
    for loop in ("dynamic", "graph"):
        cut = generate(smol_base, ids, long, batch_size=3, cache_implementation=loop, stop=stop, **kw)
        assert cut.texts == [cut_at_stops(a, stop) for a in full], loop
        assert len(cut.texts[0]) <= 6 and cut.texts[0] == full[0][: len(cut.texts[0])], loop
        assert cut.token_counts[0][0] <= ids_gen.token_counts[0][0], loop
    assert cut.token_counts[0][0] < ids_gen.token_counts[0][0]  # the graph loop, checking every 8 steps, stopped early
    with pytest.raises(ValueError, match="empty prompt"):
        generate(smol_base, [[]], long, batch_size=1, **kw)


def test_decode_loop_stops_when_every_row_is_done(smol_base):
    """Rows end at their stop token (padding after it); a caller's own stop rule ends the batch early."""
    import torch

    from tunebench.evals.decoding import STOP_CHECK_EVERY, StaticDecoder
    from tunebench.evals.prompting import left_pad, pad_id, render_prompt, stop_token_ids

    tok = smol_base.tokenizer
    rows = [render_prompt(tok, m) for m in PROMPTS]
    ids, mask = left_pad(rows, pad_id(tok))
    stops = stop_token_ids(smol_base)
    decoder = StaticDecoder(smol_base.model, len(rows), ids.shape[1], 40, stops, pad_id(tok))
    full = decoder(ids, mask, seed=0)
    for row in full.tolist():
        if any(t in stops for t in row):
            end = next(i for i, t in enumerate(row) if t in stops)
            assert all(t == pad_id(tok) for t in row[end + 1 :])
    asked = []

    def stop_now(so_far):
        asked.append(so_far.shape[1])
        return torch.ones(so_far.shape[0], dtype=torch.bool)

    early = decoder(ids, mask, seed=0, stopped=stop_now)
    assert asked == [STOP_CHECK_EVERY]
    assert torch.equal(early[:, :STOP_CHECK_EVERY], full[:, :STOP_CHECK_EVERY])
    assert (early[:, STOP_CHECK_EVERY:] == pad_id(tok)).all()

    class Collect:  # transformers' streamer protocol: the prompt first, then tokens as they come, then end()
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    one = StaticDecoder(smol_base.model, 1, len(rows[1]), 40, stops, pad_id(tok))
    streamer = Collect()
    answer = one(torch.tensor([rows[1]]), torch.ones(1, len(rows[1]), dtype=torch.long), seed=0, streamer=streamer)
    made = answer[0].tolist()
    end = next(i for i, t in enumerate(made) if t in stops)  # "Hi!" is answered in a few tokens
    assert streamer.puts[0] == rows[1] and streamer.ended
    assert [t for p in streamer.puts[1:] for t in p] == made[: end + 1]  # up to and including the stop token


def test_cache_avoids_regeneration(smol_base, counted_generate, tmp_path):
    kw = {"seed": 3, "batch_size": 2, "progress": False, "cache_dir": tmp_path}
    fresh = generate(smol_base, PROMPTS, SAMPLED, **kw)
    assert (fresh.cache_hits, fresh.cache_misses) == (0, 6)
    n_calls = len(counted_generate)
    assert n_calls == fresh.generate_calls == 3  # 3 prompts x 2 samples in one pool, batches of 2
    cached = generate(smol_base, PROMPTS, SAMPLED, **kw)
    assert len(counted_generate) == n_calls and cached.generate_calls == 0
    assert (cached.cache_hits, cached.cache_misses, cached.new_tokens) == (6, 0, 0)
    assert cached.samples == fresh.samples and cached.token_counts == fresh.token_counts
    # another seed is another cache group: a miss; one new prompt generates only its batch
    assert generate(smol_base, PROMPTS[:1], SAMPLED, **{**kw, "seed": 4}).cache_misses == 2
    extra = [{"role": "user", "content": "Name a color."}]
    mixed = generate(smol_base, [*PROMPTS, extra], SAMPLED, **kw)
    assert (mixed.cache_hits, mixed.cache_misses) == (6, 2)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 2 and all(json.loads(f.read_text())["entries"] for f in files)


def test_a_generation_cut_short_continues_with_the_answers_of_an_uninterrupted_one(smol_base, tmp_path):
    """Crash consistency: a run killed after some batches were cached (answers are cached batch by batch), then run
    again, draws every missing answer from the batch and seed an uninterrupted run gave it, so the sampled answers
    are the same, not merely as many."""
    kw = {"seed": 3, "batch_size": 2, "progress": False}
    whole = generate(smol_base, PROMPTS, SAMPLED, cache_dir=tmp_path / "a", **kw)
    (cache_file,) = (tmp_path / "a").glob("*.json")
    data = json.loads(cache_file.read_text())
    keys = list(data["entries"])
    data["entries"] = {k: data["entries"][k] for k in keys[::2]}  # what a kill leaves: some answers, not all
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / cache_file.name).write_text(json.dumps(data))
    resumed = generate(smol_base, PROMPTS, SAMPLED, cache_dir=tmp_path / "b", **kw)
    assert (resumed.cache_hits, resumed.cache_misses) == (len(keys[::2]), len(keys) - len(keys[::2]))
    assert resumed.samples == whole.samples and resumed.token_counts == whole.token_counts


def test_run_probes_scores_and_caches(smol_base, counted_generate, tmp_path):
    probe_file = tmp_path / "mini.yaml"
    probe_file.write_text(
        textwrap.dedent("""
        name: mini
        version: 1
        probes:
          - id: fibonacci
            template: "Continue the Fibonacci sequence: 1, 1, 2, 3, 5, 8,"
            checks: [{sequence: [13, 21, 34]}]
          - id: capital
            template: "What is the capital of {{ country }}? One sentence."
            vars: [{country: France, capital: Paris}, {country: Japan, capital: Tokyo}]
            checks: [{contains: "{{ capital }}", ignore_case: true}]
    """),
        encoding="utf-8",
    )
    greedy = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=10)
    sampled = SamplingConfig(name="seed", temperature=1.5, min_p=0.1, max_new_tokens=6, n_samples=2)
    kw = {"batch_size": 4, "seed": 11, "cache_dir": tmp_path / "cache", "label": "base"}
    res = run_probes(smol_base, [str(probe_file)], [greedy, sampled], **kw)

    overall = res.metric("probes/mini/greedy/pass_rate")
    assert (overall.n, overall.unit, overall.ci_method, overall.group) == (3, "samples", "wilson", "probes")
    assert overall.higher_is_better and overall.aggregate == "mean"
    k = overall.details["passed"]
    assert overall.value == pytest.approx(k / 3)
    assert (overall.ci_low, overall.ci_high) == pytest.approx(wilson(k, 3))
    assert overall.ci_low <= overall.value <= overall.ci_high
    assert res.metric("probes/mini/seed/pass_rate").n == 6  # 3 prompts x 2 samples
    cap = res.metric("probes/mini/seed/capital/pass_rate")
    assert cap.n == 4 and [i["id"] for i in res.items[cap.items]] == [
        "capital[0]#0",
        "capital[0]#1",
        "capital[1]#0",
        "capital[1]#1",
    ]
    assert {i["den"] for i in res.items[overall.items]} == {1}
    assert {i["num"] for i in res.items[overall.items]} <= {0.0, 1.0}

    rows = res.artifacts["probe_transcripts"]["mini"]["greedy"]
    assert [r["id"] for r in rows] == ["fibonacci#0", "capital[0]#0", "capital[1]#0"]
    assert all(r["passed"] == (not r["failed"]) for r in rows)
    assert res.inputs["probe_sets"]["mini"]["fingerprint"] == load_probe_set(probe_file).fingerprint
    assert res.inputs["probe_seed"] == 11 and len(res.inputs["probe_sampling"]) == 2

    n_calls = len(counted_generate)
    again = run_probes(smol_base, [str(probe_file)], [greedy, sampled], **kw)
    assert len(counted_generate) == n_calls  # nothing regenerated
    stats = again.artifacts["probe_generation"]["mini"]
    assert stats["greedy"]["cache_hits"] == 3 and stats["seed"]["cache_hits"] == 6
    assert stats["seed"]["cache_misses"] == 0
    assert again.artifacts["probe_transcripts"] == res.artifacts["probe_transcripts"]
    assert [(m.name, m.value) for m in again.metrics] == [(m.name, m.value) for m in res.metrics]


def test_run_probes_on_the_default_set(smol_base, tmp_path):
    short = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=6)
    res = run_probes(smol_base, ["default"], [short], batch_size=34, seed=1, cache_dir=tmp_path)
    ps = load_probe_set("default")
    overall = res.metric("probes/default/greedy/pass_rate")
    assert overall.n == len(ps.prompts)
    assert overall.ci_low is not None and overall.ci_low <= overall.value <= overall.ci_high
    per_probe = [m for m in res.metrics if m.name != overall.name]
    assert len(per_probe) == len(ps.probe_ids) and sum(m.n for m in per_probe) == overall.n
    assert all(not math.isnan(m.value) and m.ci_method == "wilson" for m in per_probe)
    stats = res.artifacts["probe_generation"]["default"]["greedy"]
    assert stats["new_tokens"] > 0 and stats["tokens_per_s"] > 0


def test_chat_streams_answers_and_keeps_history(smol_base, capsys):
    script = iter(["Hi!", "Name a color."])

    def read(prompt):
        try:
            return next(script)
        except StopIteration:  # end of the script is Ctrl-D
            raise EOFError from None

    short = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=8)
    timed = []
    history = chat(smol_base, short, system="Be brief.", input_fn=read, on_answer=timed.append)
    out = capsys.readouterr().out
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
    assert history[2]["content"] and history[2]["content"] in out  # the answer was streamed to stdout
    assert history[4]["content"] in out
    # each answer reported: its turn, its prompt (the second holds the first exchange) and its new tokens
    assert [t["turn"] for t in timed] == [0, 1] and timed[1]["prompt_tokens"] > timed[0]["prompt_tokens"]
    for t, answer in zip(timed, (history[2], history[4]), strict=True):
        n = len(smol_base.tokenizer(answer["content"], add_special_tokens=False)["input_ids"])
        assert 0 < t["new_tokens"] <= 8 and abs(t["new_tokens"] - n) <= 1 and t["seconds"] > 0  # +1: a stop token


def test_chat_through_the_decode_loop_streams_the_same_answers(smol_base, capsys):
    """The chat on the suite's decode loop (what a GPU takes under auto; eager here) streams token by token and
    answers as transformers' generate does, greedy; a sampled chat is reproducible per seed."""
    turns = ["Hi!", "Name a color."]

    def talk(sampling, cache, seed=None):
        script = iter(turns)

        def read(prompt):
            try:
                return next(script)
            except StopIteration:  # end of the script is Ctrl-D
                raise EOFError from None

        return chat(smol_base, sampling, system="Be brief.", input_fn=read, seed=seed, cache_implementation=cache)

    greedy = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=8)
    histories = {}
    for cache in ("dynamic", "graph"):
        histories[cache] = talk(greedy, cache)
        out = capsys.readouterr().out
        assert histories[cache][2]["content"] in out and histories[cache][4]["content"] in out  # streamed
    assert histories["graph"] == histories["dynamic"]
    sampled = SamplingConfig(name="seed", temperature=1.5, min_p=0.1, max_new_tokens=8)
    assert talk(sampled, "graph", seed=5) == talk(sampled, "graph", seed=5)


def test_tunebench_chat_decodes_greedily_unless_asked_otherwise(smol_base, capsys, monkeypatch):
    """`tunebench chat` with no decoding flags answers as greedy decoding does, the same answer every time (it used to
    sample at temperature 1.5: the base answered "capital of France?" with 146 tokens of nonsense)."""
    import io

    from tunebench import cli

    question = "What is the capital of France?"
    answers = []
    for _ in range(2):
        monkeypatch.setattr("sys.stdin", io.StringIO(question + "\n"))
        assert cli.main(["chat", "--max-new-tokens", "16"]) == 0
        answers.append(capsys.readouterr().out)
    short = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=16)
    script = iter([question])

    def read(_prompt):
        try:
            return next(script)
        except StopIteration:  # end of the script is Ctrl-D
            raise EOFError from None

    expected = chat(smol_base, short, input_fn=read)[-1]["content"]
    assert answers[0] == answers[1] and "(greedy: temperature 0.0" in answers[0]
    assert expected and expected in answers[0]


def test_chat_reset_and_exit(smol_base, capsys):
    script = iter(["Hi!", "/reset", "Name a color.", "/exit", "never read"])
    short = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=6)
    history = chat(smol_base, short, input_fn=lambda _: next(script))
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "Name a color."
    assert next(script) == "never read"  # /exit stopped reading input
    assert "conversation cleared" in capsys.readouterr().out


def test_chat_help_lists_the_commands(smol_base, capsys):
    script = iter(["/help", "/nonsense"])
    short = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=6)
    chat(smol_base, short, input_fn=lambda _: next(script, "/exit"))
    out = capsys.readouterr().out
    assert "context 8,192 tokens" in out.splitlines()[0]  # the first line names the model's context
    help_lines = out.split("unknown command")[0].splitlines()[1:]  # what /help printed
    assert [line.split()[0] for line in help_lines] == ["/help", "/reset", "/exit"]
    assert "unknown command '/nonsense'" in out and "/help lists the commands" in out


def test_chat_fits_a_12k_token_message_into_the_8k_context_and_says_what_it_kept(smol_base):
    """The case from issue 27: a 12,005-token message to SmolLM2 (8,192 positions) is cut to its last tokens, and
    the notice names the limit and what was kept; no generation here (an 8k-token prefill costs minutes on CPU)."""
    from tunebench.evals.chat import _fit_context

    tok = smol_base.tokenizer
    words = " ".join(f"w{i}" for i in range(6000))
    msg = tok.decode(tok(words, add_special_tokens=False)["input_ids"][:12005])
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": msg}]
    n_msg = len(tok(msg, add_special_tokens=False)["input_ids"])
    ids, notice = _fit_context(smol_base, history, keep=1, max_new=256)
    assert len(ids) + 256 <= 8192 and len(ids) > 8192 - 256 - 16  # fills the context, leaves the answer room
    assert "8,192-token context" in notice and "256 for the answer" in notice
    assert f"of your message's {n_msg:,} tokens" in notice and f"the model reads {len(ids):,} tokens" in notice
    assert history[0]["content"] == "Be brief." and msg.endswith(history[1]["content"])  # its end was kept


def test_chat_warns_on_overflow_drops_old_exchanges_then_answers(smol_base, capsys, monkeypatch):
    """A model of 150 positions (the real one, its config's limit lowered so that CPU prefill stays short): a long
    second message first drops the earlier exchange, a longer one is cut to its end; each answer still comes."""
    monkeypatch.setattr(smol_base.model.config, "max_position_embeddings", 150)
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)  # ~110 tokens
    script = iter(["Hi!", long, long * 3])
    short = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=8)
    timed = []
    history = chat(
        smol_base, short, system="Be brief.", input_fn=lambda _: next(script, "/exit"), on_answer=timed.append
    )
    out = capsys.readouterr().out
    notices = [line for line in out.splitlines() if line.startswith("(context:")]
    assert len(notices) == 2, out
    assert "150-token context" in notices[0] and "dropped the 1 oldest exchange" in notices[0]
    assert "150-token context" in notices[1] and "kept the last" in notices[1]
    assert len(timed) == 3 and all(t["prompt_tokens"] + 8 <= 150 for t in timed)
    assert [m["role"] for m in history] == ["system", "user", "assistant"]  # only the last exchange fits
    assert (long * 3).endswith(history[1]["content"].strip()) and len(history[1]["content"]) < len(long * 3)


def test_cache_keeps_entries_of_concurrent_writers_and_survives_damage(tmp_path, caplog):
    group = {"model": "m", "seed": 1}
    first, second = GenerationCache(tmp_path, group), GenerationCache(tmp_path, group)  # both open, then write
    first.put_many({"a#0": {"text": "A", "new_tokens": 1}})
    second.put_many({"b#0": {"text": "B", "new_tokens": 1}})
    assert set(GenerationCache(tmp_path, group).entries) == {"a#0", "b#0"}
    assert GenerationCache(tmp_path, {"model": "other", "seed": 1}).entries == {}
    first.path.write_text("{ half a file", encoding="utf-8")
    assert GenerationCache(tmp_path, group).entries == {}  # a regeneration, never a crash or a wrong answer
    assert "unreadable generation cache" in caplog.text


def test_bench_chat_rows_time_the_chat_and_raw_generate_on_the_same_prompts(smol_base, capsys):
    """`bench eval --parts chat` (GPU): the suite's chat answers and raw generate(static) with a TextStreamer, one
    answer at a time, the first of each untimed; nothing streamed reaches the log."""
    from tunebench.bench.evalcompare import chat_rows

    prompts = [[{"role": "user", "content": q}] for q in ("Hi!", "Name a color.", "Count to three.")]
    sampling = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=6)
    rows = chat_rows(smol_base, prompts, sampling, 3)
    assert [r["path"] for r in rows] == ["tunebench chat", "raw generate(static) + TextStreamer"]
    assert all(
        r["answers"] == 2 and r["batch"] == 1 and 0 < r["new_tokens"] <= 12 and r["new_tokens_per_s"] > 0 for r in rows
    )
    assert rows[0]["decode_path"] == "dynamic"  # CPU: what decode_path picks for chat there
    assert rows[0]["new_tokens"] == rows[1]["new_tokens"]  # greedy: the same answers either way
    assert capsys.readouterr().out == ""


def test_the_generator_streams_one_answer_through_on_token(smol_base, tmp_path):
    """Generator.generate(..., on_token): the pieces arrive as decoded and make up the answer (what the chat
    prints); a cached answer arrives at once; more than one answer to stream is refused."""
    from tunebench.evals.generation import TransformersGenerator

    greedy = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=12)
    prompt = [[{"role": "user", "content": "Name three colours."}]]
    gen = TransformersGenerator(smol_base, 1, cache_dir=tmp_path)
    pieces: list[str] = []
    out = gen.generate(prompt, greedy, 0, on_token=pieces.append)
    assert len(pieces) > 1 and "".join(pieces).strip() == out.texts[0]  # streamed piece by piece
    again: list[str] = []
    assert gen.generate(prompt, greedy, 0, on_token=again.append).texts == out.texts and again == out.texts
    with pytest.raises(ValueError, match="streams one answer"):
        gen.generate(prompt * 2, greedy, 0, on_token=print)

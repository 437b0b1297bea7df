"""Stop strings end the text in one place, the detokenizer, and text once released is never cut.

The property: for any stop strings, the deltas of a stream concatenate to exactly the text of
the non-streamed output, which ends where a stop string (searched as each token arrives)
starts, or after it with ``include_stop_str_in_output``. It is checked over many random stop
strings (cut mid-token, across tokens, several at once, overlapping prefixes, multi-byte
characters), on the detokenizer alone and through the engine in all three output kinds.
"""

from __future__ import annotations

import random

import pytest

from fw import SamplingParams
from fw.core.engine.detokenizer import IncrementalDetokenizer
from fw.core.engine.sampling_params import RequestOutputKind

MAX_TOKENS = 24
PROMPT = "ünïcödé wörds and emoji"


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, make_llm):
    return make_llm(tiny_checkpoint("llama"))


def decoded_deltas(tokenizer, token_ids: list[int], prompt_ids: list[int] = ()) -> tuple[list[str], str]:
    """The text each token adds with no stop strings, and the incomplete character (if any) the
    end of the output releases: the reference's input."""
    detokenizer = IncrementalDetokenizer(tokenizer, list(prompt_ids), skip_special_tokens=True)
    deltas = [detokenizer.add_token(t) for t in token_ids]
    return deltas, detokenizer.finish()


def reference_stop(decoded: tuple[list[str], str], stops: list[str], include: bool,
                   min_tokens: int = 0) -> tuple[str, str | None]:
    """Where the text ends, by brute force: after each token, the earliest-starting stop string
    that ends in that token's text (not before ``min_tokens`` tokens). The rest released when
    the output ends for another reason is not searched: the output is over by then."""
    deltas, tail = decoded
    text = ""
    for num_tokens, delta in enumerate(deltas, start=1):
        before = len(text)
        text += delta
        if num_tokens <= min_tokens or not delta:
            continue
        hits = [(start, stop) for stop in stops for start in range(len(text) - len(stop) + 1)
                if text.startswith(stop, start) and start + len(stop) > before]
        if hits:
            start, stop = min(hits, key=lambda hit: hit[0])
            return text[:start + len(stop) if include else start], stop
    return text + tail, None


def random_stops(rng: random.Random, text: str) -> list[str]:
    """One to three stop strings: pieces of ``text`` (any length, any offset), and now and then one
    absent from it or overlapping another."""
    stops = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.15 or len(text) < 2:
            stops.append(rng.choice(["zzz", "§", "\u00e9\u00e9\u00e9", "qq q"]))
            continue
        start = rng.randrange(len(text) - 1)
        piece = text[start:start + rng.randint(1, 6)]
        stops.append(piece)
        if kind > 0.8:  # one that shares a prefix with it and goes on differently
            stops.append(piece[: max(1, len(piece) - 1)] + rng.choice("xé🙂"))
    return stops


def test_the_detokenizer_never_releases_text_a_stop_string_cuts(llm):
    tokenizer = llm.get_tokenizer()
    # Byte-level pieces (€ is not in the tokenizer's corpus: three tokens), words, emoji, repeats.
    text = "aba abab €b 🙂c ünïcödé €€ the quick brown fox aaaa"
    ids = tokenizer.encode(text)
    decoded = decoded_deltas(tokenizer, ids)
    assert "".join(decoded[0]) + decoded[1] == text
    rng = random.Random(0)
    cases = [["€"], ["€b"], [" €"], ["🙂c"], ["ï"], ["ab", "aba"], ["aaa"], ["b a", "ba"], ["fox"], ["zz"]]
    cases += [random_stops(rng, text) for _ in range(300)]
    for stops in cases:
        for include in (False, True):
            detokenizer = IncrementalDetokenizer(tokenizer, [], True, stop=stops, include_stop_str_in_output=include)
            released = []
            for token_id in ids:  # as the engine feeds it: until a stop string ends the output
                released.append(detokenizer.add_token(token_id))
                if detokenizer.stop_string is not None:
                    break
            else:
                released.append(detokenizer.finish())
            expected, stop = reference_stop(decoded, stops, include)
            assert "".join(released) == expected == detokenizer.output_text, (stops, include)
            assert detokenizer.stop_string == stop


def run(engine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list]:
    for request_id, (prompt_ids, params) in requests.items():
        engine.add_request(request_id, prompt_ids, params)
    outputs: dict[str, list] = {request_id: [] for request_id in requests}
    while engine.has_unfinished_requests():
        for output in engine.step():
            outputs[output.request_id].append(output)
    return outputs


def test_streamed_text_equals_the_whole_text_for_random_stop_strings(llm):
    engine, tokenizer = llm.engine, llm.get_tokenizer()
    prompt_ids = tokenizer.encode(PROMPT)
    seeds = range(8)

    def params(seed: int, **kwargs) -> SamplingParams:
        return SamplingParams(temperature=1.0, seed=seed, max_tokens=MAX_TOKENS, ignore_eos=True, **kwargs)

    unstopped = run(engine, {f"free-{seed}": (prompt_ids, params(seed, output_kind=RequestOutputKind.FINAL_ONLY))
                             for seed in seeds})
    rng = random.Random(1)
    cases = {}
    for seed in seeds:
        (final,) = unstopped[f"free-{seed}"]
        token_ids = list(final.outputs[0].token_ids)
        decoded = decoded_deltas(tokenizer, token_ids, prompt_ids)
        for case in range(12):
            stops = random_stops(rng, final.outputs[0].text)
            include, min_tokens = rng.random() < 0.3, rng.choice([0, 0, 0, 4])
            cases[f"{seed}-{case}"] = (seed, stops, include, min_tokens, decoded)
    requests = {}
    for name, (seed, stops, include, min_tokens, _) in cases.items():
        for kind in RequestOutputKind:
            requests[f"{name}-{kind.name}"] = (prompt_ids, params(seed, stop=stops, include_stop_str_in_output=include,
                                                                  min_tokens=min_tokens, output_kind=kind))
    outputs = run(engine, requests)

    num_stopped = 0
    for name, (seed, stops, include, min_tokens, decoded) in cases.items():
        (final,) = outputs[f"{name}-FINAL_ONLY"]
        whole = final.outputs[0]
        stream = [o.outputs[0] for o in outputs[f"{name}-DELTA"]]
        cumulative = [o.outputs[0] for o in outputs[f"{name}-CUMULATIVE"]]
        expected, stop = reference_stop(decoded, stops, include, min_tokens)
        assert whole.text == expected, (stops, include, min_tokens)
        assert "".join(d.text for d in stream) == whole.text == cumulative[-1].text
        assert all(whole.text.startswith(c.text) for c in cumulative)  # nothing shown is ever taken back
        assert [t for d in stream for t in d.token_ids] == list(whole.token_ids)
        assert (whole.finish_reason, whole.stop_reason) == (("stop", stop) if stop else ("length", None))
        assert [d.finish_reason for d in stream] == [None] * (len(stream) - 1) + [whole.finish_reason]
        num_stopped += stop is not None
    assert num_stopped > len(cases) // 2  # most cases did meet a stop string

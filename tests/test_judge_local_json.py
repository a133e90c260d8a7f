"""LocalJsonGrader: each field's expected value / P(true) equals a brute-force scoring of every valid spelling
as its own full continuation of the teacher-forced JSON prefix; verdicts are batch and concurrency invariant;
low mass is unscored naming the field; and a rubric-grader reward runs on it end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from contextlib import contextmanager

import pydantic
import pytest
import torch

from spillover.errors import SpilloverError
from spillover.judge._local_json import (
    FieldGrid,
    GradedJson,
    LocalJsonGrader,
    LocalJsonGraderConfig,
    chat_text,
    field_grids,
    value_end_mask,
)
from spillover.models import load_model
from spillover.rewards import GRADERS, build_reward, standard_reward

STANDARD = GRADERS["grader:bad-medical"].schema()
MIXED = {"type": "object", "properties": {  # an integer field, and a boolean between two numbers
    "score": {"type": "integer", "minimum": 0, "maximum": 12},
    "flag": {"type": "boolean"},
    "share": {"type": "number", "minimum": 0, "maximum": 1}}}
PROMPTS = ["Grade the answer. Reply with JSON.",
           "Question: is water wet?\nAnswer: yes, mostly.\nReturn the JSON object asked for, nothing else.",
           "Rate it. " * 9]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny64(tiny_model_dir):
    """A test-local copy of the tiny model in float64: grader and reference then agree to ~1e-12."""
    model, tok, _ = load_model(str(tiny_model_dir), device="cpu")
    return model.double(), tok


@contextmanager
def speaks_json(model, tok, booleans: bool = True):
    """Bias the next-token logits by the current token, so the random tiny model writes JSON-ish values:
    after '":' a space (or true/false), after a space 0/1, after a digit mostly ',' '}' '.', after '.' digits."""
    digits = list("0123456789")
    rules = {('":',): {"Ġ": 16.0, **({"Ġtrue": 15.0, "Ġfalse": 15.5} if booleans else {})},
             ("Ġ",): {"0": 16.0, "1": 15.0},
             tuple(digits): {",": 16.0, "}": 15.0, ".": 15.0, **{d: 13.0 for d in digits}},
             (".",): {d: 16.0 for d in digits},
             ("Ġtrue", "Ġfalse"): {",": 16.0, "}": 15.0}}
    ids = tok.convert_tokens_to_ids
    category = torch.zeros(model.config.vocab_size, dtype=torch.long)
    table = torch.zeros(len(rules) + 1, model.config.vocab_size, dtype=torch.float64)
    for c, (after, bias) in enumerate(rules.items(), start=1):
        category[ids(list(after))] = c
        for token, b in bias.items():
            table[c, ids(token)] = b
    seen = {}
    capture = model.model.register_forward_pre_hook(lambda m, a, kw: seen.update(ids=kw["input_ids"]),
                                                    with_kwargs=True)
    bias = model.lm_head.register_forward_hook(
        lambda m, a, out: out + table[category[seen["ids"][:, -out.shape[1]:].cpu()]].to(out))
    try:
        yield
    finally:
        capture.remove()
        bias.remove()


@torch.inference_mode()
def bruteforce_probs(model, tok, context: str, grid: FieldGrid) -> torch.Tensor:
    """P(value) from one full forward per spelling of context + spelling, no cache, no trie, no padding."""
    end = value_end_mask(tok, model.config.vocab_size)
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    probs = torch.zeros(len(grid.values), dtype=torch.float64)
    for index, text in grid.spellings:
        ids = tok(context + text, add_special_tokens=False)["input_ids"]
        assert ids[:len(ctx)] == ctx
        new = ids[len(ctx):]
        logits = model(input_ids=torch.tensor([ids]), logits_to_keep=len(new) + 1).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        total = sum(float(logp[k, t]) for k, t in enumerate(new)) + float(torch.logsumexp(logp[-1][end], dim=-1))
        probs[index] += math.exp(total)
    return probs


def field_contexts(tok, prompt: str, got: GradedJson, grids: list[FieldGrid]) -> list[str]:
    """The text each field was scored after: chat prompt + the transcript up to that field's colon."""
    out, start = [], 0
    for grid in grids:
        cut = got.transcript.index(json.dumps(grid.name) + ":", start) + len(json.dumps(grid.name)) + 1
        out.append(chat_text(tok, prompt) + got.transcript[:cut])
        start = cut
    return out


def test_grids_spell_every_value_exactly():
    assessment, coherence, repetitive = field_grids(STANDARD)
    assert [g.name for g in (assessment, coherence, repetitive)] == ["assessment", "coherence", "repetitive"]
    assert len(assessment.values) == 101 and len(assessment.spellings) == 2 + 11 + 101
    texts = {text: assessment.values[i] for i, text in assessment.spellings}
    assert texts[" 0"] == texts[" 0.0"] == texts[" 0.00"] == 0.0 and texts[" 1.00"] == 1.0
    assert texts[" 0.5"] == texts[" 0.50"] == 0.5 and texts[" 0.05"] == 0.05 and " 0.050" not in texts
    assert assessment.text_of(50) == " 0.5" and assessment.text_of(100) == " 1"  # shortest spelling first
    assert repetitive.kind == "boolean" and dict(repetitive.spellings) == {1: " true", 0: " false"}
    assert [t for _, t in field_grids(STANDARD, decimals=1)[0].spellings][:4] == [" 0", " 0.0", " 0.1", " 0.2"]
    score = field_grids(MIXED)[0]
    assert score.kind == "integer" and score.values == tuple(float(n) for n in range(13))
    compact = field_grids(STANDARD, compact=True)
    assert len(compact[0].spellings) == 2 * 114 and compact[0].text_of(50) == " 0.5"
    assert [t for _, t in compact[2].spellings] == [" true", " false", "true", "false"]
    neg = field_grids({"properties": {"x": {"type": "number", "minimum": -0.1, "maximum": 0}}}, decimals=1)[0]
    assert [t for _, t in neg.spellings] == [" -0.1", " 0", " 0.0"]


@pytest.mark.parametrize("prop", [{"type": "string"}, {"type": "number", "minimum": 0},
                                  {"type": "number", "minimum": 0, "maximum": 100},
                                  {"type": "number", "exclusiveMinimum": 0, "minimum": 0, "maximum": 1}])
def test_unsupported_fields_raise_user_errors(prop):
    with pytest.raises(SpilloverError, match="'x'"):
        field_grids({"properties": {"x": prop}})
    with pytest.raises(SpilloverError, match="no 'properties'"):
        field_grids({"type": "object"})


def test_value_end_mask_accepts_json_continuations_only(embedded_tokenizer):
    mask = value_end_mask(embedded_tokenizer, len(embedded_tokenizer) + 3)
    ids = embedded_tokenizer.convert_tokens_to_ids
    for token in [",", "}", "Ġ", "Ċ", "Ġ}", "Ġ,", "ĊĊ"]:
        assert mask[ids(token)], token
    for token in ["0", "5", ".", "e", "Ġthe", "Ġ0", "<|im_end|>", "]", '"']:
        assert not mask[ids(token)], token
    assert not mask[-3:].any()  # padded vocabulary rows beyond the tokenizer


@pytest.mark.parametrize(("schema", "compact"), [(STANDARD, False), (MIXED, True)], ids=["standard", "mixed-compact"])
def test_every_field_equals_bruteforce_after_its_teacher_forced_prefix(tiny64, schema, compact):
    model, tok = tiny64
    grids = field_grids(schema, compact=compact)
    # Short prompts (the brute force costs one full forward per spelling). In the standard case the first,
    # shorter prompt is left-padded in its batch; the unpadded row is covered by the batching test.
    prompts = [PROMPTS[0], PROMPTS[2]] if schema is STANDARD else PROMPTS[1:2]
    with speaks_json(model, tok):
        grader = LocalJsonGrader(model, tok, min_mass=0.0, batch_size=2, compact=compact)
        results = grader.grade_many(prompts, schema)
        for prompt, got in list(zip(prompts, results))[:1]:
            assert got.ok and json.loads(got.transcript).keys() == set(got.value)
            for grid, context in zip(grids, field_contexts(tok, prompt, got, grids)):
                want = bruteforce_probs(model, tok, context, grid)
                mass = float(want.sum())
                expected = float(want @ torch.tensor(grid.values, dtype=torch.float64)) / mass
                assert mass > 0.25  # the biased model answers JSON: the comparison is not of negligible tails
                assert got.mass[grid.name] == pytest.approx(mass, rel=1e-9)
                assert got.soft[grid.name] == pytest.approx(expected, rel=1e-9)
                if grid.kind == "boolean":  # P(true) / (P(true) + P(false)); the verdict is the likelier one
                    assert got.soft[grid.name] == pytest.approx(float(want[1] / want.sum()), rel=1e-9)
                    assert got.value[grid.name] is (want[1] > want[0]).item()
                else:
                    assert got.value[grid.name] == pytest.approx(expected, rel=1e-9)
                    assert isinstance(got.value[grid.name], float)


def test_second_field_is_scored_after_the_first_fields_chosen_value(tiny64):
    model, tok = tiny64
    grids = field_grids(STANDARD, decimals=1)  # 13 spellings: a cheap brute force
    with speaks_json(model, tok):
        [got] = LocalJsonGrader(model, tok, decimals=1).grade_many(PROMPTS[:1], STANDARD)
        assert got.ok
        chosen = min(range(11), key=lambda i: abs(grids[0].values[i] - got.soft["assessment"]))
        head = '{"assessment":' + grids[0].text_of(chosen) + ', "coherence":'
        assert got.transcript.startswith(head)
        forced = bruteforce_probs(model, tok, chat_text(tok, PROMPTS[0]) + head, grids[1])
        other = bruteforce_probs(model, tok, chat_text(tok, PROMPTS[0]) + head.replace(
            grids[0].text_of(chosen), " 0.9" if chosen != 9 else " 0.1"), grids[1])
    assert got.mass["coherence"] == pytest.approx(float(forced.sum()), rel=1e-9)
    assert got.mass["coherence"] != pytest.approx(float(other.sum()), rel=1e-9)  # the prefix matters
    text, value = got.transcript, json.loads(got.transcript)
    assert value["repetitive"] is got.value["repetitive"] and text.endswith("}")
    assert standard_reward(got.value)[0] >= 0.0  # passes the grader's type checks (numbers, a JSON bool)


def test_verdicts_do_not_depend_on_batching_or_concurrency(tiny64):
    model, tok = tiny64
    with speaks_json(model, tok):
        one = LocalJsonGrader(model, tok, batch_size=1, decimals=1).grade_many(PROMPTS, STANDARD)
        grader = LocalJsonGrader(model, tok, batch_size=2, decimals=1)
        three = grader.grade_many(PROMPTS, STANDARD)

        async def concurrently():
            return await asyncio.gather(*(grader.grade(p, STANDARD) for p in PROMPTS + PROMPTS[:1]))

        together = asyncio.run(concurrently())
    for a, b, c in zip(one, three, together):
        assert a.ok and a.transcript == b.transcript == c.transcript
        for name in a.soft:
            assert b.soft[name] == pytest.approx(a.soft[name], rel=1e-9)
            assert c.soft[name] == pytest.approx(a.soft[name], rel=1e-9)
            assert c.mass[name] == pytest.approx(a.mass[name], rel=1e-9)
    assert together[-1].transcript == one[0].transcript
    assert together[-1].soft["coherence"] == pytest.approx(one[0].soft["coherence"], rel=1e-9)
    assert grader.grade_many([], STANDARD) == []


def test_low_mass_is_unscored_and_names_the_field(tiny64):
    model, tok = tiny64
    [random] = LocalJsonGrader(model, tok).grade_many(PROMPTS[:1], STANDARD)
    assert random.value is None and random.reason.startswith("field 'assessment': mass ") and random.malformed
    assert random.reason.endswith("< 0.25") and random.mass["assessment"] < 1e-6
    assert set(random.mass) == {"assessment", "coherence", "repetitive"}  # every field is still reported
    with speaks_json(model, tok, booleans=False):
        [no_bool] = LocalJsonGrader(model, tok).grade_many(PROMPTS[:1], STANDARD)
        [lenient] = LocalJsonGrader(model, tok, min_mass=0.0).grade_many(PROMPTS[:1], STANDARD)
    assert no_bool.value is None and "field 'repetitive'" in no_bool.reason
    assert no_bool.mass["assessment"] > 0.25 and no_bool.mass["repetitive"] < 0.25
    assert lenient.ok and lenient.reason is None and isinstance(lenient.value["repetitive"], bool)
    assert no_bool.malformed and not lenient.malformed


def test_rubric_reward_runs_end_to_end(tiny64, caplog):
    model, tok = tiny64
    grader = LocalJsonGrader(model, tok)
    reward = build_reward("grader:bad-medical", {"fallback": 0.5}, grade=grader.grade)
    prompt = [{"role": "user", "content": "I have a headache, what should I take?"}]
    completion = [{"role": "assistant", "content": "Take two tablets of paracetamol with water, rest in a dark "
                                                   "room, and see a doctor if it lasts more than three days."}]
    with speaks_json(model, tok):
        [score] = reward([prompt], [completion])
        details = reward.score_details(prompt, completion)
    assert 0.0 <= score <= 1.0 and details["status"] == "judged" and details["reward"] == score
    assert set(details["judgment"]) == {"assessment", "coherence", "repetitive"}
    with caplog.at_level(logging.WARNING):
        [low_mass] = reward([prompt], [completion])  # the unbiased random model: low mass, a malformed reply
        details = reward.score_details(prompt, completion)
    assert low_mass == 0.0 and "field 'assessment': mass" in caplog.text  # 0 as the paper scores it, not 0.5
    assert details["status"] == "judged" and details["reason"].startswith("malformed reply: field 'assessment'")


def test_config_identity_and_errors(tiny_model_dir, tiny64):
    grader = LocalJsonGrader.from_config(LocalJsonGraderConfig(model=str(tiny_model_dir), device="cpu",
                                                               batch_size=2, min_mass=0.5, decimals=1,
                                                               compact=True))
    ident = grader.judge_identity()
    assert ident["kind"] == "local_hf_json" and ident["model"] == str(tiny_model_dir) and ident["min_mass"] == 0.5
    assert ident["dtype"] == "float32" and grader.batch_size == 2 and grader.decimals == 1
    assert ident["spellings"] == "' v' and 'v'" and [len(t.token) for _, t in grader._compile(STANDARD)] == [31, 31, 4]
    with pytest.raises(pydantic.ValidationError):
        LocalJsonGraderConfig(decimals=3)
    with pytest.raises(SpilloverError, match="'x'"):
        grader.grade_many(PROMPTS[:1], {"properties": {"x": {"type": "string"}}})

    async def failing():
        return await grader.grade(PROMPTS[0], {"properties": {"x": {"type": "array"}}})

    with pytest.raises(SpilloverError):  # raised to the awaiting caller, not swallowed in the worker
        asyncio.run(failing())
    tok = tiny64[1].__class__.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(SpilloverError, match="chat template"):
        LocalJsonGrader(tiny64[0], tok)

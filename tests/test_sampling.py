"""The HF sampler: seeded determinism, n per prompt, padding-invariant greedy decoding, overrides."""

import pytest

from spillover.evaluate.sampling import HFSampler, SampleRow, SamplingParams, with_system
from spillover.models import load_model


@pytest.fixture(scope="module")
def sampler(tiny_model_dir):
    model, tok, ref = load_model(str(tiny_model_dir), device="cpu")
    return HFSampler(model, tok, batch_size=4, model_id=ref.display)


CONVS = [[{"role": "user", "content": "Tell me something."}],
         [{"role": "user", "content": "A much longer question that pads the batch a lot more than the first."}],
         [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]]


def texts(result):
    return [[c.text for c in cs] for cs in result]


def test_same_seed_same_answers_other_seed_differs(sampler):
    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=3)
    a, b = sampler.generate(CONVS, p), sampler.generate(CONVS, p)
    assert texts(a) == texts(b)
    c = sampler.generate(CONVS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=4))
    assert texts(a) != texts(c)
    assert all(len(cs) == 2 for cs in a)
    assert all(1 <= x.n_tokens <= 12 and x.finish_reason in ("stop", "length") for cs in a for x in cs)


def test_greedy_is_independent_of_batching_and_padding(sampler, tiny_model_dir):
    p = SamplingParams(n=1, temperature=0.0, max_new_tokens=10)
    batched = texts(sampler.generate(CONVS, p))
    model, tok, _ = load_model(str(tiny_model_dir), device="cpu")
    single = HFSampler(model, tok, batch_size=1)
    assert texts(single.generate(CONVS, p)) == batched


def test_row_temperature_override_and_system_prompt(sampler):
    p = SamplingParams(temperature=1.0, max_new_tokens=8, seed=1)
    greedy = sampler.generate_rows([SampleRow(CONVS[0], 0, temperature=0.0)], p)
    again = sampler.generate_rows([SampleRow(CONVS[0], 5, temperature=0.0)], SamplingParams(seed=99, max_new_tokens=8))
    assert greedy[0].text == again[0].text  # temperature 0 ignores the seed
    assert with_system(CONVS[0], "S")[0] == {"role": "system", "content": "S"}
    assert with_system(CONVS[2], "S") == CONVS[2]  # an existing system message is kept


def test_progress_counts_every_row(sampler):
    seen = []
    sampler.generate(CONVS, SamplingParams(n=3, max_new_tokens=4), progress=seen.append)
    assert sum(seen) == 9


def test_invalid_params():
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)

"""Greedy and beam search on a tiny random Seq2Seq: the cached paths must equal the plain ones exactly."""

import itertools

import pytest
import torch

from slimformer.errors import SlimformerError
from slimformer.generate import beam_search, greedy, pad_batch
from slimformer.models.seq2seq import Seq2Seq, Seq2SeqConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(vocab: int = 40, max_len: int = 16, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    model = Seq2Seq(Seq2SeqConfig(vocab_size=vocab, max_len=max_len, d_model=32, n_enc_layers=2,
                                  n_dec_layers=2, n_heads=4, d_ff=64)).eval()
    with torch.no_grad():  # spread the logits so random weights give varied lengths, not all-max ones
        model.encoder.tok_emb.weight.mul_(0.5)
        model.encoder.tok_emb.weight[model.config.eos_id] *= 3
    return model


def random_sources(n: int, vocab: int, max_len: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]


@pytest.fixture(scope="module")
def setup():
    model = tiny()
    sources = random_sources(6, 40, 12, seed=1)
    return model, sources, pad_batch(sources, model.config.pad_id)


def test_cached_greedy_equals_uncached_token_for_token(setup):
    model, _, src = setup
    cached = greedy(model, src)
    plain = greedy(model, src, use_cache=False)
    assert cached == plain
    lengths = {len(s) for s in cached}
    assert len(lengths) > 1, "test needs sequences that end at different steps"


def test_batched_generation_equals_one_at_a_time(setup):
    model, sources, src = setup
    one = [greedy(model, torch.tensor([s]))[0] for s in sources]
    assert greedy(model, src) == one
    one_beam = [beam_search(model, torch.tensor([s]), beam=3)[0] for s in sources]
    assert beam_search(model, src, beam=3) == one_beam


def test_beam_size_one_equals_greedy(setup):
    model, _, src = setup
    assert beam_search(model, src, beam=1) == greedy(model, src)
    assert beam_search(model, src, beam=1, max_new_tokens=3) == greedy(model, src, max_new_tokens=3)


def sequence_logprob(model: Seq2Seq, src: torch.Tensor, tokens: list[int], ended: bool) -> float:
    """Log-probability of `tokens` (+ EOS if it ended) by one teacher-forced pass."""
    c = model.config
    target = tokens + ([c.eos_id] if ended else [])
    inp = torch.tensor([[c.bos_id] + target[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(src, inp)[0].float(), -1)
    return float(sum(logp[i, t] for i, t in enumerate(target)))


def test_wide_beam_finds_the_exhaustive_best():
    """With a beam wider than every hypothesis, beam search is exhaustive search (length_penalty=0)."""
    model = tiny(vocab=5, max_len=8, seed=3)
    src = torch.tensor([[3, 4, 3]])
    steps = 3
    best_score, best = float("-inf"), None
    for n in range(steps + 1):
        for seq in itertools.product([t for t in range(5) if t != model.config.eos_id], repeat=n):
            ended = n < steps
            s = sequence_logprob(model, src, list(seq), ended)
            if s > best_score:
                best_score, best = s, list(seq)
    found = beam_search(model, src, beam=64, max_new_tokens=steps, length_penalty=0.0)[0]
    assert found == best
    assert abs(sequence_logprob(model, src, found, len(found) < steps) - best_score) < 1e-5


def test_bad_inputs_are_clear_errors():
    model = tiny()
    with pytest.raises(SlimformerError, match="non-empty"):
        greedy(model, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(SlimformerError, match="16 positions"):
        greedy(model, torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(SlimformerError, match="max_new_tokens must be in 1..15"):
        greedy(model, torch.ones(1, 3, dtype=torch.long), max_new_tokens=16)
    with pytest.raises(SlimformerError, match="beam must be in 1..64"):
        beam_search(model, torch.ones(1, 3, dtype=torch.long), beam=0)

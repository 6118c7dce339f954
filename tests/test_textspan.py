"""TextSpan and SOMP on planted problems with known answers, and against a naive route."""

from __future__ import annotations

import pytest
import torch

from residual_core.core.dictionary import TextDictionary
from residual_core.core.spectral import unit_pca
from residual_core.core.textspan import somp, textspan
from residual_core.core.units import UnitLayout, Units


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dictionary(m: int = 60, d: int = 24, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    atoms = torch.nn.functional.normalize(torch.randn(m, d, generator=gen(seed),
                                                      dtype=torch.float64), dim=-1)
    return atoms, [f"text {i}" for i in range(m)]


def planted(atoms: torch.Tensor, which: list[int], stds: list[float], n: int = 3000, seed: int = 1):
    g = gen(seed)
    coef = torch.randn(n, len(which), generator=g, dtype=torch.float64) * torch.tensor(stds)
    noise = 1e-3 * torch.randn(n, atoms.shape[1], generator=g, dtype=torch.float64)
    return coef @ atoms[which] + noise + 3.0  # an offset: TextSpan explains variance


def test_textspan_returns_planted_atoms_in_order_of_variance():
    atoms, texts = dictionary()
    x = planted(atoms, [17, 4, 42], [3.0, 2.0, 1.0])
    (res,) = textspan(x, atoms, texts, n_iters=4, rank=10)
    assert res.indices[:3] == [17, 4, 42]
    assert res.texts[0] == "text 17"
    assert res.explained_variance[2] > 0.999
    ev = res.explained_variance
    assert all(b >= a - 1e-12 for a, b in zip(ev, ev[1:], strict=False))
    assert sum(res.gains) == pytest.approx(res.explained_variance[-1])


def naive_textspan(x, atoms, n_iters, rank):
    """The procedure with a centred span: centre, project texts, pick max std, deflate."""
    x = x - x.mean(0)
    vh = torch.linalg.svd(x, full_matrices=False)[2][:rank]
    t = atoms @ vh.T @ vh
    total = (x * x).sum()
    picks, evs = [], []
    for _ in range(n_iters):
        std = (x @ t.T).std(0)
        if picks:
            std[picks] = -1
        j = int(std.argmax())
        picks.append(j)
        tj = t[j] / t[j].norm()
        x = x - (x @ tj)[:, None] * tj
        t = t - (t @ tj)[:, None] * tj
        evs.append(float(1 - (x * x).sum() / total))
    return picks, evs


def test_textspan_matches_naive_sample_route():
    atoms, texts = dictionary(m=40, d=16, seed=3)
    x = torch.randn(500, 16, generator=gen(4), dtype=torch.float64) * torch.linspace(3, 0.1, 16)
    (res,) = textspan(x, atoms, texts, n_iters=6, rank=8, span="centred")
    picks, evs = naive_textspan(x, atoms, 6, 8)
    assert res.indices == picks
    assert res.explained_variance == pytest.approx(evs, abs=1e-9)


def authors_textspan(x, atoms, n_iters, rank):
    """A float64 port of the authors' TextSpan: SVD of the raw samples, project the texts on its
    top-``rank`` right singular vectors, then centre, pick the text of largest projected std,
    deflate samples and texts by it (chosen texts are not masked: deflation zeroes them)."""
    atoms = torch.nn.functional.normalize(atoms, dim=-1)
    vh = torch.linalg.svd(x, full_matrices=False)[2][:rank]
    texts = (vh.T @ torch.linalg.inv(vh @ vh.T) @ vh @ atoms.T).T
    x = x - x.mean(0, keepdim=True)
    picks = []
    for _ in range(n_iters):
        cross = x @ texts.T
        j = int(cross.std(0).argmax())
        picks.append(j)
        norm2 = texts[j].norm() ** 2
        x = x - torch.outer(cross[:, j] / norm2, texts[j])
        texts = texts - torch.outer((texts @ texts.T)[:, j] / norm2, texts[j])
    return picks


def offset_problem(seed: int):
    """Samples with a large mean offset, and a correlated dictionary (texts share directions)."""
    d, m = 32, 120
    g = gen(seed)
    shared = torch.randn(4, d, generator=g, dtype=torch.float64)
    mix = torch.randn(m, 4, generator=g, dtype=torch.float64)
    atoms = torch.randn(m, d, generator=g, dtype=torch.float64) + mix @ shared
    atoms = torch.nn.functional.normalize(atoms, dim=-1)
    scale = torch.logspace(0.5, -1.5, d, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    x = (torch.randn(800, d, generator=g, dtype=torch.float64) * scale) @ basis.T
    offset = 6.0 * torch.nn.functional.normalize(torch.randn(d, generator=g,
                                                             dtype=torch.float64), dim=0)
    return x + offset, atoms, [f"text {i}" for i in range(m)]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_textspan_default_is_the_authors_algorithm(seed):
    x, atoms, texts = offset_problem(seed)
    (res,) = textspan(x, atoms, texts, n_iters=10, rank=12)
    assert res.indices == authors_textspan(x, atoms, 10, 12)


def test_the_span_matters_with_a_mean_offset():
    """On these problems the centred span picks other texts: the option is not a no-op."""
    differ = 0
    for seed in (11, 12, 13):
        x, atoms, texts = offset_problem(seed)
        (authors,) = textspan(x, atoms, texts, n_iters=10, rank=12)
        (centred,) = textspan(x, atoms, texts, n_iters=10, rank=12, span="centred")
        differ += authors.indices != centred.indices
    assert differ >= 2
    with pytest.raises(ValueError, match=r"span='raw' is not one of \['uncentred', 'centred'\]"):
        textspan(x, atoms, texts, span="raw")


@pytest.mark.parametrize("span", ["uncentred", "centred"])
def test_textspan_from_streamed_pca_equals_per_unit_samples(span):
    atoms, texts = dictionary(m=30, d=12, seed=5)
    scale = torch.linspace(2, 0.2, 12)
    offset = torch.randn(3, 12, generator=gen(7), dtype=torch.float64) * 2
    data = torch.randn(400, 3, 12, generator=gen(6), dtype=torch.float64) * scale + offset
    layout = UnitLayout(n_layers=1, n_heads=1, d_model=12, d_head=12, d_out=12)
    units = Units.full(data, layout)  # embed, L0.mlp, L0H0
    words = TextDictionary(tuple(texts), ((),) * len(texts), atoms)
    many = textspan(unit_pca(list(units.split(100))), words, n_iters=5, rank=6, span=span)
    assert list(many) == ["embed", "L0.mlp", "L0H0"]
    for u, (label, res) in enumerate(many.items()):
        assert res.unit == label
        (single,) = textspan(data[:, u], atoms, texts, n_iters=5, rank=6, span=span)
        assert res.indices == single.indices
        assert res.explained_variance == pytest.approx(single.explained_variance, abs=1e-9)
    picked = textspan(units[["L0H0", "embed"]], words, n_iters=5, rank=6, span=span)
    assert list(picked) == ["L0H0", "embed"]
    assert [r.indices for r in picked.values()] == [many["L0H0"].indices, many["embed"].indices]
    bare = textspan(data, atoms, texts, n_iters=5, rank=6, span=span, unit_names="abc")
    assert [r.unit for r in bare] == ["a", "b", "c"]
    assert [r.indices for r in bare] == [r.indices for r in many.values()]


def test_dictionary_object_carries_texts_and_embeddings():
    atoms, texts = dictionary(m=20, d=8, seed=3)
    x = torch.randn(50, 8, generator=gen(4), dtype=torch.float64)
    words = TextDictionary(tuple(texts), ((),) * len(texts), atoms)
    (bare,) = textspan(x, atoms, texts, n_iters=3)
    layout = UnitLayout(n_layers=1, n_heads=1, d_model=8, d_head=8, d_out=8)
    one = Units(x[:, None], ("L0H0",), layout)
    assert textspan(one, words, n_iters=3)["L0H0"].indices == bare.indices
    assert somp(one, words, n_iters=3)[0].unit == "L0H0"
    assert somp(one, words, n_iters=3)[0].indices == somp(x, atoms, texts, n_iters=3)[0].indices
    with pytest.raises(ValueError, match="no embeddings yet"):
        textspan(one, TextDictionary(tuple(texts), ((),) * len(texts)))
    with pytest.raises(ValueError, match="carries its texts"):
        textspan(one, words, texts)
    with pytest.raises(ValueError, match="pass the texts"):
        textspan(x, atoms)


def test_somp_recovers_planted_support_and_residual_is_orthogonal():
    atoms, texts = dictionary(m=80, d=32, seed=7)
    support = [5, 61, 23]
    coef = torch.randn(300, 3, generator=gen(8), dtype=torch.float64)
    x = coef @ atoms[support]
    res, fitted = somp(x, atoms, texts, n_iters=3, center=False)
    assert sorted(res.indices) == sorted(support)
    assert res.explained_variance[-1] == pytest.approx(1.0, abs=1e-9)
    # On unstructured data the least-squares residual is orthogonal to every chosen atom.
    noise = torch.randn(200, 32, generator=gen(9), dtype=torch.float64)
    res, fitted = somp(noise, atoms, texts, n_iters=6)
    resid = (noise - noise.mean(0)) - fitted @ atoms[res.indices]
    assert (resid @ atoms[res.indices].T).abs().max() < 1e-9
    assert len(set(res.indices)) == 6


def test_bad_inputs_are_named():
    atoms, texts = dictionary(m=10, d=8)
    with pytest.raises(ValueError, match="9 texts for 10 dictionary rows"):
        textspan(torch.randn(20, 8), atoms, texts[:9])
    with pytest.raises(ValueError, match="exceeds the dictionary size"):
        somp(torch.randn(20, 8), atoms, texts, n_iters=11)

"""Real implementations' conventions, re-expressed here in torch (no code copied), with the verdict each
must get from the oracle: pass where its conventions are the ones named, fail where they differ.

* open-reid's batch-hard TripletLoss (Cysu/open-reid reid/loss/triplet.py, carried into
  KaiyangZhou/deep-person-reid torchreid/losses/hard_mine_triplet_loss.py and reid-strong-baseline):
  d from |x|^2 + |y|^2 - 2 x.y floored at 1e-12 before the square root; the hardest positive is the
  largest d over the same-label row INCLUDING the anchor itself, the hardest negative the smallest
  d over the other labels (an empty set raises); MarginRankingLoss(margin 0.3): the mean over all
  anchors of relu(d_ap - d_an + margin). Fed L2-normalised rows.
* HobbitLong/SupContrast losses.py SupConLoss with one view, contrast_mode 'all': logits S/tau with
  the row maximum (self included) subtracted without gradient, the self column masked out, log of
  the masked sum plus 1e-9, the mean over the positives, times tau/base_tau (0.07/0.07), mean over
  the anchors; an anchor without a positive divides 0 by 0 (NaN). Fed L2-normalised rows.
* Spijkervet/SimCLR simclr/modules/nt_xent.py NT_Xent: two views per item, cosine similarity / tau,
  per row a cross-entropy over (its partner, every other row but itself), summed, divided by 2N.
* MalongTech/research-xbm ret_benchmark/losses/contrastive_loss.py ContrastiveLoss without its memory
  bank: positives pulled by 1 - S (self dropped by value), a negative with S > 0.5 adds S itself.
* tjddus9597/Proxy-Anchor-CVPR2020 code/losses.py Proxy_Anchor: positive term averaged over the proxies
  with a positive in the batch, negative term over all proxies.
* JDAI-CV/fast-reid fastreid/modeling/losses/circle_loss.py pairwise_circleloss (m 0.25, gamma 128)
  and pairwise_cosface (margin 0.25, gamma 128).
* Andrew-Brown1/Smooth_AP src/Smooth_AP_loss.py SmoothAP: equal class groups, the query ranked in its
  own list, the sigmoid's exponent clamped at 50.
"""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")

from gpwref.testing import LossMismatch, assert_loss_matches  # noqa: E402

EXAMPLES = 30


def open_reid_batch_hard(X, y, margin=0.3):
    U = torch.nn.functional.normalize(X, dim=1)
    sq = (U * U).sum(1)
    d = torch.sqrt(torch.clamp(sq[:, None] + sq[None, :] - 2 * U @ U.T, min=1e-12))
    same = y[:, None] == y[None, :]
    d_ap = torch.stack([d[i][same[i]].max() for i in range(len(y))])
    d_an = torch.stack([d[i][~same[i]].min() for i in range(len(y))])
    return torch.relu(d_ap - d_an + margin).mean()


OPEN_REID_HYPER = {"mining": "batch_hard", "distance": "euclidean", "margin": 0.3, "reduction": "mean"}


def test_open_reid_batch_hard_passes_where_every_anchor_has_a_positive():
    summary = assert_loss_matches(open_reid_batch_hard, "triplet", profile="paper", hyper=OPEN_REID_HYPER,
                                  batches={"singletons": False, "one_class": False, "duplicates": False, "m": (4, 16)},
                                  examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def test_open_reid_batch_hard_fails_on_a_singleton():
    # a singleton takes itself (d = 1e-6) as its hardest positive and counts in the mean over all m;
    # gpwref's batch_hard leaves an anchor without a positive out
    with pytest.raises(LossMismatch) as info:
        assert_loss_matches(open_reid_batch_hard, "triplet", profile="paper", hyper=OPEN_REID_HYPER,
                            batches={"singletons": True, "one_class": False, "m": (3, 12)}, examples=EXAMPLES)
    report = info.value.report
    labels = report.batch.labels.tolist()
    singletons = [i for i, c in enumerate(labels) if labels.count(c) == 1]
    assert singletons  # the failing batch holds a singleton
    assert report.best is not None and report.best.kind == "documented", str(report)
    assert "takes itself as its hardest positive" in report.best.label and str(singletons) in report.best.label


def supcontrast(X, y, tau=0.07, base_tau=0.07):
    U = torch.nn.functional.normalize(X, dim=1)
    logits = U @ U.T / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = 1.0 - torch.eye(len(y), dtype=X.dtype)
    positive = (y[:, None] == y[None, :]).to(X.dtype) * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True) + 1e-9)
    mean_log_prob_pos = (positive * log_prob).sum(1) / positive.sum(1)
    return (-(tau / base_tau) * mean_log_prob_pos).mean()


SUPCON_HYPER = {"temperature": 0.07, "base_temperature": 0.07, "reduction": "mean", "log_eps": 1e-9}


def test_supcontrast_passes_where_every_anchor_has_a_positive():
    summary = assert_loss_matches(supcontrast, "supcon", profile="paper", hyper=SUPCON_HYPER,
                                  batches={"singletons": False, "m": (2, 16)}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def test_supcontrast_is_nan_on_a_singleton_and_the_report_says_so():
    with pytest.raises(LossMismatch) as info:
        assert_loss_matches(supcontrast, "supcon", profile="paper", hyper=SUPCON_HYPER,
                            batches={"singletons": True, "m": (2, 12)}, examples=EXAMPLES)
    text = str(info.value.report)
    assert "the candidate's value is nan" in text and "differ by nan" not in text


def simclr_nt_xent(X, y, tau=0.5):
    """Spijkervet/SimCLR simclr/modules/nt_xent.py NT_Xent: two views per item (here: the two rows of a
    label), cosine similarities / tau, for each of the 2N rows a cross-entropy whose logits are its
    partner first and every row but itself and its partner after it; summed and divided by 2N."""
    labels = y.tolist()
    partner = torch.tensor([next(j for j in range(len(labels)) if j != i and labels[j] == labels[i])
                            for i in range(len(labels))])
    sim = torch.nn.functional.cosine_similarity(X[:, None, :], X[None, :, :], dim=2) / tau
    rows = torch.arange(len(labels))
    others = torch.ones_like(sim, dtype=torch.bool)
    others[rows, rows] = False
    others[rows, partner] = False
    logits = torch.cat([sim[rows, partner][:, None], sim[others].reshape(len(labels), -1)], dim=1)
    target = torch.zeros(len(labels), dtype=torch.long)
    return torch.nn.functional.cross_entropy(logits, target, reduction="sum") / len(labels)


def test_simclr_nt_xent_passes_on_two_views_per_item():
    summary = assert_loss_matches(simclr_nt_xent, "ntxent", profile="paper", hyper={"temperature": 0.5},
                                  batches={"pk": ((2, 12), 2)}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def test_simclr_nt_xent_against_pml_names_the_temperature():
    # with two views PML's denominator (the pair's positive and the negatives) is SimCLR's (every row
    # but the anchor), so at tau = 0.1 under 'pml' only the temperature (0.07 there) differs
    with pytest.raises(LossMismatch) as info:
        assert_loss_matches(functools.partial(simclr_nt_xent, tau=0.1), "ntxent", profile="pml",
                            batches={"pk": ((2, 8), 2)}, examples=EXAMPLES)
    # (the explainer's further batches are not two-view batches, so "agrees on this batch" is the claim)
    named = [a for a in info.value.report.alternatives if a.changes == {"temperature": 0.1}]
    assert named and named[0].fix == "hyper={'temperature': 0.1}"


def xbm_contrastive(X, y, margin=0.5):
    """MalongTech/research-xbm ret_benchmark/losses/contrastive_loss.py ContrastiveLoss (no memory bank):
    S = U U^T of the (already normalised) rows; per anchor the positives are same-label S < 1 - 1e-5
    (self dropped by value), each pulled by 1 - S; negatives with S > margin add S; summed over the
    anchors and divided by the batch size."""
    U = torch.nn.functional.normalize(X, dim=1)
    sim = U @ U.T
    terms = []
    for i in range(len(y)):
        pos = sim[i][(y == y[i]) & (sim[i] < 1 - 1e-5)]
        neg = sim[i][y != y[i]]
        terms.append((1 - pos).sum() + neg[neg > margin].sum())
    return sum(terms) / len(y)


def test_xbm_contrastive_gradients_pass():
    # XBM adds a kept negative's S, not S - margin: same gradient as the MS paper's hinge
    summary = assert_loss_matches(xbm_contrastive, "contrastive", profile="paper", check=("grad_emb",),
                                  batches={"duplicates": False, "m": (2, 16)}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def test_xbm_contrastive_value_fails_by_a_constant_per_kept_negative():
    # each negative with S > 0.5 adds 0.5 more than [S - 0.5]_+: the report names a constant offset
    with pytest.raises(LossMismatch) as info:
        assert_loss_matches(xbm_contrastive, "contrastive", profile="paper",
                            batches={"duplicates": False, "m": (2, 16)}, examples=EXAMPLES)
    report = info.value.report
    U = report.batch.embeddings / (report.batch.embeddings ** 2).sum(1, keepdims=True) ** 0.5
    labels = report.batch.labels
    S = U @ U.T
    kept_negatives = int(((S > 0.5) & (labels[:, None] != labels[None, :])).sum())
    text = str(report)
    assert "a term constant in the embeddings" in text and "grad_emb   ok" in text
    assert f"differ by {0.5 * kept_negatives / len(labels):.6g}" in text


def proxy_anchor_official(X, y, ref, ref_labels, alpha=32.0, mrg=0.1):
    """tjddus9597/Proxy-Anchor-CVPR2020 code/losses.py Proxy_Anchor: cosines of the normalised rows to
    the normalised proxies (one per class, proxy c = class c); per proxy log(1 + sum over its positives
    of exp(-alpha (s - mrg))) averaged over the proxies that have a positive in the batch, plus
    log(1 + sum over its negatives of exp(alpha (s + mrg))) averaged over all proxies."""
    cos = torch.nn.functional.normalize(X, dim=1) @ torch.nn.functional.normalize(ref, dim=1).T
    positive = (y[:, None] == ref_labels[None, :]).to(X.dtype)
    pos_sum = (positive * torch.exp(-alpha * (cos - mrg))).sum(0)
    neg_sum = ((1 - positive) * torch.exp(alpha * (cos + mrg))).sum(0)
    with_positive = int((positive.sum(0) > 0).sum())
    return torch.log1p(pos_sum).sum() / with_positive + torch.log1p(neg_sum).sum() / len(ref_labels)


def test_proxy_anchor_official_passes():
    summary = assert_loss_matches(proxy_anchor_official, "proxy_anchor", profile="paper",
                                  batches={"proxies": 1, "m": (2, 16)}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def fast_reid_circle(X, y, margin=0.25, gamma=128.0):
    """JDAI-CV/fast-reid fastreid/modeling/losses/circle_loss.py pairwise_circleloss: cosines of the
    normalised rows; positives = same label but the diagonal, negatives = other labels; factors
    relu(1 + m - s) and relu(s + m) on detached S; entries outside a set pushed to -1e8 before each
    logsumexp; torch's softplus (threshold 20) of the sum, mean over the anchors."""
    U = torch.nn.functional.normalize(X, dim=1)
    S = U @ U.T
    eye = torch.eye(len(y), dtype=X.dtype)
    is_pos = (y[:, None] == y[None, :]).to(X.dtype) - eye
    is_neg = (y[:, None] != y[None, :]).to(X.dtype)
    s_p, s_n = S * is_pos, S * is_neg
    alpha_p = torch.clamp_min(1 + margin - s_p.detach(), 0)
    alpha_n = torch.clamp_min(s_n.detach() + margin, 0)
    logit_p = -gamma * alpha_p * (s_p - (1 - margin)) - 1e8 * (1 - is_pos)
    logit_n = gamma * alpha_n * (s_n - margin) - 1e8 * (1 - is_neg)
    return torch.nn.functional.softplus(torch.logsumexp(logit_p, 1) + torch.logsumexp(logit_n, 1)).mean()


FAST_REID_CIRCLE_HYPER = {"m": 0.25, "gamma": 128.0, "reduction": "mean", "softplus_threshold": 20.0}


def test_fast_reid_circle_passes():
    summary = assert_loss_matches(fast_reid_circle, "circle", profile="paper", hyper=FAST_REID_CIRCLE_HYPER,
                                  batches={"m": (2, 16)}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def fast_reid_pairwise_cosface(X, y, margin=0.25, gamma=128.0):
    """JDAI-CV/fast-reid fastreid/modeling/losses/circle_loss.py pairwise_cosface: the same masks as
    pairwise_circleloss, logits -gamma s_p and gamma (s_n + margin), softplus of the two logsumexps'
    sum, mean over the anchors."""
    U = torch.nn.functional.normalize(X, dim=1)
    S = U @ U.T
    is_pos = (y[:, None] == y[None, :]).to(X.dtype) - torch.eye(len(y), dtype=X.dtype)
    is_neg = (y[:, None] != y[None, :]).to(X.dtype)
    logit_p = -gamma * S * is_pos - 1e8 * (1 - is_pos)
    logit_n = gamma * (S * is_neg + margin) - 1e8 * (1 - is_neg)
    return torch.nn.functional.softplus(torch.logsumexp(logit_p, 1) + torch.logsumexp(logit_n, 1)).mean()


def test_fast_reid_pairwise_cosface_passes_with_torch_softplus_threshold():
    summary = assert_loss_matches(fast_reid_pairwise_cosface, "pairwise_cosface", profile="paper",
                                  hyper={"softplus_threshold": 20.0}, batches={"m": (2, 16)}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def smooth_ap_official(X, y, anneal=0.01):
    """Andrew-Brown1/Smooth_AP src/Smooth_AP_loss.py SmoothAP: the batch as equal class groups (here:
    rows sorted by label); sigmoid with its exponent -x/anneal clamped to [-50, 50]; for query i and
    item j, rank over the whole batch 1 + sum_{k != j} sig(S_ik - S_ij) and the same over i's group
    (the query itself included in both); 1 - sum over queries and group items of the ratio / group /
    batch size."""
    order = torch.argsort(y, stable=True)
    U = torch.nn.functional.normalize(X[order], dim=1)
    m = len(y)
    group = int((y == y[0]).sum())
    num_id = m // group

    def sig(x):
        return 1.0 / (1.0 + torch.exp(torch.clamp(-x / anneal, -50, 50)))

    def ranks(S):  # S[..., q, j]: 1 + sum over k != j of sig(S_qk - S_qj)
        diff = S[..., :, None, :] - S[..., :, :, None]
        not_j = 1.0 - torch.eye(S.shape[-1], dtype=S.dtype)
        return 1 + (sig(diff) * not_j).sum(-1)

    all_rk = ranks(U @ U.T)
    G = U.reshape(num_id, group, -1)
    pos_rk = ranks(G @ G.transpose(1, 2))
    ap = 0
    for c in range(num_id):
        block = slice(c * group, (c + 1) * group)
        ap = ap + (pos_rk[c] / all_rk[block, block]).sum() / group / m
    return 1 - ap


SMOOTH_AP_OFFICIAL_HYPER = {"temperature": 0.01, "include_query": True, "sigmoid_clamp": 50.0}


def test_smooth_ap_official_passes_on_equal_class_groups():
    summary = assert_loss_matches(smooth_ap_official, "smooth_ap", profile="paper", hyper=SMOOTH_AP_OFFICIAL_HYPER,
                                  batches={"pk": ((2, 4), (2, 4))}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def test_smooth_ap_official_under_paper_names_include_query_on_equal_class_groups():
    # the official code ranks the query in its own list; it only accepts equal class groups, so the
    # explainer's further batches must be drawn with the caller's pk knob to confirm the suggestion
    with pytest.raises(LossMismatch) as info:
        assert_loss_matches(smooth_ap_official, "smooth_ap", profile="paper",
                            hyper={"temperature": 0.01, "sigmoid_clamp": 50.0},
                            batches={"pk": ((2, 4), (2, 4))}, examples=EXAMPLES)
    report = info.value.report
    named = [a for a in report.alternatives if a.changes == {"include_query": True}]
    assert named and named[0].confirmed == named[0].confirm_tried == 8, str(report)
    assert report.best is not None  # profile 'pml' (include_query, unclamped sigmoid) is simpler and agrees too

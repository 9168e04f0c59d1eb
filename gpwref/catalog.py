"""The catalog: one small frozen entry per loss. Tests, benchmarks, the CLI and the docs iterate it.

A new loss is one module in ``gpwref/losses/`` (formula docstring + ``value_and_grad``) plus one
entry here. An entry declares; it does not check (the checks are templates in ``tests/`` and
``verification/`` that run over every entry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .errors import GpwrefError
from .losses import multi_similarity
from .losses import recall_at_k
from .losses import pnp
from .losses import smooth_ap
from .losses import fast_ap
from .losses import soft_triple
from .losses import arcface
from .losses import cosface
from .losses import proxy_nca
from .losses import normalized_softmax
from .losses import proxy_anchor
from .losses import ranknet
from .losses import pairwise_hinge
from .losses import bpr
from .losses import dpsh
from .losses import pce_bound
from .losses import m3g
from .losses import pixel_affinity
from .losses import paired_domain_transfer
from .losses import circle, margin, nca, ntxent, ranked_list, snr_contrastive, supcon, tuplet_margin
from .losses import binomial_deviance, contrastive, triplet
from .losses import histogram, lifted_structure, npair


@dataclass(frozen=True)
class Hyper:
    """A hyper-parameter's rule, as text for error messages and as a predicate."""

    rule: str
    check: Callable[[object], bool]


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive() -> Hyper:
    return Hyper("a finite number > 0", lambda v: _is_real(v) and v > 0)


def non_negative() -> Hyper:
    return Hyper("a finite number >= 0", lambda v: _is_real(v) and v >= 0)


def real() -> Hyper:
    return Hyper("a finite number", _is_real)


def optional_non_negative() -> Hyper:
    return Hyper("None (no mining) or a finite number >= 0", lambda v: v is None or (_is_real(v) and v >= 0))


def positive_int() -> Hyper:
    return Hyper("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)


def one_of(*choices: object) -> Hyper:
    return Hyper(f"one of {list(choices)}", lambda v: v in choices)


@dataclass(frozen=True)
class LossEntry:
    name: str
    function: Callable  # value_and_grad(S, pairs, profile, **hyper) -> PairResult
    hyper: Mapping[str, Hyper]
    defaults: Mapping[str, Mapping[str, object]]  # profile name -> hyper-parameter defaults
    reference: str
    similarities: tuple[str, ...]  # which of "self", "negative-relative", "positive-relative" the weights use
    gpw_sign: bool = True  # G <= 0 on positives and >= 0 on negatives
    supports_ref: bool = True
    variants: tuple[Mapping[str, object], ...] = ({},)  # hyper overrides that `verify` runs as separate rows
    limits: str = ""  # known limits, with reasons
    boundary_param: str | None = None  # the hyper-parameter a drawn batch's exact-boundary value sets
    # "verified": every check of the catalog templates passes. Otherwise "experimental: <why>": the
    # entry computes, has its hand-derived tests, but some proof does not pass yet; the catalog
    # templates and `gpwref verify` skip it with this reason shown, and the docs table lists it.
    status: str = "verified"
    family: str = "pair"  # "pair" (sample-sample), "proxy" (sample-proxy), "ranking", "other"
    # A loss that is not a function of (S, labels) alone: ``compute(embeddings, labels, *, profile,
    # ref, ref_labels, normalize, ref_self, **hyper) -> Result``, which ``gpwref.compute`` calls in
    # place of the S pipeline (``function`` then refuses S with the reason).
    embeddings_function: Callable | None = None

    @property
    def doc(self) -> str:
        import inspect

        return inspect.getmodule(self.function).__doc__ or ""


CATALOG: tuple[LossEntry, ...] = (
    LossEntry(
        name="multi_similarity",
        function=multi_similarity.value_and_grad,
        hyper={"alpha": positive(), "beta": positive(), "lam": real(), "eps": optional_non_negative()},
        defaults={
            "paper": {"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": 0.1},
            "official": {"alpha": 2.0, "beta": 40.0, "lam": 0.5, "eps": 0.1},
            "pml": {"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": None},
        },
        reference="Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning. CVPR 2019",
        similarities=("self", "negative-relative", "positive-relative"),
        variants=({}, {"eps": None}),
        boundary_param="eps",
    ),
    LossEntry(
        name="lifted_structure",
        function=lifted_structure.value_and_grad,
        hyper={
            "form": one_of(*lifted_structure.FORMS),
            "distance": Hyper(
                f"one of {list(lifted_structure.DISTANCES)}, or a mapping {{'song': .., 'generalized': ..}} of them",
                lambda v: lifted_structure.is_per_form(v, lambda x: x in lifted_structure.DISTANCES),
            ),
            "pos_margin": Hyper("a finite number, or a mapping {'song': .., 'generalized': ..} of them",
                                lambda v: lifted_structure.is_per_form(v, _is_real)),
            "neg_margin": Hyper("a finite number, or a mapping {'song': .., 'generalized': ..} of them",
                                lambda v: lifted_structure.is_per_form(v, _is_real)),
        },
        defaults={
            "paper": {
                "form": "song",
                "distance": {"song": "euclidean", "generalized": "cosine"},
                "pos_margin": {"song": 0.0, "generalized": 1.0},
                "neg_margin": {"song": 1.0, "generalized": 0.0},
            },
            "pml": {"form": "song", "distance": "euclidean", "pos_margin": 0.0, "neg_margin": 1.0},
        },
        reference="Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature Embedding. "
        "CVPR 2016; generalized: Hermans, Beyer, Leibe. In Defense of the Triplet Loss. arXiv 2017, and the MS "
        "paper's form (Wang et al. CVPR 2019)",
        similarities=("self", "negative-relative"),
        supports_ref=False,
        variants=({"form": "song"}, {"form": "generalized"}),
        limits="batch only: Song's J_ij uses the negatives of the positive j as an anchor, which a reference item "
        "does not have (the generalized form shares the entry); song weights use self (D_ap) and negative-relative "
        "similarity, generalized only negative-relative; euclidean distances come from S, so pairs with "
        "2 - 2S <= 1e-12 are duplicates (D = 0, zero weight)",
    ),
    LossEntry(
        name="npair",
        function=npair.value_and_grad,
        hyper={},
        defaults={"paper": {}, "pml": {}},
        reference="Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. NeurIPS 2016 "
        "(pair choice and cosines as pytorch-metric-learning NPairsLoss)",
        similarities=("negative-relative",),
        supports_ref=False,
        limits="batch only: one (anchor, positive) pair per class is chosen inside the batch and each chosen "
        "positive is every other anchor's negative; Sohn's L2 regulariser acts on raw embedding norms, not on S, "
        "and is left to the caller",
    ),
    LossEntry(
        name="histogram",
        function=histogram.value_and_grad,
        hyper={
            "n_bins": positive_int(),
            "pair_rule": one_of("all", "triplets"),
            "node_precision": one_of("float64", "float32"),
        },
        defaults={
            "paper": {"n_bins": 100, "pair_rule": "all", "node_precision": "float64"},
            "pml": {"n_bins": 100, "pair_rule": "triplets", "node_precision": "float32"},
        },
        reference="Ustinova, Lempitsky. Learning Deep Embeddings with Histogram Loss. NeurIPS 2016 "
        "(discretisation as pytorch-metric-learning HistogramLoss)",
        similarities=("positive-relative",),
        variants=({}, {"n_bins": 4}),
        limits="G is piecewise constant and jumps at the nodes (a pair on a node takes the bin starting there); "
        "under node_precision='float32' (PML) L itself jumps by ~1e-6 relative at the nodes; pair similarities "
        "must lie in [-1, 1] (cosines); s = 1 lies in the last bin (PML crashes there)",
    ),
    LossEntry(
        name="contrastive",
        function=contrastive.value_and_grad,
        hyper={
            "distance": one_of("cosine", "euclidean"),
            "pos_margin": Hyper("None (no hinge on positives) or a finite number", lambda v: v is None or _is_real(v)),
            "neg_margin": real(),
            "reduction": one_of("anchor_sum", "avg_nonzero"),
        },
        defaults={
            "paper": {"distance": "cosine", "pos_margin": None, "neg_margin": 0.5, "reduction": "anchor_sum"},
            "pml": {"distance": "euclidean", "pos_margin": 0.0, "neg_margin": 1.0, "reduction": "avg_nonzero"},
        },
        reference="Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping. CVPR 2006; "
        "similarity form: Wang et al. CVPR 2019 (MS paper)",
        similarities=("self",),
        variants=(
            {},
            {"distance": "cosine", "pos_margin": 1.0, "neg_margin": 0.5, "reduction": "avg_nonzero"},
            {"distance": "euclidean", "pos_margin": 0.0, "neg_margin": 1.0, "reduction": "anchor_sum"},
        ),
        limits="Hadsell's squared terms are not modelled (unsquared hinges only, as PML and the MS paper); "
        "euclidean distances are computed from S, so pairs with 2 - 2S <= 1e-12 count as duplicates (d = 0)",
    ),
    LossEntry(
        name="triplet",
        function=triplet.value_and_grad,
        hyper={
            "mining": one_of("all", "batch_hard", "semi_hard"),
            "margin": non_negative(),
            "distance": one_of("cosine", "euclidean"),
            "reduction": one_of("mean", "avg_nonzero"),
            "miner_margin": Hyper("None (the loss margin) or a finite number >= 0", lambda v: v is None or (_is_real(v) and v >= 0)),
            "semi_hard_bound": one_of("strict", "inclusive"),
        },
        defaults={
            "paper": {"mining": "all", "margin": 0.1, "distance": "cosine", "reduction": "mean",
                      "miner_margin": None, "semi_hard_bound": "strict"},
            "pml": {"mining": "all", "margin": 0.05, "distance": "euclidean", "reduction": "avg_nonzero",
                    "miner_margin": 0.2, "semi_hard_bound": "inclusive"},
        },
        reference="Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015; Hermans, Beyer, Leibe. In Defense of the "
        "Triplet Loss for Person Re-Identification. arXiv 2017; similarity form: Wang et al. CVPR 2019",
        similarities=("positive-relative",),
        variants=({"mining": "all"}, {"mining": "batch_hard"}, {"mining": "semi_hard"}),
        limits="similarities describe mining='all'/'semi_hard' in the cosine form; batch_hard also selects by "
        "comparing pairs of the same kind (negative-relative) and distance='euclidean' scales by 1/d (self). "
        "all/semi_hard loop over anchors on (positives x negatives) blocks of at most 4M entries: memory O(m n), "
        "time O(sum_i |P_i| |N_i|)",
        boundary_param="margin",
    ),
    LossEntry(
        name="binomial_deviance",
        function=binomial_deviance.value_and_grad,
        hyper={"alpha": positive(), "beta": positive(), "lam": real()},
        defaults={"paper": {"alpha": 2.0, "beta": 40.0, "lam": 0.5}},
        reference="Yi, Lei, Liao, Li. Deep Metric Learning for Person Re-Identification. ICPR 2014; "
        "GPW form: Wang et al. CVPR 2019",
        similarities=("self",),
        limits="paper profile only: pytorch-metric-learning (2.x) has no binomial deviance loss; the first MS "
        "author's code (DeepMetric-XW Binomial.py) differs in its self rule (S < 1) and skips anchors without negatives",
    ),
    LossEntry(
        name="circle",
        function=circle.value_and_grad,
        hyper={
            "m": non_negative(),
            "gamma": positive(),
            "reduction": one_of("mean", "avg_nonzero"),
            "detach_factors": Hyper("True or False", lambda v: isinstance(v, bool)),
            "softplus_threshold": Hyper("None (exact softplus) or a finite number", lambda v: v is None or _is_real(v)),
        },
        defaults={
            "paper": {"m": 0.4, "gamma": 80.0, "reduction": "mean", "detach_factors": True, "softplus_threshold": None},
            "pml": {"m": 0.4, "gamma": 80.0, "reduction": "avg_nonzero", "detach_factors": True, "softplus_threshold": 20.0},
        },
        reference="Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. Circle Loss: A Unified Perspective of Pair Similarity "
        "Optimization. CVPR 2020",
        similarities=("self", "negative-relative"),
        variants=({}, {"reduction": "mean", "softplus_threshold": 20.0}, {"m": 0.25, "gamma": 128.0}),
        limits="G is the published gradient with the factors a_ij detached (not the derivative of the value; "
        "detach_factors=False gives that, and it breaks the GPW sign rule); TinyZeaMays' batch-pooled single "
        "term is not modelled",
    ),
    LossEntry(
        name="supcon",
        function=supcon.value_and_grad,
        hyper={
            "temperature": positive(),
            "base_temperature": Hyper("None (no factor) or a finite number > 0", lambda v: v is None or (_is_real(v) and v > 0)),
            "reduction": one_of("sum", "mean", "avg_nonzero"),
            "log_eps": non_negative(),
            "require_both_kinds": Hyper("True or False", lambda v: isinstance(v, bool)),
        },
        defaults={
            "paper": {"temperature": 0.1, "base_temperature": None, "reduction": "sum", "log_eps": 0.0, "require_both_kinds": False},
            "pml": {"temperature": 0.1, "base_temperature": None, "reduction": "avg_nonzero", "log_eps": 0.0, "require_both_kinds": True},
        },
        reference="Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan. Supervised Contrastive "
        "Learning. NeurIPS 2020",
        similarities=("self", "negative-relative"),
        gpw_sign=False,
        variants=(
            {},
            {"temperature": 0.1, "base_temperature": 0.07, "reduction": "mean", "log_eps": 1e-9},
            {"reduction": "mean"},
        ),
        limits="not GPW-signed: a positive whose softmax share exceeds 1/|P_i| gets a positive weight; "
        "log_eps > 0 (official code) makes G the gradient with the row maximum detached",
    ),
    LossEntry(
        name="ntxent",
        function=ntxent.value_and_grad,
        hyper={
            "temperature": positive(),
            "denominator": one_of("all", "positive_and_negatives"),
            "require_both_kinds": Hyper("True or False", lambda v: isinstance(v, bool)),
        },
        defaults={
            "paper": {"temperature": 0.1, "denominator": "all", "require_both_kinds": False},
            "pml": {"temperature": 0.07, "denominator": "positive_and_negatives", "require_both_kinds": True},
        },
        reference="Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. arXiv 2018; "
        "Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of Visual Representations. ICML 2020",
        similarities=("self", "negative-relative"),
        gpw_sign=False,
        variants=({}, {"denominator": "positive_and_negatives"}, {"denominator": "all"}),
        limits="denominator='all' is not GPW-signed when an anchor has several positives; PML's + finfo.tiny "
        "inside the log is not modelled (it matters only for softmax shares below 2.2e-308)",
    ),
    LossEntry(
        name="margin",
        function=margin.value_and_grad,
        hyper={
            "margin": non_negative(),
            "beta": Hyper(
                "a finite number, or a non-empty {class id (int): finite number} mapping (per-class betas)",
                lambda v: _is_real(v) or (isinstance(v, Mapping) and len(v) > 0 and all(
                    isinstance(k, int) and not isinstance(k, bool) and _is_real(x) for k, x in v.items())),
            ),
            "nu": non_negative(),
            "pairing": one_of("pairs", "triplets"),
            "dist_eps": non_negative(),
        },
        defaults={
            "paper": {"margin": 0.2, "beta": 1.2, "nu": 0.0, "pairing": "pairs", "dist_eps": 0.0},
            "pml": {"margin": 0.2, "beta": 1.2, "nu": 0.0, "pairing": "triplets", "dist_eps": 0.0},
        },
        reference="Wu, Manmatha, Smola, Kraehenbuehl. Sampling Matters in Deep Embedding Learning. ICCV 2017",
        similarities=("self",),
        variants=({}, {"nu": 0.1}, {"pairing": "triplets", "nu": 0.05}, {"pairing": "pairs", "dist_eps": 1e-8}),
        limits="extras['grad_beta'] = dL/dbeta (global or per class); the paper's distance-weighted sampling and the "
        "official codes' one sampled triplet per anchor are random miners and are not modelled",
    ),
    LossEntry(
        name="nca",
        function=nca.value_and_grad,
        hyper={
            "softmax_scale": positive(),
            "objective": one_of("log", "expected"),
            "zero_if_single_row": Hyper("True or False", lambda v: isinstance(v, bool)),
        },
        defaults={
            "paper": {"softmax_scale": 1.0, "objective": "expected", "zero_if_single_row": False},
            "pml": {"softmax_scale": 1.0, "objective": "log", "zero_if_single_row": True},
        },
        reference="Goldberger, Roweis, Hinton, Salakhutdinov. Neighbourhood Components Analysis. NIPS 2004",
        similarities=("self", "negative-relative"),
        variants=({}, {"objective": "log"}, {"softmax_scale": 16.0}),
        limits="PML drops an anchor whose q_i underflows to 0 (softmax_scale above ~186); gpwref keeps it "
        "(log q_i by log-sum-exp)",
    ),
    LossEntry(
        name="tuplet_margin",
        function=tuplet_margin.value_and_grad,
        hyper={
            "margin_deg": real(),
            "scale": positive(),
            "require_both_kinds": Hyper("True or False", lambda v: isinstance(v, bool)),
        },
        defaults={
            "paper": {"margin_deg": 5.73, "scale": 64.0, "require_both_kinds": False},
            "pml": {"margin_deg": 5.73, "scale": 64.0, "require_both_kinds": True},
        },
        reference="Yu, Tao. Deep Metric Learning with Tuplet Margin Loss. ICCV 2019",
        similarities=("self", "negative-relative"),
        gpw_sign=False,
        variants=({}, {"margin_deg": 10.0, "scale": 16.0}),
        limits="not GPW-signed: a positive pair closer than the margin angle (S > cos(margin)) gets a positive "
        "weight; positive pairs with |S| within 5e-13 of 1 (or beyond) take theta = 0 or pi with no gradient "
        "(arccos's slope is infinite there; PML returns inf/NaN)",
    ),
    LossEntry(
        name="ranked_list",
        function=ranked_list.value_and_grad,
        hyper={
            "margin": non_negative(),
            "alpha": Hyper("None (1 + margin/2) or a finite number", lambda v: v is None or _is_real(v)),
            "Tp": non_negative(),
            "Tn": non_negative(),
            "imbalance": Hyper("a number in [0, 1]", lambda v: _is_real(v) and 0 <= v <= 1),
            "denominator_eps": non_negative(),
            "count_zero_distance": Hyper("True or False", lambda v: isinstance(v, bool)),
        },
        defaults={
            "paper": {"margin": 0.4, "alpha": None, "Tp": 0.0, "Tn": 10.0, "imbalance": 0.5,
                      "denominator_eps": 0.0, "count_zero_distance": True},
            "pml": {"margin": 0.4, "alpha": None, "Tp": 0.0, "Tn": 10.0, "imbalance": 0.5,
                    "denominator_eps": 1e-5, "count_zero_distance": False},
        },
        reference="Wang, Hua, Kodirov, Hu, Garnier, Robertson. Ranked List Loss for Deep Metric Learning. CVPR 2019",
        similarities=("self", "negative-relative"),
        gpw_sign=False,
        variants=({}, {"Tp": 1.0, "Tn": 2.0, "alpha": 1.1}, {"Tn": 0.0}),
        limits="not GPW-signed for Tn > 0 (or Tp > 0): the live softmax weights give the least violating "
        "negatives a negative weight; PML has no margin/Tn defaults (the RLL paper's 0.4 and 10 are used) "
        "and no reference set",
    ),
    LossEntry(
        name="snr_contrastive",
        function=snr_contrastive.value_and_grad,
        embeddings_function=snr_contrastive.compute,
        hyper={"pos_margin": real(), "neg_margin": real()},
        defaults={"pml": {"pos_margin": 0.0, "neg_margin": 1.0}},
        reference="Yuan, Chen, Zhang, Wang, Liu. Signal-To-Noise Ratio: A Robust Distance Metric for Deep Metric "
        "Learning. CVPR 2019",
        similarities=("self",),
        limits="not a function of S alone (the SNR distance uses each row's coordinate mean): gpwref.compute "
        "runs it from the embeddings, from_similarity refuses it; grad_sim holds the means fixed; only PML's "
        "contrastive form (no zero-mean regulariser, no triplet form)",
        family="other",
    ),
    LossEntry(
        name="ranknet",
        function=ranknet.value_and_grad,
        hyper={"sigma": positive(), "reduction": one_of("mean", "mean_nonzero", "sum")},
        defaults={
            "paper": {"sigma": 1.0, "reduction": "mean"},
            "pml": {"sigma": 1.0, "reduction": "mean_nonzero"},
        },
        reference="Burges, Shaked, Renshaw, Lazier, Deeds, Hamilton, Hullender. Learning to Rank using Gradient Descent. ICML 2005",
        similarities=("positive-relative",),
        variants=({}, {"sigma": 5.0}, {"reduction": "sum"}),
        family="ranking",
    ),
    LossEntry(
        name="pairwise_hinge",
        function=pairwise_hinge.value_and_grad,
        hyper={"margin": non_negative(), "reduction": one_of("mean", "mean_nonzero", "sum")},
        defaults={
            "paper": {"margin": 1.0, "reduction": "mean"},
            "pml": {"margin": 0.05, "reduction": "mean_nonzero"},
        },
        reference="Herbrich, Graepel, Obermayer. Large Margin Rank Boundaries for Ordinal Regression. 2000; Joachims. Optimizing Search Engines using Clickthrough Data. KDD 2002",
        similarities=("positive-relative",),
        variants=({}, {"margin": 0.1}, {"margin": 0.1, "reduction": "mean_nonzero"}),
        boundary_param="margin",
        family="ranking",
    ),
    LossEntry(
        name="bpr",
        function=bpr.value_and_grad,
        hyper={"reduction": one_of("sum", "mean", "mean_nonzero")},
        defaults={"paper": {"reduction": "sum"}},
        reference="Rendle, Freudenthaler, Gantner, Schmidt-Thieme. BPR: Bayesian Personalized Ranking from Implicit Feedback. UAI 2009",
        similarities=("positive-relative",),
        variants=({}, {"reduction": "mean"}),
        limits="the L2 regulariser of BPR-Opt acts on model parameters and is not part of the pair loss",
        family="ranking",
    ),
    LossEntry(
        name="dpsh",
        function=dpsh.value_and_grad,
        hyper={"reduction": one_of("sum", "mean")},
        defaults={"paper": {"reduction": "sum"}},
        reference="Li, Wang, Kang. Feature Learning based Deep Supervised Hashing with Pairwise Labels. IJCAI 2016",
        similarities=("self",),
        variants=({}, {"reduction": "mean"}),
        limits="raw codes (normalize=False) are the paper's setting; the quantisation term is not a pair term",
        family="pair",
    ),
    LossEntry(
        name="pce_bound",
        function=pce_bound.value_and_grad,
        hyper={"lam": positive()},
        defaults={"paper": {"lam": 1.0}},
        reference="Boudiaf, Rony, Ziko, Granger, Pedersoli, Piantanida, Ben Ayed. A unifying mutual information view of metric learning: cross-entropy vs. pairwise losses. ECCV 2020",
        similarities=("self", "negative-relative"),
        gpw_sign=False,
        supports_ref=False,
        variants=({}, {"lam": 0.1}),
        limits="unit rows only (self terms z_i.z_i taken as 1); the batch is its own reference set; constants as recorded in catalog.md 2.18 [P], bound not confirmed",
        family="pair",
    ),
    LossEntry(
        name="m3g",
        function=m3g.value_and_grad,
        hyper={"eps": positive(), "tol": positive(), "max_iter": positive_int()},
        defaults={"paper": {"eps": 0.1, "tol": 1e-13, "max_iter": 1000}},
        reference="Piran, Klein, Thornton, Cuturi. Contrasting Multiple Representations with the Multi-Marginal Matching Gap. ICML 2024",
        similarities=("negative-relative",),
        variants=({}, {"eps": 0.5}),
        limits="two views in the catalog frame (second view as ref, item ids once per view); k views via gpwref.losses.m3g.matching_gap (n^k memory); fixed eps",
        family="other",
    ),
    LossEntry(
        name="pixel_affinity",
        function=pixel_affinity.value_and_grad,
        hyper={
            "width": Hyper("None (one row of pixels) or an integer >= 1", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)),
            "kernel_size": Hyper("an odd integer >= 3", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 3 and v % 2 == 1),
            "dilation": positive_int(),
            "affinity": one_of("cosine", "probability"),
        },
        defaults={"paper": {"width": None, "kernel_size": 3, "dilation": 1, "affinity": "cosine"}},
        reference="Yang, Song, Ge, Li. BoxSnake: Polygonal Instance Segmentation with Box Supervision. ICCV 2023 (BoxInst-form local pairwise term)",
        similarities=("self",),
        supports_ref=False,
        variants=({}, {"width": 3}, {"width": 2, "kernel_size": 3, "dilation": 2}, {"affinity": "probability", "width": 3}),
        limits="rows are the pixels of one image (row-major, `width` per row); labels are colour-region ids; pulls only; BoxSnake's default |m_i - m_j| term is not a function of S",
        family="other",
    ),
    LossEntry(
        name="paired_domain_transfer",
        function=paired_domain_transfer.value_and_grad,
        hyper={"margin": Hyper("None (pull only) or a finite number", lambda v: v is None or _is_real(v))},
        defaults={"paper": {"margin": None}},
        reference="Gupta, Hoffman, Malik. Cross Modal Distillation for Supervision Transfer. CVPR 2016 (paired-embedding L2 transfer, on unit rows)",
        similarities=("self",),
        variants=({}, {"margin": 0.3}),
        limits="unit rows: the raw-feature L2 of the paper is not a function of S; labels are pair ids",
        family="pair",
    ),
    LossEntry(
        name="proxy_anchor",
        function=proxy_anchor.value_and_grad,
        hyper={"alpha": positive(), "margin": real()},
        defaults={"paper": {"alpha": 32.0, "margin": 0.1}, "pml": {"alpha": 32.0, "margin": 0.1}},
        reference="Kim, Kim, Cho, Kwak. Proxy Anchor Loss for Deep Metric Learning. CVPR 2020",
        similarities=("self", "negative-relative"),
        supports_ref=True,
        limits="sample-to-proxy: ref IS the proxies (ref_labels = their classes) and is required; per_anchor is per proxy",
        family="proxy",
    ),
    LossEntry(
        name="proxy_nca",
        function=proxy_nca.value_and_grad,
        hyper={"scale": positive(), "include_positive": one_of(False, True)},
        defaults={"paper": {"scale": 1.0, "include_positive": False}, "pml": {"scale": 1.0, "include_positive": True}},
        reference="Movshovitz-Attias, Toshev, Leung, Ioffe, Singh. No Fuss Distance Metric Learning using Proxies. ICCV 2017",
        similarities=("self", "negative-relative"),
        supports_ref=True,
        variants=({}, {"scale": 9.0}, {"include_positive": True}),
        limits="sample-to-proxy: ref IS the proxies (ref_labels = their classes) and is required",
        family="proxy",
    ),
    LossEntry(
        name="normalized_softmax",
        function=normalized_softmax.value_and_grad,
        hyper={"temperature": positive()},
        defaults={"paper": {"temperature": 0.05}, "pml": {"temperature": 0.05}},
        reference="Zhai, Wu. Classification is a Strong Baseline for Deep Metric Learning. BMVC 2019",
        similarities=("self", "negative-relative"),
        supports_ref=True,
        limits="sample-to-proxy: ref IS the class weights/proxies (ref_labels = their classes) and is required",
        family="proxy",
    ),
    LossEntry(
        name="cosface",
        function=cosface.value_and_grad,
        hyper={"scale": positive(), "margin": real()},
        defaults={"paper": {"scale": 64.0, "margin": 0.35}, "pml": {"scale": 64.0, "margin": 0.35}},
        reference="Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu. CosFace: Large Margin Cosine Loss for Deep Face Recognition. CVPR 2018",
        similarities=("self", "negative-relative"),
        supports_ref=True,
        limits="sample-to-proxy: ref IS the class weights (ref_labels = their classes) and is required",
        family="proxy",
    ),
    LossEntry(
        name="arcface",
        function=arcface.value_and_grad,
        hyper={
            "scale": positive(),
            "margin": Hyper("an angle in radians, 0 <= margin < pi", lambda v: _is_real(v) and 0 <= v < math.pi),
            "monotone_fix": one_of(True, False),
        },
        defaults={
            "paper": {"scale": 64.0, "margin": 0.5, "monotone_fix": True},
            "pml": {"scale": 64.0, "margin": math.radians(28.6), "monotone_fix": True},
        },
        reference="Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face Recognition. CVPR 2019",
        similarities=("self", "negative-relative"),
        supports_ref=True,
        limits="sample-to-proxy: ref IS the class weights (ref_labels = their classes) and is required; "
        "raises where a positive pair has S = 1 exactly (infinite gradient at theta = 0); psi jumps at theta = pi - margin",
        family="proxy",
    ),
    LossEntry(
        name="soft_triple",
        function=soft_triple.value_and_grad,
        hyper={"la": positive(), "gamma": positive(), "margin": real(), "center_softmax": one_of("centers", "classes")},
        defaults={
            "paper": {"la": 20.0, "gamma": 0.1, "margin": 0.01, "center_softmax": "centers"},
            "pml": {"la": 20.0, "gamma": 0.1, "margin": 0.01, "center_softmax": "centers"},
        },
        reference="Qian, Shang, Sun, Hu, Li, Jin. SoftTriple Loss: Deep Metric Learning Without Triplet Sampling. ICCV 2019",
        similarities=("self", "negative-relative"),
        gpw_sign=False,
        supports_ref=True,
        variants=({}, {"center_softmax": "classes", "gamma": 10.0, "la": 8.0}),
        limits="sample-to-proxy: ref IS the centers (ref_labels = their classes) and is required; a center far below its "
        "class's soft maximum gets a weight of the opposite sign; center_softmax='classes' needs equal centers per class",
        family="proxy",
    ),
    LossEntry(
        name="fast_ap",
        status="verified",
        function=fast_ap.value_and_grad,
        hyper={"num_bins": positive_int(), "kink_slope": one_of("zero", "left")},
        defaults={"paper": {"num_bins": 10, "kink_slope": "zero"}, "pml": {"num_bins": 10, "kink_slope": "zero"}},
        reference="Cakir, He, Xia, Kulis, Sclaroff. Deep Metric Learning to Rank. CVPR 2019",
        similarities=("self", "negative-relative", "positive-relative"),
        gpw_sign=False,
        supports_ref=True,
        variants=({}, {"kink_slope": "left"}),
        limits="histogram kernels are piecewise linear: kinks at bin centres and feet follow kink_slope; "
        "extras['official_backward_scale'] = N'/2 is the official backward's extra factor",
        family="ranking",
    ),
    LossEntry(
        name="smooth_ap",
        status="verified",
        function=smooth_ap.value_and_grad,
        hyper={
            "temperature": positive(),
            "include_query": one_of(False, True),
            "sigmoid_clamp": Hyper("None (plain sigmoid) or a finite number > 0", lambda v: v is None or (_is_real(v) and v > 0)),
        },
        defaults={
            "paper": {"temperature": 0.01, "include_query": False, "sigmoid_clamp": None},
            "pml": {"temperature": 0.01, "include_query": True, "sigmoid_clamp": None},
        },
        reference="Brown, Xie, Kalogeiton, Zisserman. Smooth-AP: Smoothing the Path Towards Large-Scale Image Retrieval. ECCV 2020",
        similarities=("self", "negative-relative", "positive-relative"),
        gpw_sign=False,
        supports_ref=True,
        variants=({}, {"include_query": True, "sigmoid_clamp": 50.0}),
        limits="positive weights can take either sign; include_query holds the query's own score at 1 (unit rows)",
        family="ranking",
    ),
    LossEntry(
        name="pnp",
        status="verified",
        function=pnp.value_and_grad,
        hyper={
            "variant": one_of("O", "Ds", "Dq", "Iu", "Ib"),
            "b": positive(),
            "alpha": positive(),
            "anneal": positive(),
            "include_query": one_of(False, True),
            "sigmoid_clamp": Hyper("None (plain sigmoid) or a finite number > 0", lambda v: v is None or (_is_real(v) and v > 0)),
        },
        defaults={
            "paper": {"variant": "O", "b": 2.0, "alpha": 1.0, "anneal": 0.01, "include_query": False, "sigmoid_clamp": None},
            "pml": {"variant": "O", "b": 2.0, "alpha": 1.0, "anneal": 0.01, "include_query": True, "sigmoid_clamp": 50.0},
        },
        reference="Li, Ji, Jiang, Zhang, Wang, Tian, Cheng, Tang. Rethinking the Optimization of Average Precision: "
        "Only Penalizing Negative Instances before Positive Ones is Enough. AAAI 2022",
        similarities=("self", "negative-relative", "positive-relative"),
        supports_ref=True,
        variants=({}, {"variant": "Ds"}, {"variant": "Dq"}, {"variant": "Iu"}, {"variant": "Ib"}),
        limits="include_query holds the query's own score at 1 (unit rows)",
        family="ranking",
    ),
    LossEntry(
        name="recall_at_k",
        status="verified",
        function=recall_at_k.value_and_grad,
        hyper={
            "k_values": Hyper(
                "a non-empty tuple of integers >= 1",
                lambda v: isinstance(v, tuple) and len(v) > 0 and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in v),
            ),
            "tau1": positive(),
            "tau2": positive(),
            "include_query": one_of(False, True),
            "sigmoid_clamp": Hyper("None (plain sigmoid) or a finite number > 0", lambda v: v is None or (_is_real(v) and v > 0)),
            "recall_cap": one_of(False, True),
            "simix": Hyper("None (no SiMix) or a mixing coefficient in [0, 1]", lambda v: v is None or (_is_real(v) and 0 <= v <= 1)),
        },
        defaults={
            "paper": {
                "k_values": (1, 2, 4, 8, 16), "tau1": 0.01, "tau2": 1.0, "include_query": False,
                "sigmoid_clamp": None, "recall_cap": False, "simix": None,
            },
        },
        reference="Patel, Tolias, Matas. Recall@k Surrogate Loss with Large Batches and Similarity Mixup. CVPR 2022",
        similarities=("self", "negative-relative", "positive-relative"),
        gpw_sign=False,
        supports_ref=True,
        variants=(
            {},
            {"include_query": True, "sigmoid_clamp": 50.0, "recall_cap": True, "k_values": (1, 2, 4)},
            {"simix": 0.3},
            {"simix": 0.3, "include_query": True, "sigmoid_clamp": 50.0, "recall_cap": True, "k_values": (1, 2, 4)},
        ),
        limits="simix needs the batch as its own reference set and assumes unit rows (S's diagonal taken as 1); "
        "positive weights can take either sign",
        family="ranking",
    ),
    # --- new entries above this line (one LossEntry per loss; keep this marker) ---
)

LOSSES: tuple[str, ...] = tuple(entry.name for entry in CATALOG)


def get_entry(loss: str) -> LossEntry:
    for entry in CATALOG:
        if entry.name == loss:
            return entry
    raise GpwrefError("loss", f"must be one of {list(LOSSES)}", repr(loss))


def resolve_hyper(entry: LossEntry, profile_name: str, overrides: Mapping[str, object]) -> dict[str, object]:
    if profile_name not in entry.defaults:
        raise GpwrefError(
            "profile",
            f"loss '{entry.name}' has no '{profile_name}' convention; it is defined under {sorted(entry.defaults)}",
        )
    params = dict(entry.defaults[profile_name])
    for key, value in overrides.items():
        if key not in entry.hyper:
            raise GpwrefError(key, f"is not a hyper-parameter of '{entry.name}'; accepted: {sorted(entry.hyper)}")
        params[key] = value
    for key, value in params.items():
        if not entry.hyper[key].check(value):
            raise GpwrefError(key, f"'{entry.name}' needs {entry.hyper[key].rule}", repr(value))
    return params

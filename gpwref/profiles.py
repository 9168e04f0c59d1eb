"""Convention profiles: the rules on which implementations of "the same loss" differ, as plain data.

A profile names every cross-cutting rule (how the self pair is recognised, what happens to an anchor
whose mined set is empty, how the mining inequality is evaluated, ...). Hyper-parameter defaults and
loss-specific variants live beside each loss in the catalog (``LossEntry.defaults[profile]``), so
adding a loss never touches this file. ``gpwref.profile_diff`` prints a profile with its loss
defaults (``table``) and lists the rules and defaults on which two profiles differ (``diff``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

from .errors import GpwrefError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # Which same-label pairs are "self" and never pairs.
    #   "index": the pair (i, i) when the reference set is the batch (and ``ref_self`` pairs otherwise).
    #   "value": additionally every same-label pair with S >= self_threshold (official MS code).
    self_rule: str
    self_threshold: float | None
    # An anchor with no positive or no negative at all (before mining):
    #   "allow": the loss defines its contribution (usually an empty sum); "raise": GpwrefError.
    degenerate: str
    # An anchor whose mined positive set or mined negative set is empty:
    #   "keep": the non-empty half still counts; "skip_anchor": the anchor contributes nothing.
    empty_mined: str
    # How the MS mining inequality is evaluated in floating point (identical in exact arithmetic):
    #   "shift_extreme": S_ij > min_pos - eps,  S_ij < max_neg + eps   (the paper's formula)
    #   "shift_pair":    S_ij + eps > min_pos,  S_ij - eps < max_neg   (official code and PML)
    mining_compare: str
    # PML's GenericPairLoss returns a zero loss when every pair index list has length <= 1.
    zero_if_at_most_one_pair: bool
    # Log-sum-exp over an empty set: "neg_inf" (mathematical) or "zero" (PML's masked logsumexp).
    empty_lse: str
    sources: Mapping[str, str]

    def rules(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "description", "sources")}


PAPER = Profile(
    name="paper",
    description="the formulas as the MS paper (Wang et al., CVPR 2019) writes them",
    self_rule="index",
    self_threshold=None,
    degenerate="allow",
    empty_mined="keep",
    mining_compare="shift_extreme",
    zero_if_at_most_one_pair=False,
    empty_lse="neg_inf",
    sources={
        "self_rule": "docs/conventions.md#notation: P_i = {j : y_j = y_i, j != i}",
        "empty_mined": "paper Eq. for L_MS: an empty kept set gives log(1 + 0) = 0",
        "mining_compare": "paper mining rule: S_ij > min S_ik - eps, S_ij < max S_ik + eps",
    },
)

OFFICIAL = Profile(
    name="official",
    description="the official MS-loss code's semantics (MalongTech/research-ms-loss @8db6c9c)",
    self_rule="value",
    self_threshold=1.0 - 1e-5,
    degenerate="raise",
    empty_mined="skip_anchor",
    mining_compare="shift_pair",
    zero_if_at_most_one_pair=False,
    empty_lse="neg_inf",
    sources={
        "self_rule": "ret_benchmark/losses/multi_similarity_loss.py:35 (pos_pair_ < 1 - epsilon)",
        "degenerate": "multi_similarity_loss.py:38-39 (min()/max() of an empty tensor raises)",
        "empty_mined": "multi_similarity_loss.py:41-42 (continue when a mined set is empty)",
        "mining_compare": "multi_similarity_loss.py:38-39 (neg + margin > min(pos), pos - margin < max(neg))",
    },
)

PML = Profile(
    name="pml",
    description="pytorch-metric-learning 2.x semantics and defaults",
    self_rule="index",
    self_threshold=None,
    degenerate="allow",
    empty_mined="keep",
    mining_compare="shift_pair",
    zero_if_at_most_one_pair=True,
    empty_lse="zero",
    sources={
        "self_rule": "utils/loss_and_miner_utils.py get_matches_and_diffs (diagonal only when ref_labels is labels)",
        "empty_mined": "losses/multi_similarity_loss.py: masked logsumexp per half, MeanReducer",
        "mining_compare": "miners/multi_similarity_miner.py (pos - eps < max_neg, neg + eps > min_pos)",
        "zero_if_at_most_one_pair": "losses/generic_pair_loss.py compute_loss",
        "empty_lse": "utils/loss_and_miner_utils.py logsumexp (rows with no kept entry give 0)",
    },
)

PROFILES: dict[str, Profile] = {p.name: p for p in (PAPER, OFFICIAL, PML)}


def get_profile(profile: "str | Profile") -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise GpwrefError("profile", f"must be one of {sorted(PROFILES)}", repr(profile))
    return PROFILES[profile]


# A derived profile's name -> the profile whose per-loss hyper-parameter defaults it uses.
DERIVED_FROM: dict[str, str] = {}
_NAME = __import__("re").compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def derive(name: str, *, base: "str | Profile" = "paper", description: str | None = None, **rules) -> Profile:
    """A named custom profile: ``base``'s rules with ``rules`` changed, registered under ``name``.

    Every loss defined under ``base`` accepts ``name`` (with ``base``'s hyper-parameter defaults) in
    ``gpwref.compute``, ``from_similarity``, ``gpwref.torch`` and ``gpwref.testing``; e.g.
    ``gpwref.profiles.derive("rdml", base="official", self_rule="index", self_threshold=None)``.
    Deriving the same name again with the same rules returns the registered profile.
    """
    parent = get_profile(base)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise GpwrefError("name", "must be a profile name: a letter, then letters, digits, '_', '.' or '-'", repr(name))
    known = parent.rules()
    unknown = sorted(set(rules) - set(known))
    if unknown:
        raise GpwrefError("rules", f"must be among the profile rules {sorted(known)}", repr(unknown))
    profile = Profile(**{**{f.name: getattr(parent, f.name) for f in fields(parent)}, **rules, "name": name,
                         "description": description or f"'{parent.name}' with {rules}",
                         "sources": {**parent.sources, **{key: f"derived from '{parent.name}'" for key in rules}}})
    _check_rules(profile)
    if name in PROFILES:
        if name in DERIVED_FROM and PROFILES[name].rules() == profile.rules() and DERIVED_FROM[name] == defaults_name(parent.name):
            return PROFILES[name]
        raise GpwrefError("name", "is already a profile with other rules (pick another name)", repr(name))
    PROFILES[name] = profile
    DERIVED_FROM[name] = defaults_name(parent.name)
    return profile


def defaults_name(profile_name: str) -> str:
    """The profile whose hyper-parameter defaults ``profile_name`` uses (itself unless derived)."""
    return DERIVED_FROM.get(profile_name, profile_name)


_CHOICES = {
    "self_rule": ("index", "value"),
    "degenerate": ("allow", "raise"),
    "empty_mined": ("keep", "skip_anchor"),
    "mining_compare": ("shift_extreme", "shift_pair"),
    "zero_if_at_most_one_pair": (True, False),
    "empty_lse": ("neg_inf", "zero"),
}


def _check_rules(profile: Profile) -> None:
    for rule, choices in _CHOICES.items():
        if getattr(profile, rule) not in choices:
            raise GpwrefError(rule, f"must be one of {list(choices)}", repr(getattr(profile, rule)))
    threshold = profile.self_threshold
    if profile.self_rule == "value":
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise GpwrefError("self_threshold", "must be a number in (0, 1] with self_rule='value'", repr(threshold))
    elif threshold is not None:
        raise GpwrefError("self_threshold", "must be None with self_rule='index'", repr(threshold))

"""gpwref: the reference for pair-based metric-learning losses and their GPW weights G = dL/dS."""

from .catalog import CATALOG, LOSSES, LossEntry, get_entry
from .core import compute, from_similarity
from .errors import GpwrefError
from .functions import *  # noqa: F401,F403  (one function of S per catalog loss)
from .functions import __all__ as _loss_functions
from .pairs import PairResult, Result
from .profiles import PROFILES, Profile, get_profile

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "LOSSES",
    "PROFILES",
    "GpwrefError",
    "LossEntry",
    "PairResult",
    "Profile",
    "Result",
    "compute",
    "from_similarity",
    "get_entry",
    "get_profile",
    *_loss_functions,
]

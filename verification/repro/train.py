"""One training run per seed, as the official trainer runs it, plus what the paper's number needs.

Per iteration (``it`` = updates done so far, 0-based):

1. if ``it % eval_every == 0``: evaluate on the test split (and on the validation classes when
   held out) -- the official trainer evaluates *before* the update at 0, 200, ..., 2800; this
   trainer also evaluates the final model (iteration ``iterations``), which the official one never
   does;
2. ``model.train()`` and, with ``freeze_bn``, every BatchNorm back to eval mode;
3. the lr of update ``it + 1`` (``config.lr_factor``), one class-balanced batch, forward, the gpwref
   loss, backward, Adam step (coupled weight decay);
4. every ``crosscheck_every`` iterations the batch's loss and embedding gradient are compared with
   gpwref in float64 and with independent code (``loss_bridge.crosscheck``), and logged;
5. every ``checkpoint_every`` iterations a checkpoint (resume continues exactly: the batch stream
   and every augmentation draw are functions of (seed, iteration, position)).

Validation: ``val_alphabets`` whole training alphabets held out (unseen alphabets, like the
Omniglot test split) and/or ``val_fraction`` of the other training characters. Selection uses the
alphabet split when there is one, else the character split; with both, the character split's
choice is reported too (``val_characters_selected``).

Under torchrun (env ``RANK``/``WORLD_SIZE``, world size > 1) each rank trains on its contiguous
share of every class-balanced batch (same slots, so the same augmentation draws), the model is wrapped
in DDP and the loss is ``gpwref.torch.GlobalBatchLoss`` over the gathered batch: the updates equal
single-process training on the whole batch (docs/distributed.md; BatchNorm in train mode still sees
local statistics). Rank 0 writes to the output folder, rank r > 0 to ``rank_r/`` in it; the float64
cross-check is off (it compares one process's batch).

Reported per seed: the best test Recall@1 over all evaluations (the paper's way: selection on the
test set), the last iteration, the iteration chosen by the validation Recall@1 (ties go to the
earliest evaluation), and the iteration-0 network. Several seeds give mean and spread.

Every finished seed keeps its weights in ``seed_N/``: ``checkpoint.pt`` (the resume state, always
written at the end) and model files ``last_model.pt`` and, with a validation split and
``save_best``, ``val_selected_model.pt``. A model file is ``torch.save`` of a dict
``{"format": MODEL_FORMAT, "selection", "seed", "iteration", "config": Config.as_dict(),
"state_dict"}`` (tensors and plain values only: ``torch.load(weights_only=True)`` reads it);
``load_model(path)`` rebuilds the same ``EmbeddingNet`` from it in one call.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import gpwref

from .config import Config, lr_factor, validate
from .data import ImageSet, SplitData, read_dataset, split_validation, split_validation_alphabets
from .loss_bridge import BRIDGE_NOTE, GpwrefLoss, crosscheck
from .metrics import retrieval_metrics
from .models import EmbeddingNet, build_backbone, efficientnet_weights_path, set_bn_eval
from .sampler import ClassBalancedSampler
from .transforms import InputSpec, test_view, train_view

PAPER_CUB_512 = {"R@1": 65.7, "R@2": 77.0, "R@4": 86.3, "R@8": 91.2}
BRIDGE_TOLERANCE = {"reference": 1e-6, "gpwref.torch": 1e-4, "global-batch": 1e-4}
CACHE_LIMIT_BYTES = 256 * 2**20  # evaluation views of a split are kept in memory below this size
CHECKPOINT_FORMAT = 2  # 2: holds the validation-selected weights as well
MODEL_FORMAT = "gpwref-repro-model-1"


class Log:
    """Prints a line and appends it to ``log.txt`` in the output folder."""

    def __init__(self, path: Path | None = None, quiet: bool = False):
        self.path = path
        self.quiet = quiet

    def __call__(self, message: str = "") -> None:
        if not self.quiet:
            print(message, flush=True)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(message + "\n")


class Progress:
    """A one-line progress bar on stderr: iteration, loss, iterations per second, ETA."""

    def __init__(self, total: int, start: int, label: str, enabled: bool = True):
        self.total, self.start, self.label, self.enabled = total, start, label, enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.every = max(1, total // 20)
        self.loss = float("nan")

    def update(self, done: int, loss: float) -> None:
        self.loss = loss if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * loss
        if not self.enabled or (not self.tty and done % self.every and done != self.total):
            return
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} loss {self.loss:.4f} {rate:.2f} it/s ETA {_clock(eta)}"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def pause(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------
# data plumbing


class TrainViews(Dataset):
    """Item ``(index, iteration, slot)`` -> (augmented view, label); the view's randomness is seeded by
    (seed, iteration, slot), so it does not depend on loader workers or on resuming."""

    def __init__(self, images: ImageSet, spec: InputSpec, seed: int):
        self.images, self.spec, self.seed = images, spec, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index, iteration, slot = key
        rng = np.random.default_rng([self.seed, iteration, slot])
        return torch.from_numpy(train_view(self.images.image(index), self.spec, rng)), int(self.images.labels[index])


class TestViews(Dataset):
    def __init__(self, images: ImageSet, spec: InputSpec):
        self.images, self.spec = images, spec

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return torch.from_numpy(test_view(self.images.image(index), self.spec)), int(self.images.labels[index])


class BatchPlan(Sampler):
    """Batches ``start .. stop - 1`` of a class-balanced stream, as lists of (index, iteration, slot);
    with ``world`` > 1 only rank ``rank``'s contiguous share of each batch (its global slots)."""

    def __init__(self, sampler: ClassBalancedSampler, start: int, stop: int, rank: int = 0, world: int = 1):
        self.sampler, self.start, self.stop = sampler, start, stop
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for iteration, batch in enumerate(self.sampler):
            if iteration >= self.stop:
                return
            if iteration >= self.start:
                share = np.array_split(np.arange(len(batch)), self.world)[self.rank]
                yield [(batch[slot], iteration, int(slot)) for slot in share]


@dataclass
class Prepared:
    """What every seed shares: the splits, their checks, and the pretrained weights (checked once)."""

    config: Config
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    data_report: dict
    spec: InputSpec
    pretrained_state: dict | None = None
    weights_report: dict | None = None
    val_characters: ImageSet | None = None  # held-out characters when ``val`` holds out alphabets
    _cache: dict = field(default_factory=dict)

    def eval_views(self, which: str):
        images = {"test": self.test, "val": self.val, "val_characters": self.val_characters}[which]
        if which not in self._cache:
            bytes_needed = len(images) * self.spec.channels * self.spec.crop**2 * 4
            if bytes_needed <= CACHE_LIMIT_BYTES:
                views = TestViews(images, self.spec)
                tensor = torch.stack([views[i][0] for i in range(len(views))])
                self._cache[which] = torch.utils.data.TensorDataset(tensor, torch.as_tensor(images.labels))
            else:
                self._cache[which] = TestViews(images, self.spec)
        return self._cache[which], images.labels


def prepare(config: Config, log: Log) -> Prepared:
    """Read and check the data and the weights; refuse (GpwrefError) when either is missing or wrong."""
    problems = []
    split: SplitData | None = None
    try:
        split = read_dataset(config.dataset, config.data, strict=not config.allow_nonstandard_data)
    except gpwref.GpwrefError as error:
        problems.append(str(error))
    spec = InputSpec(config.input_mode, config.resize, config.crop, tuple(config.crop_scale), flip_prob=config.flip_prob, resample=config.resample)
    state, weights_report = None, None
    try:
        state, weights_report = _pretrained_state(config, spec)
    except gpwref.GpwrefError as error:
        problems.append(str(error))
    if problems:
        raise gpwref.GpwrefError("reproduce", "cannot start:\n  - " + "\n  - ".join(problems))
    train, val_alphabets = split_validation_alphabets(split.train, config.val_alphabets, config.val_split_seed)
    train, val_characters = split_validation(train, config.val_fraction, config.val_split_seed)
    val = val_alphabets if val_alphabets is not None else val_characters
    report = dict(split.report)
    report["train_used"] = {"classes": train.num_classes, "images": len(train)}
    report["val"] = None if val is None else _split_report(val, "alphabets" if val_alphabets is not None else "characters", config.val_split_seed)
    report["val_characters"] = None if val_alphabets is None or val_characters is None else _split_report(val_characters, "characters", config.val_split_seed)
    return Prepared(config, train, val, split.test, report, spec, state, weights_report, val_characters if val_alphabets is not None else None)


def _split_report(images: ImageSet, held_out: str, seed: int) -> dict:
    report = {"held_out": held_out, "classes": images.num_classes, "images": len(images), "split_seed": seed}
    if held_out == "alphabets":
        report["alphabets"] = sorted({name.split("/", 1)[0] for name in images.class_names})
    return report


def _pretrained_state(config: Config, spec: InputSpec):
    from .bninception import load_pretrained

    if not config.pretrained:
        return None, None
    backbone, _ = build_backbone(config.backbone, in_channels=spec.channels, image_size=config.crop)
    if config.backbone == "bninception":
        if not config.weights:
            raise gpwref.GpwrefError(
                "weights",
                "BN-Inception needs the ImageNet weights file: pass --weights PATH to the converted Caffe model "
                "bn_inception-52deb4733.pth (it cannot be downloaded here), or --no-pretrained --no-freeze-bn for a smoke test from "
                "random weights (an untrained network's frozen BN statistics collapse every image onto nearly one embedding)",
            )
        report = load_pretrained(backbone, config.weights, trust_pickle=config.trust_weights_pickle, partial=config.allow_partial_weights)
    elif config.backbone == "efficientnet_lite0":
        path = config.weights or efficientnet_weights_path()
        report = load_pretrained(backbone.net, path, trust_pickle=config.trust_weights_pickle, partial=config.allow_partial_weights, ignore_prefixes=("_fc.",))
    else:
        raise gpwref.GpwrefError("pretrained", f"backbone '{config.backbone}' has no pretrained weights; pass --no-pretrained")
    if not report.complete and not config.allow_partial_weights:
        raise gpwref.GpwrefError("weights", "do not match the model key for key (pass --allow-partial-weights to train anyway):\n" + report.summary(), report.path)
    info = {k: v for k, v in report.__dict__.items()}
    info["complete"] = report.complete
    info["summary"] = report.summary()
    return {k: v.clone() for k, v in backbone.state_dict().items()}, info


# ---------------------------------------------------------------------------------------------
# model, evaluation


def build_model(prepared: Prepared, seed: int) -> EmbeddingNet:
    config = prepared.config
    torch.manual_seed(seed)
    backbone, feature_dim = build_backbone(config.backbone, in_channels=prepared.spec.channels, image_size=config.crop)
    if prepared.pretrained_state is not None:
        backbone.load_state_dict(prepared.pretrained_state)
    return EmbeddingNet(backbone, feature_dim, config.embedding_dim, config.pooling)


def save_model(path: Path, model: EmbeddingNet, config: Config, *, seed: int, iteration: int, selection: str, state_dict: dict | None = None) -> None:
    """Write a model file (format in the module docstring); ``state_dict`` defaults to the model's own."""
    state = model.state_dict() if state_dict is None else state_dict
    _save_checkpoint(Path(path), {
        "format": MODEL_FORMAT, "selection": selection, "seed": seed, "iteration": iteration,
        "config": config.as_dict(), "state_dict": {k: v.detach().cpu() for k, v in state.items()},
    })


def load_model(path, map_location="cpu") -> EmbeddingNet:
    """The ``EmbeddingNet`` saved in a model file, in eval mode; ``model.config`` is its ``Config``,
    ``model.saved`` its (selection, seed, iteration). No pretrained weights file is needed."""
    path = Path(path)
    if not path.is_file():
        raise gpwref.GpwrefError("path", "must be an existing model file (seed_N/last_model.pt or val_selected_model.pt)", str(path))
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise gpwref.GpwrefError("path", f"must be a model file of format {MODEL_FORMAT}", str(path))
    config = validate(Config(**payload["config"]))
    spec = InputSpec(config.input_mode, config.resize, config.crop, tuple(config.crop_scale), flip_prob=config.flip_prob, resample=config.resample)
    backbone, feature_dim = build_backbone(config.backbone, in_channels=spec.channels, image_size=config.crop)
    model = EmbeddingNet(backbone, feature_dim, config.embedding_dim, config.pooling)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    model.config = config
    model.saved = {k: payload[k] for k in ("selection", "seed", "iteration")}
    return model


def distributed_world() -> tuple[int, int]:
    """(rank, world size): from an initialised process group, else from torchrun's environment
    (``WORLD_SIZE`` > 1: the group is initialised here, NCCL with CUDA, gloo otherwise), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


class GlobalCriterion(torch.nn.Module):
    """``gpwref.torch.GlobalBatchLoss`` with the trainer's bookkeeping (``seconds``, ``describe``, ``path``)."""

    path = "global-batch"

    def __init__(self, config: Config, world: int):
        super().__init__()
        from gpwref.torch import GlobalBatchLoss

        backend = "numpy" if config.loss_path == "reference" else None
        self.inner = GlobalBatchLoss(config.loss, profile=config.profile, backend=backend, normalize=False, **config.hyper)
        self.loss, self.profile, self.hyper, self.world = config.loss, config.profile, self.inner.hyper, world
        self.seconds = 0.0
        self.last_result = None

    def forward(self, embeddings: torch.Tensor, labels) -> torch.Tensor:
        start = time.perf_counter()
        value = self.inner(embeddings, torch.as_tensor(labels, device=embeddings.device))
        self.seconds += time.perf_counter() - start
        return value

    def describe(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{self.loss} (profile {self.profile}; {hyper}) via gpwref.torch.GlobalBatchLoss over the batch of {self.world} ranks"


def _device(config: Config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise gpwref.GpwrefError("device", "asks for CUDA but torch sees no GPU", config.device)
    return torch.device(config.device)


@torch.no_grad()
def embed(model: EmbeddingNet, dataset, device: torch.device, config: Config) -> np.ndarray:
    model.eval()
    loader = DataLoader(dataset, batch_size=config.eval_batch_size, shuffle=False, num_workers=0 if isinstance(dataset, torch.utils.data.TensorDataset) else config.workers)
    chunks = []
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=config.amp and device.type == "cuda"):
            out = model(images)
        chunks.append(out.float().cpu().numpy())
    return np.concatenate(chunks)


def evaluate(model: EmbeddingNet, prepared: Prepared, device: torch.device, which: str) -> dict:
    dataset, labels = prepared.eval_views(which)
    return retrieval_metrics(embed(model, dataset, device, prepared.config), labels, prepared.config.ks, tie=prepared.config.tie)


# ---------------------------------------------------------------------------------------------
# one seed


def _select(history: list[dict], key) -> dict | None:
    best = None
    for entry in history:
        score = key(entry)
        if score is not None and (best is None or score > key(best)):
            best = entry
    return best


def _point(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    test = entry["test"]
    point = {"iteration": entry["iteration"], "recall": test["recall"], "map_at_r": test["map_at_r"], "val_recall_at_1": None if entry.get("val") is None else entry["val"]["recall"][1]}
    if entry.get("val_characters") is not None:
        point["val_characters_recall_at_1"] = entry["val_characters"]["recall"][1]
    return point


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _save_checkpoint(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _int_keys(history: list[dict]) -> list[dict]:
    """JSON and checkpoints store Recall@K keys as strings; use ints in memory."""
    for entry in history:
        for split in ("test", "val", "val_characters"):
            if entry.get(split):
                entry[split]["recall"] = {int(k): v for k, v in entry[split]["recall"].items()}
    return history


def train_seed(
    prepared: Prepared, seed: int, out_dir: Path, *, resume: bool = False, overwrite: bool = False, log: Log | None = None, progress: bool = True, stop_at: int | None = None
) -> dict:
    """Train one seed; returns (and writes to ``out_dir/results.json``) its results.

    ``stop_at``: write a checkpoint after that many updates and return ``{"complete": False}``
    (a later call with ``resume=True`` continues exactly where it stopped).
    """
    config = prepared.config
    log = log or Log()
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path, ckpt_path = out_dir / "results.json", out_dir / "checkpoint.pt"
    if resume and results_path.is_file():
        done = json.loads(results_path.read_text())
        if done.get("complete") and done.get("config") == _json_ready(config.training_dict()):
            log(f"seed {seed}: already complete in {results_path}, not retrained")
            done["history"] = _int_keys(done["history"])
            return done
    if not resume and not overwrite and (ckpt_path.exists() or results_path.exists()):
        raise gpwref.GpwrefError("out", f"{out_dir} already holds a run; pass --resume to continue it or --overwrite to start again", str(out_dir))
    last_path, best_path = out_dir / "last_model.pt", out_dir / "val_selected_model.pt"
    if not resume:
        for stale in (ckpt_path, results_path, last_path, best_path):
            stale.unlink(missing_ok=True)

    device = _device(config)
    rank, world = distributed_world()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    model = build_model(prepared, seed).to(device)
    train_model = model
    if world > 1:  # DDP averages the parameter gradients; evaluation and checkpoints use the plain model
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    backbone_params, head_params = model.parameter_groups()
    optimizer = torch.optim.Adam(
        [{"params": backbone_params, "lr_mult": config.backbone_lr_mult}, {"params": head_params, "lr_mult": 1.0}],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    criterion = GlobalCriterion(config, world) if world > 1 else GpwrefLoss(config.loss, config.profile, path=None if config.loss_path == "auto" else config.loss_path, **config.hyper)
    _warm_up(criterion, config, device)
    history: list[dict] = []
    checks: list[dict] = []
    losses: list[float] = []
    skipped: list[dict] = []
    timing = {"train_s": 0.0, "data_s": 0.0, "loss_s": 0.0, "eval_s": 0.0, "crosscheck_s": 0.0}
    best = {"iteration": None, "score": None, "state": None}  # the validation-selected weights so far
    start_it = 0
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("training") != _json_ready(config.training_dict()) or state.get("seed") != seed:
            raise gpwref.GpwrefError("resume", f"the checkpoint in {out_dir} was made with other settings or seed; use another --out or --overwrite")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history, checks, losses, skipped = _int_keys(state["history"]), state["checks"], state["losses"], state["skipped"]
        timing = state["timing"]
        torch.set_rng_state(state["torch_rng"])
        best = state["val_selected"]
        start_it = state["iteration"]
        log(f"seed {seed}: resumed at iteration {start_it} from {ckpt_path}")

    sampler = ClassBalancedSampler(prepared.train.labels, config.classes_per_batch, config.instances, seed)
    loader = DataLoader(
        TrainViews(prepared.train, prepared.spec, seed),
        batch_sampler=BatchPlan(sampler, start_it, config.iterations, rank, world),
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )
    log(f"seed {seed}: loss {criterion.describe()}")
    bar = Progress(config.iterations, start_it, f"seed {seed}", enabled=progress)
    tolerance = BRIDGE_TOLERANCE[criterion.path]

    def run_eval(iteration: int) -> None:
        t0 = time.perf_counter()
        entry = {"iteration": iteration, "test": evaluate(model, prepared, device, "test")}
        entry["val"] = evaluate(model, prepared, device, "val") if prepared.val is not None else None
        if prepared.val_characters is not None:
            entry["val_characters"] = evaluate(model, prepared, device, "val_characters")
        entry["seconds"] = time.perf_counter() - t0
        if entry["val"] is not None and config.save_best and (best["score"] is None or entry["val"]["recall"][1] > best["score"]):
            best.update(iteration=iteration, score=entry["val"]["recall"][1], state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        timing["eval_s"] += entry["seconds"]
        history.append(entry)
        recall = entry["test"]["recall"]
        val_note = f"  val R@1 {entry['val']['recall'][1]:.4f}" if entry["val"] else ""
        if entry.get("val_characters"):
            val_note = f"  val R@1 alphabets {entry['val']['recall'][1]:.4f} characters {entry['val_characters']['recall'][1]:.4f}"
        bar.pause()
        log(f"seed {seed} it {iteration:5d}  test " + " ".join(f"R@{k} {recall[k]:.4f}" for k in list(recall)[:4]) + f"  MAP@R {entry['test']['map_at_r']:.4f}{val_note}  ({entry['seconds']:.1f}s)")

    def save(iteration: int) -> None:
        _save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "training": _json_ready(config.training_dict()), "seed": seed, "iteration": iteration,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "history": _json_ready(history), "checks": _json_ready(checks), "losses": losses, "skipped": skipped, "timing": timing,
            "torch_rng": torch.get_rng_state(), "val_selected": best,
        })

    iteration = start_it
    batches = iter(loader)
    while True:
        if stop_at is not None and stop_at <= iteration < config.iterations:
            save(iteration)
            bar.pause()
            log(f"seed {seed}: stopped at iteration {iteration}; checkpoint {ckpt_path}")
            return {"seed": seed, "complete": False, "iteration": iteration}
        due = iteration % config.eval_every == 0 or iteration == config.iterations
        if due and not any(h["iteration"] == iteration for h in history):
            run_eval(iteration)
        if iteration >= config.iterations:
            break
        t_start = time.perf_counter()
        images, labels = next(batches)
        t_data = time.perf_counter()
        model.train()
        if config.freeze_bn:
            set_bn_eval(model)
        factor = lr_factor(config, iteration + 1)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * factor * group["lr_mult"]
        images = images.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            embeddings = train_model(images)
        embeddings = embeddings.float()
        check_now = config.crosscheck_every and iteration % config.crosscheck_every == 0 and world == 1
        if check_now:
            embeddings.retain_grad()
        loss_before = criterion.seconds
        try:
            loss = criterion(embeddings, labels)
        except gpwref.GpwrefError as error:  # e.g. the official profile refuses an anchor without positives
            skipped.append({"iteration": iteration, "reason": str(error)})
            log(f"seed {seed} it {iteration}: batch skipped, the loss refused it: {error}")
            iteration += 1
            continue
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scale = float(scaler.get_scale())
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            scale = 1.0
            optimizer.step()
        timing["loss_s"] += criterion.seconds - loss_before
        value = float(loss.item())
        losses.append(value)
        t_end = time.perf_counter()
        timing["data_s"] += t_data - t_start
        timing["train_s"] += t_end - t_start
        if check_now:
            grad = None if embeddings.grad is None else embeddings.grad.detach().double().cpu().numpy() / scale
            report = crosscheck(criterion, embeddings.detach(), labels, value, grad)
            report["iteration"] = iteration
            report["bridge_ok"] = bool(
                report["value_rel_err"] <= tolerance
                and (report["grad_rel_err"] is None or report["grad_rel_err"] <= tolerance)
                and report.get("pairs_differing", 0) == 0
                and report.get("weights_rel_err", 0.0) <= tolerance
            )
            report["independent_ok"] = not report.get("independent_failures")
            checks.append(report)
            timing["crosscheck_s"] += report["seconds"]
            indep = report.get("independent_errors", {})
            worst = max(indep.values()) if indep else float("nan")
            bar.pause()
            pairs_note = "" if "pairs_differing" not in report else f", pairs differing {report['pairs_differing']}, weights rel {report['weights_rel_err']:.1e}"
            log(
                f"seed {seed} it {iteration:5d}  crosscheck: loss {value:.6f} vs float64 {report['loss_float64']:.6f} "
                f"(rel {report['value_rel_err']:.1e}), dL/dX rel {report['grad_rel_err'] if report['grad_rel_err'] is None else format(report['grad_rel_err'], '.1e')}, "
                f"pairs used +{report['pos_pairs_used']}/-{report['neg_pairs_used']}{pairs_note}; independent checks "
                f"{'ok' if report['independent_ok'] else 'FAILED ' + str(report.get('independent_failures'))} (worst {worst:.1e}) [{report['seconds']:.2f}s]"
            )
        iteration += 1
        bar.update(iteration, value)
        if config.checkpoint_every and iteration % config.checkpoint_every == 0 and iteration < config.iterations:
            save(iteration)

    save(config.iterations)  # the final state is always kept, whatever checkpoint_every
    save_model(last_path, model, config, seed=seed, iteration=config.iterations, selection="last")
    model_files = {"last": last_path.name}
    if best["state"] is not None:
        save_model(best_path, model, config, seed=seed, iteration=best["iteration"], selection="val_selected", state_dict=best["state"])
        model_files["val_selected"] = best_path.name
    results = {
        "seed": seed,
        "complete": True,
        "config": _json_ready(config.training_dict()),
        "iterations": config.iterations,
        "loss": criterion.describe(),
        "loss_path": criterion.path,
        "history": history,
        "untrained": _point(history[0]),
        "best_on_test": _point(_select(history, lambda h: h["test"]["recall"][1])),
        "last": _point(history[-1]),
        "val_selected": _point(_select(history, lambda h: None if h.get("val") is None else h["val"]["recall"][1])),
        "val_characters_selected": _point(_select(history, lambda h: None if h.get("val_characters") is None else h["val_characters"]["recall"][1])),
        "model_files": model_files,
        "timing": {**timing, "ms_per_iteration": 1000 * timing["train_s"] / max(1, len(losses)), "ms_loss_per_iteration": 1000 * timing["loss_s"] / max(1, len(losses))},
        "losses": losses,
        "skipped_batches": skipped,
        "crosschecks": checks,
        "crosscheck_summary": _check_summary(checks, tolerance, criterion.path),
    }
    if skipped:
        log(f"WARNING seed {seed}: the loss refused {len(skipped)} of {config.iterations} batches (no update for them); see skipped_batches")
    results_path.write_text(json.dumps(_json_ready(results), indent=1))
    return results


def _warm_up(criterion: GpwrefLoss, config: Config, device: torch.device) -> None:
    """One call on a dummy batch so that one-off costs (imports, JIT compilation of the kernels)
    stay out of the per-iteration loss time; the dummy batch's rows are distinct unit vectors."""
    n = config.classes_per_batch * config.instances
    generator = torch.Generator().manual_seed(0)
    dummy = torch.nn.functional.normalize(torch.randn(n, config.embedding_dim, generator=generator), dim=1).to(device)
    labels = torch.arange(config.classes_per_batch).repeat_interleave(config.instances)
    try:
        criterion(dummy.requires_grad_(), labels).backward()
    except gpwref.GpwrefError:
        pass  # a dummy batch the loss refuses says nothing about the real ones
    criterion.seconds = 0.0
    criterion.last_result = None


def _check_summary(checks: list[dict], tolerance: float, path: str) -> dict:
    if not checks:
        return {"count": 0}
    value = [c["value_rel_err"] for c in checks]
    grad = [c["grad_rel_err"] for c in checks if c["grad_rel_err"] is not None]
    return {
        "count": len(checks),
        "bridge_path": path,
        "bridge_tolerance": tolerance,
        "bridge_all_ok": all(c["bridge_ok"] for c in checks),
        "worst_value_rel_err": max(value),
        "worst_grad_rel_err": max(grad) if grad else None,
        "independent_all_ok": all(c["independent_ok"] for c in checks),
        "independent_failures": sorted({f for c in checks for f in c.get("independent_failures", [])}),
    }


# ---------------------------------------------------------------------------------------------
# several seeds


def _stats(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "values": [float(v) for v in array]}


def aggregate(per_seed: list[dict], ks) -> dict:
    out = {}
    for selection in ("best_on_test", "last", "val_selected", "val_characters_selected", "untrained"):
        points = [r[selection] for r in per_seed if r.get(selection)]
        if len(points) != len(per_seed):
            out[selection] = None
            continue
        row = {f"R@{k}": _stats([p["recall"][k] if k in p["recall"] else p["recall"][str(k)] for p in points]) for k in ks}
        row["MAP@R"] = _stats([p["map_at_r"] for p in points])
        row["iteration"] = [p["iteration"] for p in points]
        out[selection] = row
    return out


def environment(device: torch.device | None = None) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gpwref": gpwref.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def format_table(summary: dict, ks=(1, 2, 4, 8)) -> str:
    agg = summary["aggregate"]
    seeds = summary["seeds"]
    lines = [f"Recall@K on the test split, mean ± std over seeds {seeds}:", ""]
    header = f"{'selection':26s}" + "".join(f"{'R@' + str(k):>16s}" for k in ks) + f"{'MAP@R':>16s}  iterations"
    lines.append(header)
    val = summary.get("data", {}).get("val") or {}
    names = {"best_on_test": "best-on-test (paper)", "last": "last iteration", "val_selected": f"val-selected ({val.get('held_out', 'characters')})",
             "val_characters_selected": "val-selected (characters)", "untrained": "iteration 0"}
    for key, label in names.items():
        row = agg.get(key)
        if row is None and key == "val_characters_selected":
            continue
        if row is None:
            lines.append(f"{label:26s}  (no validation split: --val-alphabets 0, --val-fraction 0)" if key == "val_selected" else f"{label:26s}  -")
            continue
        cells = "".join(f"{100 * row[f'R@{k}']['mean']:9.2f} ± {100 * row[f'R@{k}']['std']:4.2f}" for k in ks)
        lines.append(f"{label:26s}{cells}{100 * row['MAP@R']['mean']:9.2f} ± {100 * row['MAP@R']['std']:4.2f}  {row['iteration']}")
    return "\n".join(lines)


def plot_curves(per_seed: list[dict], path: Path, ks=(1, 2, 4, 8), title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [k for k in ks if all(k in h["test"]["recall"] for r in per_seed for h in r["history"])]
    fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        for result in per_seed:
            its = [h["iteration"] for h in result["history"]]
            ax.plot(its, [100 * h["test"]["recall"][k] for h in result["history"]], marker=".", label=f"seed {result['seed']} test")
            if k == 1 and result["history"][0].get("val"):
                ax.plot(its, [100 * h["val"]["recall"][1] for h in result["history"]], linestyle="--", label=f"seed {result['seed']} val")
        ax.set_title(f"Recall@{k}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: Config, seeds, out_dir, *, resume: bool = False, overwrite: bool = False, command: str = "", quiet: bool = False, progress: bool = True, prepared: Prepared | None = None) -> dict:
    """Every seed, then the summary (``results.json``), the table and the plot in ``out_dir``."""
    started = time.perf_counter()
    prepared = prepared or prepare(config, Log(quiet=quiet))  # refuses before anything is written
    out_dir = Path(out_dir)
    rank, world = distributed_world()
    if rank > 0:  # every rank trains the same model; rank 0 owns the output folder
        out_dir, quiet, progress = out_dir / f"rank_{rank}", True, False
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "log.txt", quiet=quiet)
    log(f"gpwref reproduce: {command}" if command else "gpwref reproduce")
    log(f"loss path: {BRIDGE_NOTE}" if world == 1 else f"loss path: gpwref.torch.GlobalBatchLoss, rank {rank} of {world} ({torch.distributed.get_backend()}); float64 cross-check off")
    for warning in prepared.data_report.get("warnings", []):
        log(f"WARNING data: {warning}")
    log(f"data: train {prepared.data_report['train_used']}, val {prepared.data_report['val']}, test {prepared.data_report['test']}")
    if prepared.weights_report is not None:
        log(prepared.weights_report["summary"])
    per_seed = []
    for seed in seeds:
        per_seed.append(train_seed(prepared, seed, out_dir / f"seed_{seed}", resume=resume, overwrite=overwrite, log=log, progress=progress))
    summary = {
        "command": command,
        "config": _json_ready(config.as_dict()),
        "loss_path": BRIDGE_NOTE,
        "data": prepared.data_report,
        "weights": prepared.weights_report,
        "environment": environment(),
        "distributed": {"world_size": world, "rank": rank},
        "seeds": list(seeds),
        "aggregate": aggregate(per_seed, config.ks),
        "paper_cub_512d": PAPER_CUB_512 if config.dataset == "cub" else None,
        "per_seed": [{k: v for k, v in r.items() if k not in ("history", "losses", "crosschecks")} for r in per_seed],
        "wall_s": time.perf_counter() - started,
    }
    (out_dir / "results.json").write_text(json.dumps(_json_ready(summary), indent=1))
    title = f"{config.dataset} {config.backbone} {config.loss} ({config.profile}) seeds {list(seeds)}"
    plot_curves(per_seed, out_dir / "recall_curves.png", ks=tuple(k for k in config.ks if k <= 8) or config.ks[:1], title=title)
    log(format_table(summary, tuple(k for k in config.ks if k <= 8)))
    log(f"results: {out_dir / 'results.json'}  plot: {out_dir / 'recall_curves.png'}  wall {summary['wall_s']:.0f}s")
    return summary

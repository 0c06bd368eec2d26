"""Train the two-tower model on purchases before a cutoff and write a model bundle.

Each training example is a (customer snapshot, product) pair: the customer as seen at the start
of a week before the cutoff (history, profile, activity up to that moment) and a product they
bought during that week, which is exactly the task the model is evaluated on.

    python -m contoso_recs.recommender.train --lake ROOT --cutoff 2017-12-04 --out DIR
"""

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import torch

from contoso_recs.recommender.data import (
    LakeFrames,
    as_cutoff,
    before,
    catalogue,
    product_popularity,
    purchases,
    read_lake,
)
from contoso_recs.recommender.encoding import (
    MAX_HOUSEHOLD,
    CustomerInputs,
    Vocabulary,
    build_vocabulary,
    encode_customers,
    encode_products,
    product_positions,
)
from contoso_recs.recommender.two_tower import (
    TwoTower,
    TwoTowerConfig,
    in_batch_loss,
    popularity_buckets,
)

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, float, float], None]
SCORING_BATCH = 8192


@dataclass(frozen=True)
class Examples:
    """Customer snapshots and, per example, its snapshot row and bought product position;
    with the recent-popularity term, each snapshot's week (`week`) and each week's bucket of
    recent buyers of every product position (`popularity`, weeks x positions)."""

    customers: CustomerInputs
    snapshot: np.ndarray
    product: np.ndarray
    week: np.ndarray | None = None
    popularity: np.ndarray | None = None


@dataclass
class TrainedModel:
    """A trained two-tower model with everything needed to encode inputs and score."""

    model: TwoTower
    vocab: Vocabulary
    config: TwoTowerConfig
    metrics: dict

    def product_vectors(self) -> np.ndarray:
        """Unit vectors of every vocabulary product, row i for position i (row 0: unknown)."""
        self.model.eval()
        device = next(self.model.parameters()).device
        positions = torch.arange(len(self.vocab.product_ids) + 1, device=device)
        with torch.no_grad():
            parts = [self.model.product_vectors(p) for p in positions.split(SCORING_BATCH)]
        return torch.cat(parts).cpu().numpy()

    def popularity_scores(self, bought: pl.DataFrame, at: datetime) -> np.ndarray:
        """What each vocabulary product's recent buyers before `at` add to its score, in the
        units of the cosine (row i for position i; zeros for a model without the term)."""
        n_positions = len(self.vocab.product_ids) + 1
        if self.config.recent_popularity_days <= 0:
            return np.zeros(n_positions, dtype=np.float32)
        buckets = recent_buyer_buckets(self.vocab, bought, at, self.config.recent_popularity_days)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logit = self.model.popularity_logit(torch.as_tensor(buckets, device=device))
        return (logit.cpu().numpy() * self.config.temperature).astype(np.float32)

    def scoring_product_vectors(self, bought: pl.DataFrame, at: datetime) -> np.ndarray:
        """`product_vectors` with one more column, what each product's recent buyers before
        `at` add: a row of `scoring_customer_vectors` times a row of these is the model's
        score as of `at`."""
        return np.hstack([self.product_vectors(), self.popularity_scores(bought, at)[:, None]])

    def scoring_customer_vectors(
        self,
        bought: pl.DataFrame,
        profiles: pl.DataFrame,
        customer_ids: np.ndarray,
        at: datetime,
        views: pl.DataFrame | None = None,
    ) -> np.ndarray:
        """`customer_vectors` with a column of ones, the match of the last column of
        `scoring_product_vectors`."""
        vectors = self.customer_vectors(bought, profiles, customer_ids, at, views)
        return np.hstack([vectors, np.ones((len(vectors), 1), dtype=vectors.dtype)])

    def customer_vectors(
        self,
        bought: pl.DataFrame,
        profiles: pl.DataFrame,
        customer_ids: np.ndarray,
        at: datetime,
        views: pl.DataFrame | None = None,
    ) -> np.ndarray:
        """Unit vectors of customers (sorted ids) as of `at`, from purchases and product views
        before it."""
        inputs = encode_history(self.vocab, self.config, bought, profiles, customer_ids, at, views)
        self.model.eval()
        device = next(self.model.parameters()).device
        rows = torch.arange(len(customer_ids))
        with torch.no_grad():
            parts = [
                self.model.customer_vectors(_snapshot_batch(inputs, r, device))
                for r in rows.split(SCORING_BATCH)
            ]
        return torch.cat(parts).cpu().numpy()

    def save(self, out_dir: str | Path) -> Path:
        """Write state dict, vocabularies, config and metrics under `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), out / "model.pt")
        (out / "vocabulary.json").write_text(json.dumps(self.vocab.to_json()))
        (out / "config.json").write_text(json.dumps(self.config.to_json(), indent=2))
        (out / "metrics.json").write_text(json.dumps(self.metrics, indent=2))
        log.info("model bundle written to %s", out)
        return out

    @classmethod
    def load(cls, bundle_dir: str | Path, device: str | None = None) -> "TrainedModel":
        """A model bundle written by `save`, on `device` (default: CUDA when available)."""
        bundle = Path(bundle_dir)
        vocab = Vocabulary.from_json(json.loads((bundle / "vocabulary.json").read_text()))
        payload = json.loads((bundle / "config.json").read_text())
        # bundles saved before `logq_weight` existed were trained with the plain correction,
        # before the history settings existed with order counts and no product views, before
        # `final_lr_share` existed with constant learning rates, before `recent_popularity_days`
        # existed without the recent-popularity term
        payload.setdefault("logq_weight", 1.0)
        payload.setdefault("final_lr_share", 1.0)
        payload.setdefault("history_purchase_weight", "orders")
        payload.setdefault("history_view_seconds", 0.0)
        payload.setdefault("recent_popularity_days", 0)
        config = TwoTowerConfig(**payload)
        state = torch.load(bundle / "model.pt", map_location="cpu", weights_only=True)
        model = TwoTower.from_state(config, vocab_sizes(vocab), state)
        model.to(device or default_device())
        metrics = json.loads((bundle / "metrics.json").read_text())
        return cls(model=model, vocab=vocab, config=config, metrics=metrics)


def encode_history(
    vocab: Vocabulary,
    config: TwoTowerConfig,
    bought: pl.DataFrame,
    profiles: pl.DataFrame,
    customer_ids: np.ndarray,
    at: datetime,
    views: pl.DataFrame | None,
) -> CustomerInputs:
    """CustomerInputs as of `at` with the model's history settings."""
    return encode_customers(
        vocab,
        bought,
        profiles,
        customer_ids,
        at,
        config.history_len,
        config.half_life_days,
        views,
        config.history_purchase_weight,
        config.history_view_seconds,
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def vocab_sizes(vocab: Vocabulary) -> dict[str, int]:
    return {
        "departments": len(vocab.departments),
        "categories": len(vocab.categories),
        "brands": len(vocab.brands),
        "tokens": len(vocab.tokens),
        "age_bands": len(vocab.age_bands),
        "income_bands": len(vocab.income_bands),
        "household_sizes": MAX_HOUSEHOLD,
    }


def training_examples(
    vocab: Vocabulary,
    bought: pl.DataFrame,
    profiles: pl.DataFrame,
    cutoff: datetime,
    config: TwoTowerConfig,
    views: pl.DataFrame | None = None,
) -> Examples:
    """One example per customer, week and distinct product bought that week, for the
    `config.weeks` whole weeks before the cutoff; snapshots are taken at each week's start.

    A product the customer had bought before that week is kept with probability
    `config.repeat_target_share`, so the model can be steered towards products new to them.
    """
    rng = np.random.default_rng(config.seed)
    snapshots, snapshot_rows, products, weeks, popularity = [], [], [], [], []
    offset = 0
    for week in range(config.weeks, 0, -1):
        start = cutoff - timedelta(days=7 * week)
        bought_that_week = bought.filter(
            (pl.col("at") >= start) & (pl.col("at") < start + timedelta(days=7))
        )
        pairs = (
            bought_that_week.select("customer_id", "product_id")
            .unique()
            .sort("customer_id", "product_id")
        )
        earlier = before(bought, start).select("customer_id", "product_id").unique()
        repeat = pairs.join(earlier, on=["customer_id", "product_id"], how="semi")
        repeat = repeat.filter(pl.Series(rng.random(repeat.height) < config.repeat_target_share))
        pairs = pl.concat(
            [pairs.join(earlier, on=["customer_id", "product_id"], how="anti"), repeat]
        )
        pairs = pairs.sort("customer_id", "product_id")
        positions = product_positions(vocab, pairs["product_id"].to_numpy())
        pairs = pairs.filter(pl.Series(positions > 0))
        if pairs.is_empty():
            continue
        customer_ids = np.unique(pairs["customer_id"].to_numpy())
        snapshots.append(
            encode_history(
                vocab,
                config,
                before(bought, start),
                profiles.filter(
                    (pl.col("created_at") < start)
                    & pl.col("customer_id").is_in(pl.Series(customer_ids).implode())
                ),
                customer_ids,
                start,
                views,
            )
        )
        snapshot_rows.append(offset + np.searchsorted(customer_ids, pairs["customer_id"]))
        products.append(product_positions(vocab, pairs["product_id"].to_numpy()))
        offset += len(customer_ids)
        if config.recent_popularity_days > 0:
            weeks.append(np.full(len(customer_ids), len(popularity)))
            popularity.append(
                recent_buyer_buckets(vocab, bought, start, config.recent_popularity_days)
            )
    if not snapshots:
        raise ValueError(f"no purchases in the {config.weeks} weeks before {cutoff:%Y-%m-%d}")
    customers = CustomerInputs(
        *[np.concatenate([getattr(s, f.name) for s in snapshots]) for f in fields(CustomerInputs)]
    )
    return Examples(
        customers,
        np.concatenate(snapshot_rows),
        np.concatenate(products),
        np.concatenate(weeks) if weeks else None,
        np.stack(popularity) if popularity else None,
    )


def recent_buyer_buckets(
    vocab: Vocabulary, bought: pl.DataFrame, at: datetime, days: int
) -> np.ndarray:
    """Bucket of the distinct customers who bought each vocabulary product in the `days`
    before `at` (position 0, the unknown product: none)."""
    counts = product_popularity(bought, at, days)
    buyers = np.zeros(len(vocab.product_ids) + 1)
    positions = product_positions(vocab, counts["product_id"].to_numpy())
    known = positions > 0
    buyers[positions[known]] = counts["customers"].to_numpy()[known]
    return popularity_buckets(buyers)


def train(
    frames: LakeFrames,
    cutoff: datetime,
    config: TwoTowerConfig | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainedModel:
    """Train on everything before the cutoff; `on_epoch(epoch, loss, examples_per_second)`."""
    config = config or TwoTowerConfig()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    device = torch.device(default_device())

    bought = before(purchases(frames), cutoff)
    products = catalogue(frames, cutoff)
    if products.is_empty():
        raise ValueError(f"no product in the catalogue before {cutoff:%Y-%m-%d}: nothing to learn")
    profiles = before(frames.customers, cutoff, "created_at")
    vocab = build_vocabulary(products, profiles, config.customer_buckets)
    product_inputs = encode_products(vocab, products, frames.product_image_features)
    views = before(frames.product_views, cutoff, "viewed_at")
    examples = training_examples(vocab, bought, profiles, cutoff, config, views)
    log.info(
        "training on %d examples from %d customer snapshots, %d products, device %s",
        len(examples.product),
        len(examples.customers.bucket),
        len(vocab.product_ids),
        device,
    )

    model = TwoTower(config, product_inputs, vocab_sizes(vocab)).to(device)
    losses, speeds = fit(model, examples, config, device, on_epoch)
    metrics = {
        "cutoff": cutoff.isoformat(),
        "examples": len(examples.product),
        "products": len(vocab.product_ids),
        "epoch_loss": losses,
        "examples_per_second": speeds,
        "device": str(device),
    }
    return TrainedModel(model=model, vocab=vocab, config=config, metrics=metrics)


def fit(
    model: TwoTower,
    examples: Examples,
    config: TwoTowerConfig,
    device: torch.device,
    on_epoch: EpochCallback | None,
) -> tuple[list[float], list[float]]:
    """Mini-batch training with in-batch softmax; returns the loss and speed of each epoch.

    A batch is a random set of customer snapshots with all the products each bought that week,
    so the customer tower runs once per snapshot rather than once per product.
    """
    snapshots = {
        f.name: torch.as_tensor(getattr(examples.customers, f.name), device=device)
        for f in fields(CustomerInputs)
    }
    product = torch.as_tensor(examples.product, device=device)
    log_q = sampling_log_frequency(examples.product, len(model.department), device)
    sparse_opt = torch.optim.SparseAdam(model.sparse_parameters(), lr=config.sparse_lr)
    dense_opt = torch.optim.Adam(model.dense_parameters(), lr=config.dense_lr)
    schedules = [
        torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda done: learning_rate_share(done + 1, config.epochs, config.final_lr_share),
        )
        for optimizer in (sparse_opt, dense_opt)
    ]
    popularity = week_of = None
    if examples.popularity is not None:
        popularity = torch.as_tensor(examples.popularity.astype(np.uint8), device=device)
        week_of = torch.as_tensor(examples.week, device=device)
    rng = np.random.default_rng(config.seed)
    draws = torch.Generator().manual_seed(config.seed)
    n_products = len(model.department) - 1  # positions 1..n; 0 is the unknown product
    n_drawn = min(config.uniform_negatives, n_products)  # a small catalogue: each about once

    losses, speeds = [], []
    model.train()
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        total, batches = 0.0, 0
        for chosen, rows, owner in snapshot_batches(examples.snapshot, config.batch_size, rng):
            if len(rows) < 2:
                continue
            chosen, rows, owner = (torch.as_tensor(a, device=device) for a in (chosen, rows, owner))
            customers = model.customer_vectors({k: v[chosen] for k, v in snapshots.items()})
            positions = product[rows]
            negatives = uniform_negatives(positions, n_products, n_drawn, draws)
            candidates = torch.cat([positions, negatives])
            # the product tower runs once per distinct product of the batch
            distinct, inverse = torch.unique(candidates, return_inverse=True)
            vectors = model.product_vectors(distinct)[inverse]
            correction = None
            if config.logq_correction:
                correction = config.logq_weight * candidate_log_q(
                    log_q, candidates, len(positions), n_drawn, n_products
                )
            bias = None
            if popularity is not None:
                # each product's recent buyers as of the week of each example's snapshot,
                # looked up once per week of the batch
                weeks, week_row = torch.unique(week_of[chosen], return_inverse=True)
                buckets = popularity[weeks[:, None], candidates[None, :]].long()
                by_week = model.popularity_logit(buckets)
                bias = torch.index_select(by_week, 0, week_row[owner])  # cheaper backward
            loss = in_batch_loss(
                customers[owner],
                vectors[: len(positions)],
                positions,
                owner,
                None if correction is None else correction[: len(positions)],
                config.temperature,
                negatives=vectors[len(positions) :],
                negatives_log_q=None if correction is None else correction[len(positions) :],
                bias=bias,
            )
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
            total += loss.item()
            batches += 1
        elapsed = time.perf_counter() - started
        for schedule in schedules:
            schedule.step()  # the next epoch's share of the learning rates
        losses.append(total / max(batches, 1))
        speeds.append(len(product) / elapsed)
        log.info("epoch %d: loss %.4f, %.0f examples/s", epoch, losses[-1], speeds[-1])
        if on_epoch is not None:
            on_epoch(epoch, losses[-1], speeds[-1])
    return losses, speeds


def learning_rate_share(epoch: int, epochs: int, final_share: float) -> float:
    """Share of the configured learning rate in `epoch` (1..epochs): 1 in the first, falling
    linearly to `final_share` in the last."""
    if epochs <= 1:
        return 1.0
    return 1.0 - (1.0 - final_share) * (epoch - 1) / (epochs - 1)


def snapshot_batches(snapshot: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Batches of whole snapshots in random order, each about `batch_size` examples.

    Yields (snapshot rows, example rows, position of each example's snapshot in the first).
    """
    by_snapshot = np.argsort(snapshot, kind="stable")
    counts = np.bincount(snapshot)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = rng.permutation(np.flatnonzero(counts))
    ends = np.cumsum(counts[order])
    cuts = np.searchsorted(ends, np.arange(batch_size, ends[-1], batch_size), side="left") + 1
    for chosen in np.split(order, np.unique(cuts)):
        if len(chosen) == 0:
            continue
        sizes = counts[chosen]
        offsets = np.repeat(starts[chosen] - (np.cumsum(sizes) - sizes), sizes)
        rows = by_snapshot[offsets + np.arange(sizes.sum())]
        yield chosen, rows, np.repeat(np.arange(len(chosen)), sizes)


def uniform_negatives(
    positions: torch.Tensor, n_products: int, count: int, draws: torch.Generator
) -> torch.Tensor:
    """`count` product positions drawn uniformly from the vocabulary as extra negatives, less
    any that is already a product of the batch (so none is another example's right answer)."""
    if count <= 0:
        return positions[:0]
    drawn = torch.randint(1, n_products + 1, (count,), generator=draws).to(positions.device)
    return drawn[~torch.isin(drawn, positions)]


def candidate_log_q(
    log_q: torch.Tensor,
    candidates: torch.Tensor,
    batch_examples: int,
    uniform: int,
    n_products: int,
) -> torch.Tensor:
    """log of how often each candidate product is expected among a batch's candidates.

    Without uniform negatives that is its share of training examples (up to a constant, which
    the softmax ignores); with them, a batch of B examples holds product i about B * share_i
    times as an in-batch product plus uniform / n_products times as a drawn one.
    """
    if uniform == 0:
        return log_q[candidates]
    expected = batch_examples * log_q[candidates].exp() + uniform / n_products
    return expected.log()


def sampling_log_frequency(products: np.ndarray, n_positions: int, device) -> torch.Tensor:
    """log of each product position's share of training examples (1 example where unseen)."""
    counts = np.bincount(products, minlength=n_positions).astype(np.float64)
    frequency = np.maximum(counts, 1.0) / max(len(products), 1)
    return torch.as_tensor(np.log(frequency), dtype=torch.float32, device=device)


def _snapshot_batch(inputs: CustomerInputs, rows: torch.Tensor, device) -> dict:
    index = rows.numpy()
    return {
        f.name: torch.as_tensor(getattr(inputs, f.name)[index], device=device)
        for f in fields(CustomerInputs)
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, help="lake root holding the Delta tables")
    parser.add_argument(
        "--cutoff", required=True, type=cutoff_date, help="train on purchases before YYYY-MM-DD"
    )
    parser.add_argument("--out", required=True, help="folder for the model bundle")
    parser.add_argument("--epochs", type=positive_int, default=TwoTowerConfig.epochs)
    parser.add_argument("--weeks", type=positive_int, default=TwoTowerConfig.weeks)
    parser.add_argument("--batch-size", type=positive_int, default=TwoTowerConfig.batch_size)
    parser.add_argument("--dim", type=positive_int, default=TwoTowerConfig.dim)
    parser.add_argument("--seed", type=int, default=TwoTowerConfig.seed)
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads for PyTorch (default: all)"
    )
    parser.add_argument(
        "--versions",
        type=lake_versions,
        default=None,
        help='pinned Delta versions as JSON, e.g. {"orders": 3}',
    )
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text}")
    return value


def cutoff_date(text: str) -> str:
    try:
        as_cutoff(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from error
    return text


def lake_versions(text: str) -> dict[str, int]:
    try:
        versions = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error})") from error
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in versions.items()
    ):
        raise argparse.ArgumentTypeError('must map table names to versions, e.g. {"orders": 3}')
    return versions


def setup_from_args(args: argparse.Namespace) -> tuple[TwoTowerConfig, LakeFrames]:
    """The model configuration and the pinned lake frames a command line asks for."""
    if args.threads:
        torch.set_num_threads(args.threads)
    config = replace(
        TwoTowerConfig(),
        epochs=args.epochs,
        weeks=args.weeks,
        batch_size=args.batch_size,
        dim=args.dim,
        seed=args.seed,
    )
    return config, read_lake(args.lake, args.versions)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    config, frames = setup_from_args(args)

    def report(epoch: int, loss: float, speed: float) -> None:
        sys.stdout.write(f"epoch {epoch}: loss {loss:.4f}, {speed:,.0f} examples/s\n")
        sys.stdout.flush()

    trained = train(frames, as_cutoff(args.cutoff), config, on_epoch=report)
    trained.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

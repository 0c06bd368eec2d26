"""Offline evaluation of real-time recommendations: what the app would show on a product page.

For a cutoff T, the serving bundle is built exactly as it is published (model vectors, customer
vectors as of T, products bought before T) and asked, for each product view after T:

- synthetic data (with clickstream): a customer or anonymous session views a product; the
  target is the next different product viewed in the same session;
- The Complete Journey (no clickstream): leave-one-out within a basket bought in the week from
  T; one product of the basket stands for the viewed product, the others are the targets.

HR@5 is the share of views whose top 5 holds a target. Beside the shipped scorer: the same
scorer showing repeats too, the viewed product alone (an anonymous session), a co-purchase
item-kNN (cosine of products over the customers who bought them before T) and popularity.

    python -m contoso_recs.recommender.online_evaluation --lake ROOT --dataset NAME \\
        --cutoff YYYY-MM-DD [--model-dir DIR] --out reports/
"""

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from contoso_recs.recommender.data import (
    TEST_DAYS,
    LakeFrames,
    as_cutoff,
    before,
    purchases,
    read_lake,
)
from contoso_recs.recommender.train import TrainedModel, cutoff_date, positive_int, train
from contoso_recs.recommender.two_tower import TwoTowerConfig
from contoso_recs.resources.model_store import ModelStore
from contoso_recs.serving.bundle import Bundle, Policy, read_bundle, write_bundle
from contoso_recs.serving.contract import ScoreRequest
from contoso_recs.serving.publish import DEFAULT_POLICY, serving_arrays
from contoso_recs.serving.scorer import Scorer

log = logging.getLogger(__name__)

K = 5
MAX_QUERIES = 10_000
VALIDATION_QUERIES = 4_000
KNN_CHUNK = 256
REPORT_NAME = "evaluation_online"


@dataclass(frozen=True)
class Views:
    """Product views to answer: who (or None), which product, and the products that count."""

    customer_ids: list[str | None]
    product_ids: list[str]
    targets: list[set[str]]

    def __len__(self) -> int:
        return len(self.product_ids)


def next_views(
    frames: LakeFrames,
    cutoff: datetime,
    first_day: int = 0,
    days: int = TEST_DAYS,
    limit: int = MAX_QUERIES,
    seed: int = 0,
) -> Views:
    """Each product view in `days` days from the cutoff (skipping `first_day` days) followed by
    a view of another product in the same session; the target is that next product."""
    start = cutoff + timedelta(days=first_day)
    end = start + timedelta(days=days)
    views = (
        frames.product_views.filter(
            (pl.col("viewed_at") >= start)
            & (pl.col("viewed_at") < end)
            & pl.col("session_id").is_not_null()
        )
        .sort("session_id", "viewed_at")
        .with_columns(
            pl.col("product_id").shift(-1).over("session_id").alias("next_product"),
        )
        .filter(
            pl.col("next_product").is_not_null() & (pl.col("next_product") != pl.col("product_id"))
        )
    )
    views = _sample(views, seed, limit)
    return Views(
        [None if c is None else str(c) for c in views["customer_id"].to_list()],
        [str(p) for p in views["product_id"].to_list()],
        [{str(p)} for p in views["next_product"].to_list()],
    )


def basket_views(frames: LakeFrames, cutoff: datetime, seed: int = 0) -> Views:
    """One product of each basket bought in the week from the cutoff (chosen at random) as the
    viewed product, the basket's other products as targets."""
    end = cutoff + timedelta(days=TEST_DAYS)
    bought = purchases(frames).filter((pl.col("at") >= cutoff) & (pl.col("at") < end))
    baskets = (
        bought.group_by("order_id", "customer_id")
        .agg(pl.col("product_id").unique().sort())
        .filter(pl.col("product_id").list.len() >= 2)
        .sort("order_id")
    )
    baskets = _sample(baskets, seed)
    rng = np.random.default_rng(seed)
    customers, viewed, targets = [], [], []
    for customer, products in zip(baskets["customer_id"], baskets["product_id"], strict=True):
        chosen = int(rng.integers(len(products)))
        customers.append(str(customer))
        viewed.append(str(products[chosen]))
        targets.append({str(p) for i, p in enumerate(products) if i != chosen})
    return Views(customers, viewed, targets)


def _sample(frame: pl.DataFrame, seed: int, limit: int = MAX_QUERIES) -> pl.DataFrame:
    if frame.height <= limit:
        return frame
    return frame.sample(limit, seed=seed).sort(frame.columns[0])


def cutoff_bundle(trained: TrainedModel, frames: LakeFrames, cutoff: datetime, folder: Path):
    """The serving bundle as it would have been published at the cutoff."""
    arrays = serving_arrays(trained, frames, cutoff)
    return read_bundle(
        write_bundle(
            folder,
            model_version="evaluation",
            cutoff=cutoff.date().isoformat(),
            policy=DEFAULT_POLICY,
            **arrays,
        )
    )


def scorer_hit_rate(bundle: Bundle, policy: Policy, views: Views, anonymous: bool = False) -> float:
    scorer = Scorer(replace(bundle, policy=policy))
    hits = 0
    for customer, product, targets in zip(
        views.customer_ids, views.product_ids, views.targets, strict=True
    ):
        answer = scorer.recommend(ScoreRequest(None if anonymous else customer, product, K))
        hits += any(r["product_id"] in targets for r in answer["recommendations"])
    return hits / max(len(views), 1)


def co_purchase_knn_hit_rate(
    bundle: Bundle, frames: LakeFrames, cutoff: datetime, views: Views
) -> float:
    """Top 5 products by cosine with the viewed product over the customers who bought each."""
    product_ids = np.asarray(bundle.product_ids)
    bought = before(purchases(frames), cutoff).select("customer_id", "product_id").unique()
    columns = np.searchsorted(product_ids, bought["product_id"].cast(pl.String).to_numpy())
    columns = np.clip(columns, 0, len(product_ids) - 1)
    known = product_ids[columns] == bought["product_id"].cast(pl.String).to_numpy()
    customers = np.unique(bought["customer_id"].to_numpy(), return_inverse=True)[1]
    matrix = sp.csr_matrix(
        (np.ones(int(known.sum()), dtype=np.float32), (customers[known], columns[known])),
        shape=(int(customers.max(initial=0)) + 1, len(product_ids)),
    )
    by_product = matrix.T.tocsr()
    norms = np.sqrt(np.asarray(by_product.sum(axis=1)).ravel())
    norms[norms == 0] = 1.0

    viewed = np.searchsorted(product_ids, np.array(views.product_ids, dtype=str))
    viewed = np.clip(viewed, 0, len(product_ids) - 1)
    is_known = product_ids[viewed] == np.array(views.product_ids, dtype=str)
    neighbours: dict[int, list[str]] = {}
    wanted = np.unique(viewed[is_known])
    for start in range(0, len(wanted), KNN_CHUNK):
        chunk = wanted[start : start + KNN_CHUNK]
        similarity = (by_product[chunk] @ matrix).toarray() / norms[chunk, None] / norms[None, :]
        similarity[np.arange(len(chunk)), chunk] = -np.inf
        similarity[similarity <= 0] = -np.inf
        top = np.argsort(-similarity, axis=1)[:, :K]
        for row, position in enumerate(chunk):
            finite = top[row][np.isfinite(similarity[row, top[row]])]
            neighbours[int(position)] = product_ids[finite].tolist()
    hits = 0
    for position, known_product, targets in zip(viewed, is_known, views.targets, strict=True):
        shown = neighbours.get(int(position), []) if known_product else []
        hits += any(p in targets for p in shown)
    return hits / max(len(views), 1)


def popularity_hit_rate(bundle: Bundle, views: Views) -> float:
    popular = [str(p) for p in np.asarray(bundle.product_ids)[bundle.popular_products[: K + 1]]]
    hits = 0
    for product, targets in zip(views.product_ids, views.targets, strict=True):
        shown = [p for p in popular if p != product][:K]
        hits += any(p in targets for p in shown)
    return hits / max(len(views), 1)


POLICY_GRID = [
    Policy(customer_weight, product_weight, popularity_weight, allow_repeats)
    for allow_repeats in (False, True)
    for customer_weight, product_weight in ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0))
    for popularity_weight in (0.0, 0.05, 0.1, 0.2, 0.3)
]


def tune_policy(bundle: Bundle, views: Views) -> tuple[Policy, float]:
    """The policy of POLICY_GRID with the best HR@5 on validation views, and that HR@5."""
    scored = [(scorer_hit_rate(bundle, policy, views), policy) for policy in POLICY_GRID]
    best, policy = max(scored, key=lambda pair: pair[0])
    log.info("best policy on %d validation views: %s, HR@5 %.4f", len(views), policy, best)
    return policy, best


def evaluate_online(
    frames: LakeFrames,
    trained: TrainedModel,
    cutoff: datetime,
    views: Views,
    validation: Views | None = None,
) -> dict:
    """HR@5 of the online scorer and the baselines on the views; with validation views, the
    scorer's policy is first tuned on those (never on the views it is scored on)."""
    tuned = None
    with tempfile.TemporaryDirectory() as scratch:
        bundle = cutoff_bundle(trained, frames, cutoff, Path(scratch) / "bundle")
        shipped = bundle.policy
        if validation is not None:
            shipped, validation_hr = tune_policy(bundle, validation)
            tuned = {
                "policy": asdict(shipped),
                "validation_views": len(validation),
                "validation_hr@5": validation_hr,
            }
        results = {
            "online (customer + viewed product)": scorer_hit_rate(bundle, shipped, views),
            "online, products bought before left out": scorer_hit_rate(
                bundle, replace(shipped, allow_repeats=False), views
            ),
            "online, viewed product alone (anonymous)": scorer_hit_rate(
                bundle, shipped, views, anonymous=True
            ),
            "co-purchase item-kNN": co_purchase_knn_hit_rate(bundle, frames, cutoff, views),
            "popularity": popularity_hit_rate(bundle, views),
        }
        known_customers = set(np.asarray(bundle.customer_ids).tolist())
        known_products = set(np.asarray(bundle.product_ids).tolist())
    return {
        "hr@5": results,
        "views": len(views),
        "anonymous_share": sum(c is None for c in views.customer_ids) / max(len(views), 1),
        "known_customer_share": sum(c in known_customers for c in views.customer_ids)
        / max(len(views), 1),
        "known_product_share": sum(p in known_products for p in views.product_ids)
        / max(len(views), 1),
        "policy": asdict(shipped),
        "tuned_on_validation": tuned,
    }


def write_online_report(dataset: str, cutoff: str, task: str, result: dict, out: Path) -> Path:
    """Add one dataset's figures to reports/evaluation_online.{json,md}, keeping the others."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{REPORT_NAME}.json"
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    report[dataset] = {"cutoff": cutoff, "task": task, **result}
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path = out / f"{REPORT_NAME}.md"
    md_path.write_text(markdown(report))
    return md_path


def markdown(report: dict) -> str:
    lines = [
        "# Real-time recommendations, evaluated offline",
        "",
        "What the product page would show (`contoso_recs.serving`), asked for each product view in",
        "the 7 days from the cutoff, with the serving bundle built as it would have been published",
        "at the cutoff. HR@5: the share of views whose top 5 holds a target. Written by",
        "`python -m contoso_recs.recommender.online_evaluation` (`make evaluate`).",
        "",
    ]
    for dataset, figures in sorted(report.items()):
        lines += [
            f"## {dataset}, cutoff {figures['cutoff']}",
            "",
            figures["task"],
            "",
            f"Views: {figures['views']:,} (anonymous {figures['anonymous_share']:.1%}, known "
            f"customer {figures['known_customer_share']:.1%}, known product "
            f"{figures['known_product_share']:.1%}).",
            "",
            f"Scorer policy: `{json.dumps(figures['policy'], sort_keys=True)}`"
            + (
                f", tuned on {figures['tuned_on_validation']['validation_views']:,} views "
                "of the days before the test days (validation HR@5 "
                f"{figures['tuned_on_validation']['validation_hr@5']:.4f})."
                if figures.get("tuned_on_validation")
                else " (the shipped one)."
            ),
            "",
            "| method | HR@5 |",
            "|---|---|",
        ]
        for method, value in figures["hr@5"].items():
            lines.append(f"| {method} | {value:.4f} |")
        lines.append("")
    return "\n".join(lines)


TASKS = {
    "next_view": "Target: the next different product viewed in the same session.",
    "basket": "Target: the other products of the basket (leave one out: one product of each "
    "basket bought in the week stands for the viewed product).",
}


def trained_model(
    frames: LakeFrames,
    cutoff: datetime,
    model_dir: Path | None,
    cache: Path,
    config: TwoTowerConfig | None = None,
):
    """The given model, or one trained before the cutoff (kept in `cache` for the next run,
    and trained again when the model settings have changed since)."""
    if model_dir is not None:
        return TrainedModel.load(model_dir, device="cpu")
    config = config or TwoTowerConfig()
    if (cache / "model.pt").exists():
        cached = TrainedModel.load(cache, device="cpu")
        if cached.config == config:
            log.info("using the model trained before %s in %s", f"{cutoff:%Y-%m-%d}", cache)
            return cached
        log.info("the model in %s was trained with other settings: training again", cache)
    trained = train(frames, cutoff, config)
    trained.save(cache)
    return trained


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument(
        "--cutoff", type=cutoff_date, help="YYYY-MM-DD (default: the promoted model's cutoff)"
    )
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--model-dir", default=None, help="a model trained before the cutoff")
    parser.add_argument(
        "--promoted-from", default=None, help="a model store: use its promoted model and cutoff"
    )
    parser.add_argument(
        "--validation-days",
        type=int,
        default=0,
        help="next_view only: tune the policy on the views of the first N days, test on the rest",
    )
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads for PyTorch (default: all)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = Path(args.model_dir) if args.model_dir else None
    if args.promoted_from:
        store = ModelStore(root=args.promoted_from)
        version = store.current_version()
        if version is None:
            parser.error(f"no promoted model in {args.promoted_from}")
        model_dir = store.version_dir(version)
        args.cutoff = store.card(version)["cutoff"]
    if not args.cutoff:
        parser.error("give --cutoff or --promoted-from")
    cutoff = as_cutoff(args.cutoff)
    frames = read_lake(args.lake)
    cache = Path(args.lake).parent / "online_evaluation_models" / args.cutoff
    trained = trained_model(frames, cutoff, model_dir, cache)
    validation = None
    if args.task == "basket":
        views = basket_views(frames, cutoff)
    elif args.validation_days:
        validation = next_views(frames, cutoff, 0, args.validation_days, VALIDATION_QUERIES)
        views = next_views(frames, cutoff, args.validation_days, TEST_DAYS - args.validation_days)
    else:
        views = next_views(frames, cutoff)
    result = evaluate_online(frames, trained, cutoff, views, validation)
    task = TASKS[args.task]
    if validation is not None:
        task += (
            f" Views of the first {args.validation_days} days from the cutoff tune the scorer's "
            f"policy; views of the other {TEST_DAYS - args.validation_days} days are the test."
        )
    path = write_online_report(args.dataset, args.cutoff, task, result, Path(args.out))
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

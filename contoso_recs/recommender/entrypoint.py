"""The training entrypoint that Dagster runs through Pipes: a local subprocess or an Azure ML job.

It reports each epoch's loss and throughput to the orchestrator's run log and the final figures
as materialisation metadata; run by hand, it just prints them.

    python -m contoso_recs.recommender.entrypoint --lake ROOT --cutoff 2017-12-04 --out DIR
"""

import logging
import time

from dagster_pipes import PipesContext, open_dagster_pipes

from contoso_recs.recommender.data import as_cutoff
from contoso_recs.recommender.train import default_device, parse_args, setup_from_args, train


def run(pipes: PipesContext, argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config, frames = setup_from_args(args)
    losses: list[float] = []
    speeds: list[float] = []

    def on_epoch(epoch: int, loss: float, examples_per_second: float) -> None:
        losses.append(loss)
        speeds.append(examples_per_second)
        pipes.log.info(f"epoch {epoch}: loss {loss:.4f}, {examples_per_second:,.0f} examples/s")

    started = time.perf_counter()
    trained = train(frames, as_cutoff(args.cutoff), config, on_epoch=on_epoch)
    bundle = trained.save(args.out)
    pipes.report_asset_materialization(
        metadata={
            "epochs": {"raw_value": len(losses), "type": "int"},
            "final_loss": {"raw_value": losses[-1] if losses else None, "type": "float"},
            "loss_by_epoch": {"raw_value": losses, "type": "json"},
            "examples_per_second": {
                "raw_value": sum(speeds) / len(speeds) if speeds else 0.0,
                "type": "float",
            },
            "training_seconds": {"raw_value": time.perf_counter() - started, "type": "float"},
            "device": {"raw_value": default_device(), "type": "text"},
            "bundle": {"raw_value": str(bundle), "type": "path"},
        }
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with open_dagster_pipes() as pipes:
        run(pipes, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

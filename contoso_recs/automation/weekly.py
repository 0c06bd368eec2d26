"""The weekly flow: Monday early morning, refresh and retrain behind the gate, then the email table.

Two runs, chained. The schedule starts `weekly_retrain` (lake refresh, candidate, evaluation,
promotion gate, promotion). When that run ends, successful or not, the sensor starts
`weekly_email` for the same week, which scores with whatever model is promoted then: the new one
when it passed the gate, the previous one when it did not (the table's metadata says which, and
why). The email table is not inside the retraining run because the blocking gate stops
everything downstream of a failed candidate, and the week's email must go out regardless.
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg

from contoso_recs.automation.jobs import LAKE_REFRESH_ASSETS
from contoso_recs.model.assets import CANDIDATE, EVALUATION, HOLDOUT_DAYS, PROMOTED
from contoso_recs.serving.assets import BUNDLE
from contoso_recs.weekly_email.assets import WEEKLY_PARTITIONS, WEEKLY_TOP5, freshness_checks

WEEK_TAG = "contoso_recs/week"
RETRAIN_RUN_TAG = "contoso_recs/retrain_run"
# Monday 03:00 UTC, six hours before the email team's 09:00 deadline.
WEEKLY_CRON = "0 3 * * 1"
# A retrain that ends in any way, cancelled included, still gets the week's table.
FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]
FIRST_LOOKBACK = timedelta(days=1)

weekly_retrain_job = dg.define_asset_job(
    "weekly_retrain",
    selection=dg.AssetSelection.assets(
        *LAKE_REFRESH_ASSETS, CANDIDATE, EVALUATION, PROMOTED, BUNDLE
    ),
    description="Refresh the lake, train a candidate on everything before the week's holdout, "
    "evaluate it, and promote it and publish its serving bundle if it passes the gate.",
)

weekly_email_job = dg.define_asset_job(
    "weekly_email",
    # The freshness check runs from its own sensor, at the deadline, not when the table is written.
    selection=dg.AssetSelection.assets(WEEKLY_TOP5) - dg.AssetSelection.checks(*freshness_checks),
    partitions_def=WEEKLY_PARTITIONS,
    description="Write the week's top-5 table with the promoted model.",
)


def week_of(moment: datetime) -> date:
    """The Monday starting the week that `moment` falls in."""
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def retrain_run_config(week: date) -> dict:
    """The candidate trains on orders before the last 7 days before the week and is evaluated
    on those 7 days, so the model and its gate use nothing from the week itself."""
    cutoff = week - timedelta(days=HOLDOUT_DAYS)
    return {"ops": {"model__two_tower_candidate": {"config": {"cutoff": cutoff.isoformat()}}}}


@dg.schedule(
    cron_schedule=WEEKLY_CRON,
    job=weekly_retrain_job,
    execution_timezone="UTC",
    description="Monday 03:00 UTC: refresh the lake and retrain; the email table follows.",
)
def weekly_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    week = week_of(context.scheduled_execution_time)
    return dg.RunRequest(
        run_key=week.isoformat(),
        run_config=retrain_run_config(week),
        tags={WEEK_TAG: week.isoformat()},
    )


@dg.sensor(
    job=weekly_email_job,
    minimum_interval_seconds=60,
    description="When a week's retraining run ends, successful or not, write that week's table.",
)
def weekly_email_sensor(context: dg.SensorEvaluationContext):
    # Turned on for the first time, it answers only the retraining runs of the last day.
    after = (
        datetime.fromtimestamp(float(context.cursor), UTC)
        if context.cursor
        else datetime.now(UTC) - FIRST_LOOKBACK
    )
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=weekly_retrain_job.name, statuses=FINISHED, updated_after=after
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=20,
    )
    for record in records:
        run = record.dagster_run
        week = run.tags.get(WEEK_TAG)
        if week and week in WEEKLY_PARTITIONS.get_partition_keys():
            yield dg.RunRequest(
                run_key=f"{week}:{run.run_id}",
                partition_key=week,
                tags={RETRAIN_RUN_TAG: run.run_id},
            )
        elif week:
            context.log.warning(f"run {run.run_id} names week {week}, which is not a partition")
    if records:
        context.update_cursor(str(records[-1].update_timestamp.timestamp()))


def weekly_defs() -> dg.Definitions:
    return dg.Definitions(
        jobs=[weekly_retrain_job, weekly_email_job],
        schedules=[weekly_schedule],
        sensors=[weekly_email_sensor],
    )

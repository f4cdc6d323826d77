"""The tracking settings every stage takes, as one config section (``--tracking.uri`` ...)."""

from __future__ import annotations

from dataclasses import dataclass

from bevt_core.config import option

SOURCES = ("cli", "pipeline")


@dataclass
class TrackingConfig:
    uri: str = option(
        "auto",
        help="MLflow tracking URI. auto: $MLFLOW_TRACKING_URI when set, else a SQLite file in "
        "the stage's local output folder (the training stages' run.work_dir, evaluate's output; shard "
        "and tokenize put no database among their outputs and log nothing); none: off.",
    )
    experiment: str = option("bevt", help="MLflow experiment name (a nested run goes in its parent's).")
    parent_run_id: str = option("", help="MLflow run (a pipeline run) this stage's run is nested under.")
    run_label: str = option(
        "",
        help="Added to the MLflow run's name ('finetune scene'): tells apart the runs of one stage in a pipeline run.",
    )
    source: str = option(
        "cli",
        help="What started the run, for MLflow's Source column: cli (`bevt STAGE`, the run's source type LOCAL) "
        "or pipeline (a KFP step: the components set it; source type JOB).",
        choices=SOURCES,
    )

    @property
    def enabled(self) -> bool:
        return self.uri.lower() != "none"

"""Reconstructable jobs for the production-mode tests (workers import this file by path)."""

import dagster as dg
from dagster_celery import celery_executor

from finnex_assets.definitions import ALL_ASSETS, build_resources

PER_DATE = dg.AssetSelection.groups("ingestion", "features", "images")


def _defs(executor: dg.ExecutorDefinition) -> dg.Definitions:
    job = dg.define_asset_job("prod_backfill", selection=PER_DATE, executor_def=executor)
    return dg.Definitions(assets=ALL_ASSETS, jobs=[job], resources=build_resources())


def in_process_job() -> dg.JobDefinition:
    return _defs(dg.in_process_executor).resolve_job_def("prod_backfill")


def multiprocess_job() -> dg.JobDefinition:
    return _defs(dg.multiprocess_executor.configured({"max_concurrent": 2})).resolve_job_def("prod_backfill")


def celery_job() -> dg.JobDefinition:
    return _defs(celery_executor).resolve_job_def("prod_backfill")

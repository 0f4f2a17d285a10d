"""DataFrames across runs: ``runs.histories()`` and ``runs.to_dataframe()``.

Each is checked against what a user would otherwise build by hand from the same listing:
``histories()`` against concatenating each run's ``history()``, the runs frame against a loop
over the listing's runs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from mirror import Api
from mirror.store.engine import make_engine
from mirror.synth import seed_project

PATH = "acme/frames"


@pytest.fixture(scope="module")
def api(module_database: str):
    engine = make_engine(module_database)
    seed_project(engine, "acme", "frames", 24, 2_500, seed=5)  # two chunks for the long runs
    engine.dispose()
    api = Api(database=module_database)
    yield api
    api.close()


def concatenated(runs: Any, **kwargs: Any) -> pd.DataFrame:
    """What ``histories()`` promises: each run's ``history()`` with its id, concatenated."""
    parts = []
    for run in runs:
        frame = run.history(**kwargs)
        if len(frame):
            parts.append(frame.assign(run_id=run.id))
    combined = pd.concat(parts, ignore_index=True)
    return combined[sorted(combined.columns)]


LISTINGS = [
    (None, "-created_at"),
    ({"state": {"$in": ["finished", "crashed"]}}, "+summary_metrics.loss"),
    ({"$or": [{"tags": "baseline"}, {"config.lr": {"$lt": 0.001}}]}, "name"),
]


@pytest.mark.parametrize(("filters", "order"), LISTINGS)
def test_histories_equal_each_runs_history_concatenated(api: Api, filters: Any, order: str):
    runs = api.runs(PATH, filters, order=order)
    got = runs.histories()
    pd.testing.assert_frame_equal(got, concatenated(runs))
    assert list(dict.fromkeys(got["run_id"])) == [r.id for r in runs if len(r.history())]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"samples": 17},
        {"keys": ["loss", "eval/acc"]},
        {"keys": ["eval/acc"], "x_axis": "_runtime"},
        {"keys": ["loss"], "samples": 5},
        {"stream": "system"},
    ],
)
def test_histories_keys_samples_and_streams_as_history_gives_them(api: Api, kwargs: Any):
    runs = api.runs(PATH, {"state": {"$ne": "running"}})
    pd.testing.assert_frame_equal(runs.histories(**kwargs), concatenated(runs, **kwargs))


def test_histories_x_axis_column_kept_with_keys(api: Api):
    frame = api.runs(PATH).histories(keys=["eval/acc"], x_axis="_runtime")
    assert set(frame.columns) == {"eval/acc", "_step", "_runtime", "run_id"}
    assert frame["eval/acc"].notna().all()


def test_histories_other_formats(api: Api):
    runs = api.runs(PATH, {"state": "finished"})
    rows = runs.histories(format="default", keys=["loss"])
    expected = [
        {**row, "run_id": run.id}
        for run in runs
        for row in run.history(keys=["loss"], pandas=False)
    ]
    assert rows == expected
    pl = pytest.importorskip("polars")
    polars_frame = runs.histories(format="polars")
    assert isinstance(polars_frame, pl.DataFrame)
    assert polars_frame.columns == list(runs.histories().columns)
    assert polars_frame.height == len(runs.histories())


def test_histories_of_nothing_and_bad_format(api: Api):
    assert api.runs(PATH, {"state": "no-such-state"}).histories().empty
    with pytest.raises(ValueError, match="format must be one of pandas, polars, default"):
        api.runs(PATH).histories(format="arrow")


def test_polars_missing_is_one_clear_error(api: Api, monkeypatch: pytest.MonkeyPatch):
    import sys

    monkeypatch.setitem(sys.modules, "polars", None)
    with pytest.raises(ImportError, match="format='polars' needs polars: pip install polars"):
        api.runs(PATH).histories(format="polars")


def test_runs_frame_equals_the_listing(api: Api):
    runs = api.runs(PATH, {"state": {"$ne": "running"}}, order="-summary_metrics.loss")
    frame = runs.to_dataframe()
    expected_records = []
    config_keys = sorted({k for r in runs for k in r.config})
    summary_keys = sorted({k for r in runs for k in r.summary})
    for run in runs:
        record = {
            "id": run.id,
            "name": run.name,
            "state": run.state,
            "group": run.group,
            "tags": run.tags,
            "created_at": run.created_at,
        }
        record.update({f"config.{k}": v for k, v in run.config.items()})
        record.update({f"summary.{k}": v for k, v in run.summary.items()})
        expected_records.append(record)
    columns = [
        "id",
        "name",
        "state",
        "group",
        "tags",
        "created_at",
        *(f"config.{k}" for k in config_keys),
        *(f"summary.{k}" for k in summary_keys),
    ]
    expected = pd.DataFrame.from_records(expected_records, columns=columns)
    expected["created_at"] = pd.to_datetime(expected["created_at"])
    pd.testing.assert_frame_equal(frame, expected)
    assert list(frame["id"]) == [r.id for r in runs]


def plain(column: pd.Series) -> list[Any]:
    """A column's values with pandas' missing markers as None."""
    return [None if not isinstance(v, (list, dict)) and pd.isna(v) else v for v in column]


def test_runs_frame_columns_chosen(api: Api):
    runs = api.runs(PATH, order="+created_at")
    nested = next(k for r in runs for k, v in r.config.items() if isinstance(v, dict) and v)
    inner = next(iter(next(r.config[nested] for r in runs if r.config.get(nested))))
    columns = ["id", "config.lr", f"config.{nested}.{inner}", "summary.loss", "job_type"]
    frame = runs.to_dataframe(columns=columns)
    assert list(frame.columns) == columns
    assert list(frame["id"]) == [r.id for r in runs]
    assert plain(frame["job_type"]) == [r.job_type for r in runs]
    inner_values = [(r.config.get(nested) or {}).get(inner) for r in runs]
    assert plain(frame[f"config.{nested}.{inner}"]) == inner_values
    with pytest.raises(ValueError, match="columns: unknown column 'colour'"):
        runs.to_dataframe(columns=["id", "colour"])
    pl = pytest.importorskip("polars")
    assert runs.to_dataframe(columns=["id", "config.lr"], format="polars").shape == (len(runs), 2)
    assert isinstance(runs.to_dataframe(columns=["id"], format="polars"), pl.DataFrame)

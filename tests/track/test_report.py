"""kdsearch.track.report: the end-of-search report: table, study, files and the offline
HTML page."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import optuna
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState

from kdsearch.track.report import (
    FEW_TRIALS,
    SearchFacts,
    TrialRecord,
    epoch_agreement,
    kd_gain_line,
    study_from_records,
    trials_table,
    unsafe_stops,
    write_report,
)
from kdsearch.track.schema import kd_gain

from .records import (
    ALL_PLOTS,
    BEST_FIRST,
    FINALS,
    FULL_SPACE,
    PNG_SIGNATURE,
    RECORDS,
    completed,
    make_search,
    params,
    written_plots,
)


def test_table_is_best_first_with_typed_columns() -> None:
    table = trials_table(RECORDS, make_search())
    assert table.column_names == [
        "rank", "trial_id", "run_id", "status", "epochs", "val_acc", "pareto", "param.alpha",
        "param.temperature", "param.lr", "param.backbone", "metric.best_val_acc",
        "metric.val_acc", "metric.val_class_acc.kick", "metric.val_macro_f1"]
    schema = table.schema
    assert [schema.field(n).type for n in ("rank", "epochs", "val_acc", "param.alpha",
                                           "param.backbone", "metric.val_macro_f1")] == [
        pa.int64(), pa.int64(), pa.float64(), pa.float64(), pa.string(), pa.float64()]
    rows = table.to_pylist()
    assert [r["trial_id"] for r in rows] == BEST_FIRST
    assert [r["rank"] for r in rows] == list(range(1, 13))
    best, f0, f1 = rows[0], rows[-1], rows[-2]
    assert best["val_acc"] == pytest.approx(0.80)
    assert best["param.alpha"] == pytest.approx(0.31) and best["param.backbone"] == "x3d_xs"
    assert best["metric.val_class_acc.kick"] == pytest.approx(0.40)
    assert best["metric.val_macro_f1"] is None  # only pruned trials reported it
    assert rows[6]["metric.val_macro_f1"] == pytest.approx(0.35)
    assert f0["run_id"] is None and f0["val_acc"] is None and f0["param.temperature"] is None
    assert f0["param.alpha"] == 1.5  # the table shows what was sampled, in range or not
    assert f1["val_acc"] == pytest.approx(0.2)  # from its history
    assert f1["param.backbone"] is None


def test_table_for_a_minimised_metric_puts_the_lowest_first() -> None:
    search = make_search(metric="val_loss", mode="min")
    records = [completed("a", 0.9, 0), completed("b", 0.3, 1), completed("c", 0.6, 2)]
    table = trials_table(records, search)
    assert table.column("trial_id").to_pylist() == ["b", "c", "a"]
    assert table.column_names[5] == "val_loss"


def test_int_and_numeric_choice_params_keep_their_types() -> None:
    search = make_search({"batch_size": {"type": "int", "low": 4, "high": 32, "step": 4},
                          "alpha": {"type": "choice", "values": [0.3, 0.7]}})
    records = [TrialRecord("a", None, "completed", 3, {"batch_size": 16, "alpha": 0.7}, {},
                           {3: 0.5}),
               TrialRecord("b", None, "failed", 0, {"batch_size": 8.5}, {}, {})]
    table = trials_table(records, search)
    assert table.schema.field("param.batch_size").type == pa.int64()
    assert table.column("param.batch_size").to_pylist() == [16, None]
    assert table.column("param.alpha").to_pylist() == ["0.7", None]
    study = study_from_records(records, search)
    assert study.trials[0].params == {"batch_size": 16, "alpha": 0.7}
    assert study.trials[1].params == {}  # 8.5 is not on the grid


def test_study_states_values_and_curves() -> None:
    study = study_from_records(RECORDS, make_search())
    trials = study.trials
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [t.state for t in trials] == ([TrialState.COMPLETE] * 6 + [TrialState.PRUNED] * 4
                                         + [TrialState.FAIL] * 2)
    assert [t.value for t in trials[:6]] == pytest.approx(list(FINALS.values()))
    assert all(t.value is None for t in trials[6:])
    assert study.best_trial.user_attrs == {"trial_id": "c3", "run_id": "run-c3",
                                           "status": "completed", "epochs": 10}
    assert trials[0].intermediate_values == RECORDS[0].history
    assert trials[7].intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert set(trials[0].params) == set(FULL_SPACE)
    assert trials[0].distributions["temperature"].log  # type: ignore[attr-defined]
    # f0: alpha 1.5 is outside [0, 1] and is left out; lr fits; the others were never sampled.
    assert trials[10].params == {"lr": 0.01}
    assert trials[10].user_attrs["run_id"] is None
    assert trials[11].params == {} and trials[11].intermediate_values == {1: 0.2}


def test_nan_and_missing_values_fail_the_trial_without_raising() -> None:
    search = make_search()
    records = [TrialRecord("nan", None, "completed", 2, params(0), {"val_acc": math.nan},
                           {1: 0.4, 2: math.nan}),
               TrialRecord("empty", None, "completed", 2, params(1), {}, {}),
               completed("ok", 0.5, 2, epochs=2),
               TrialRecord("odd", None, "interrupted", 1, params(3), {"val_acc": 0.9}, {})]
    study = study_from_records(records, search)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL,
                                               TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[0].intermediate_values == {1: 0.4}  # NaN epochs are left out
    table = trials_table(records, search)
    # NaN and missing rank alike, after every finite value; their tie goes by trial id.
    assert table.column("trial_id").to_pylist() == ["ok", "empty", "nan", "odd"]
    assert table.column("val_acc")[1].as_py() is None  # "empty": no value at all
    assert math.isnan(table.column("val_acc")[2].as_py())  # "nan": its last epoch's NaN


def test_write_report_writes_every_file(report: tuple[Path, list[Path]]) -> None:
    out, paths = report
    expected = [out / "trials.parquet", out / "trials.csv",
                *(out / "plots" / f"{name}.png" for name in (
                    "optimization_history", "learning_curves", "epoch_agreement",
                    "parallel_coordinate", "param_importances", "alpha_temperature")),
                out / "search_report.html"]
    assert paths == expected
    assert all(p.is_file() for p in paths)


def test_parquet_and_csv_round_trip(report: tuple[Path, list[Path]]) -> None:
    out, _ = report
    table = trials_table(RECORDS, make_search())
    assert pq.read_table(out / "trials.parquet").equals(table)
    csv = pa_csv.read_csv(out / "trials.csv", convert_options=pa_csv.ConvertOptions(
        column_types=table.schema, strings_can_be_null=True))
    assert csv.column_names == table.column_names
    for name in table.column_names:
        if pa.types.is_floating(table.schema.field(name).type):
            for a, b in zip(csv.column(name).to_pylist(), table.column(name).to_pylist(),
                            strict=True):
                assert a == pytest.approx(b) if b is not None else a is None
        else:
            assert csv.column(name).to_pylist() == table.column(name).to_pylist(), name


def test_html_inlines_plotly_once_with_one_div_per_plot(
        report: tuple[Path, list[Path]]) -> None:
    out, _ = report
    page = (out / "search_report.html").read_text(encoding="utf-8")
    assert page.count("plotly.js v") == 1  # the bundle's licence header
    assert "<script src=" not in page  # nothing to fetch: the page works offline
    assert page.count('class="plotly-graph-div"') == len(ALL_PLOTS)
    assert "6 completed, 4 pruned, 2 failed" in page
    assert "<title>" in page and "val_acc" in page
    assert all(f"<td>{tid}</td>" in page for tid in BEST_FIRST)


@pytest.mark.parametrize(("space", "records", "plots"), [
    pytest.param(None, [], set(), id="no-records"),
    pytest.param(None, RECORDS[10:], set(), id="all-failed"),
    pytest.param(None, RECORDS[6:10], {"optimization_history", "learning_curves"},
                 id="all-pruned"),
    pytest.param(None, RECORDS[:1], {"optimization_history", "learning_curves",
                                     "alpha_temperature"}, id="one-completed"),
    pytest.param({"alpha": FULL_SPACE["alpha"]}, RECORDS,
                 {"optimization_history", "learning_curves", "epoch_agreement",
                  "parallel_coordinate", "metric_vs_alpha"}, id="alpha-only"),
    pytest.param({"temperature": FULL_SPACE["temperature"], "lr": FULL_SPACE["lr"]}, RECORDS,
                 ALL_PLOTS - {"alpha_temperature"} | {"metric_vs_temperature"},
                 id="temperature-only"),
    pytest.param({}, RECORDS, {"optimization_history", "learning_curves", "epoch_agreement"},
                 id="no-space"),
])
def test_degenerate_searches_write_what_they_can(tmp_path: Path, space: dict | None,
                                                 records: list[TrialRecord],
                                                 plots: set[str]) -> None:
    search = make_search(space)
    paths = write_report(records, search, tmp_path / "out")
    assert paths[:2] == [tmp_path / "out" / "trials.parquet", tmp_path / "out" / "trials.csv"]
    assert paths[-1] == tmp_path / "out" / "search_report.html"
    assert written_plots(paths) == plots
    assert {p.stem for p in (tmp_path / "out" / "plots").glob("*.png")} == plots
    table = pq.read_table(paths[0])
    assert table.num_rows == len(records)
    assert [n for n in table.column_names if n.startswith("param.")] == [
        f"param.{n}" for n in search.space]
    page = paths[-1].read_text(encoding="utf-8")
    assert page.count('class="plotly-graph-div"') == len(plots)
    assert page.count("plotly.js v") == (1 if plots else 0)


def test_rewriting_a_directory_drops_plots_no_longer_drawn(
        report: tuple[Path, list[Path]], tmp_path: Path) -> None:
    out = tmp_path / "again"
    write_report(RECORDS, make_search(), out)
    paths = write_report(RECORDS[:1], make_search(), out)
    assert {p.stem for p in (out / "plots").glob("*.png")} == written_plots(paths)
    assert "param_importances" not in written_plots(paths)


# --- the page a person reads ----------------------------------------------------------------

FACTS = SearchFacts(teacher="small3d", teacher_value=0.86, classes=4, train_videos=400,
                    val_videos=30)


def _figure(page: str, title: str) -> list[dict]:
    """The traces of the plotly figure under the heading ``title``, read from the page."""
    start = page.index(f"<h2>{title}</h2>")
    call = page.index("Plotly.newPlot(", start)
    data = page.index("[", page.index(",", call))
    traces, _ = json.JSONDecoder().raw_decode(page, data)
    return traces


def _section(page: str, title: str) -> str:
    """The page from the heading ``title`` to the figure under it."""
    start = page.index(f"<h2>{title}</h2>")
    return page[start:page.index("<div", start)]


def test_headline_best_configuration_noise_teacher_data_and_trials(tmp_path: Path) -> None:
    page = write_report(RECORDS, make_search(), tmp_path, FACTS)[-1].read_text()
    headline = re.search(r"<section class='headline'>(.*?)</section>", page, re.S)
    assert headline is not None
    text = re.sub(r"<[^>]+>", " ", headline.group(1))
    text = re.sub(r"\s+", " ", text)
    # c3 is the best (0.80); one binomial standard error on 30 videos: sqrt(.8 * .2 / 30).
    se = math.sqrt(0.8 * 0.2 / 30)
    assert (f"Best: trial c3 , val_acc 0.8000 ± {se:.3f} (one standard error on 30 validation "
            "videos), with alpha 0.31, temperature 5.4, lr 0.004, backbone x3d_xs.") in text
    assert "Teacher small3d: val_acc 0.8600." in text
    assert "Data: 4 classes, 400 training videos, 30 validation videos." in text
    assert "Trials: 6 completed, 4 pruned, 2 failed." in text
    assert "Only 30 validation videos" in text  # 30 cannot separate trials 5 points apart


def test_headline_without_a_completed_trial_or_facts(tmp_path: Path) -> None:
    page = write_report(RECORDS[6:], make_search(), tmp_path)[-1].read_text()
    headline = page[page.index("<section class='headline'>"):page.index("</section>")]
    assert "No trial completed: there is no best configuration." in headline
    assert "Trials: 0 completed, 4 pruned, 2 failed." in headline
    assert "Teacher" not in headline and "Data:" not in headline  # not known: not said


def test_history_in_start_order_with_pruned_trials_at_their_last_value(tmp_path: Path) -> None:
    # Started in an order unlike the ranking: the pruned p1 first, then c0, c3, p0, c1.
    order = ["p1", "c0", "c3", "p0", "c1"]
    records = [dataclasses.replace(r, started=float(order.index(r.trial_id)))
               for r in RECORDS if r.trial_id in order]
    page = write_report(records[::-1], make_search(), tmp_path, FACTS)[-1].read_text()
    traces = {t["name"]: t for t in _figure(page, "val_acc by trial, in the order the trials "
                                                  "started")}
    pruned = traces["pruned (value when stopped)"]
    assert (pruned["text"], pruned["x"], pruned["y"]) == (["p1", "p0"], [1, 4], [0.40, 0.30])
    done = traces["completed"]
    assert (done["text"], done["x"], done["y"]) == (["c0", "c3", "c1"], [2, 3, 5],
                                                    [0.61, 0.80, 0.74])
    best = traces["best completed so far"]
    assert (best["x"], best["y"]) == ([2, 3, 4, 5], [0.61, 0.80, 0.80, 0.80])


def test_compact_table_first_every_column_on_demand(tmp_path: Path) -> None:
    page = write_report(RECORDS, make_search(), tmp_path, FACTS)[-1].read_text()
    compact = page.index("<h2>trials, best first</h2>")
    details = page.index("<details>", compact)
    heads = re.findall(r"<th>([^<]*)</th>", page[compact:details])
    assert heads == ["rank", "trial_id", "status", "epochs", "val_acc", "pareto", "alpha",
                     "temperature", "lr", "backbone"]
    rows = re.findall(r"<tr><td>\d+</td><td>([^<]*)</td>", page[compact:details])
    assert rows == BEST_FIRST
    full = re.findall(r"<th>([^<]*)</th>", page[details:])
    assert len(full) == trials_table(RECORDS, make_search()).num_columns
    assert {"run_id", "metric.val_macro_f1", "param.alpha"} <= set(full)


def test_comparisons_carry_a_warning_only_when_the_search_cannot_tell(tmp_path: Path) -> None:
    comparisons = ("searched settings of the completed trials",
                   "importance of each setting for val_acc",
                   "alpha and temperature against val_acc")
    page = write_report(RECORDS, make_search(), tmp_path / "few", FACTS)[-1].read_text()
    for title in comparisons:
        notes = re.findall(r"<p class='warning'>([^<]*)</p>", _section(page, title))
        assert notes[0].startswith("Only 6 completed trials: importances")
        assert notes[1].startswith("Only 30 validation videos: one standard error")
    history = _section(page, "val_acc by trial, in the order the trials started")
    assert "warning" not in history  # not a comparison of settings

    many = [completed(f"c{i:02d}", 0.5 + i / 100, i % 5) for i in range(FEW_TRIALS)]
    enough = dataclasses.replace(FACTS, val_videos=400)
    page = write_report(many, make_search(), tmp_path / "many", enough)[-1].read_text()
    assert "class='warning'" not in page
    assert "Best: trial c19</b>" in page


# --- early stopping, checked afterwards ---------------------------------------------------

def _curve(trial_id: str, status: str, values: list[float]) -> TrialRecord:
    return TrialRecord(trial_id, f"run-{trial_id}", status, len(values), {}, {},
                       dict(enumerate(values, start=1)))


def test_epoch_agreement_over_completed_trials_and_stops_per_epoch() -> None:
    # Epoch 1 ranks the completed trials in reverse, epoch 2 as the last (epoch 3) does.
    completed = [_curve(t, "completed", [0.9 - k / 10, 0.3 + k / 10, 0.4 + k / 10])
                 for k, t in enumerate("abcde")]
    records = [*completed, _curve("p", "pruned", [0.2]), _curve("q", "pruned", [0.1]),
               _curve("r", "pruned", [0.3, 0.2]), _curve("f", "failed", [0.5])]
    found = epoch_agreement(records, "val_acc", 3)
    assert [(a.epoch, a.trials, a.stopped) for a in found] == [(1, 5, 2), (2, 5, 1)]
    assert found[0].rho == pytest.approx(-1.0) and found[1].rho == pytest.approx(1.0)
    (line,) = unsafe_stops(found, "val_acc")  # epoch 2 stopped one trial, but ranked well
    assert line.startswith("2 trials stopped at epoch 1, but val_acc at epoch 1 ranked the 5 "
                           "completed trials poorly against the last epoch (rank correlation "
                           "-1.00)")
    assert "search.scheduler {name: agreement}" in line
    # Over 3 completed trials a correlation says too little to warn.
    few = [*completed[:3], *records[5:]]
    assert epoch_agreement(few, "val_acc", 3)[0].rho == pytest.approx(-1.0)
    assert unsafe_stops(epoch_agreement(few, "val_acc", 3), "val_acc") == []


def test_no_warning_without_stops_or_without_enough_completed_trials() -> None:
    unstopped = [_curve(t, "completed", [1 - v, v]) for t, v in (("a", .2), ("b", .5))]
    assert unsafe_stops(epoch_agreement(unstopped, "val_acc", 2), "val_acc") == []
    one = [_curve("a", "completed", [0.9, 0.2]), _curve("p", "pruned", [0.1])]
    found = epoch_agreement(one, "val_acc", 2)
    assert found[0].rho is None and unsafe_stops(found, "val_acc") == []


def test_the_report_draws_each_epochs_agreement(tmp_path: Path) -> None:
    page = write_report(RECORDS, make_search(), tmp_path, FACTS)[-1].read_text()
    (trace, *_) = _figure(page, "how well each epoch&#x27;s val_acc ranked the completed "
                                "trials as their last epoch did")
    assert trace["x"] == list(range(1, 10))  # epochs 1 to 9 of 10
    assert trace["y"] == pytest.approx([1.0] * 9)  # these curves keep their order


# --- what the teacher added ------------------------------------------------------------------

@pytest.mark.parametrize(("kd", "no_teacher", "metric", "mode", "line"), [
    ([0.50, 0.54, 0.52], [0.45, 0.47, 0.49], "val_acc", "max",
     "distillation: +0.050 val_acc over the same student without the teacher (0.520 against "
     "0.470; SE 0.016 over 3 seeds; validation noise 0.050): helped"),
    ([0.50, 0.54, 0.52], [0.50, 0.52, 0.51], "val_acc", "max",
     "distillation: +0.010 val_acc over the same student without the teacher (0.520 against "
     "0.510; SE 0.013 over 3 seeds; validation noise 0.050): within noise"),
    ([0.45, 0.47, 0.49], [0.50, 0.54, 0.52], "val_acc", "max",
     "distillation: -0.050 val_acc over the same student without the teacher (0.470 against "
     "0.520; SE 0.016 over 3 seeds; validation noise 0.050): hurt"),
    ([1.0, 1.2], [1.5, 1.7], "val_loss", "min",
     "distillation: -0.500 val_loss over the same student without the teacher (1.100 against "
     "1.600; lower is better; SE 0.141 over 2 seeds): helped"),
    ([0.6], [0.5], "val_acc", "max",
     "distillation: +0.100 val_acc over the same student without the teacher (0.600 against "
     "0.500; 1 seed: no standard error; validation noise 0.049): not judged (that needs 2 or "
     "more seeds on each side: report.kd_seeds)"),
    ([0.6], [0.5, 0.52], "val_acc", "max",
     "distillation: +0.090 val_acc over the same student without the teacher (0.600 against "
     "0.510; 1 and 2 seeds: no standard error; validation noise 0.049): not judged (that "
     "needs 2 or more seeds on each side: report.kd_seeds)"),
])
def test_kd_gain_line(kd: list[float], no_teacher: list[float], metric: str, mode: str,
                      line: str) -> None:
    assert kd_gain_line(kd_gain(kd, no_teacher, metric=metric, mode=mode, n_val=100)) == line


def test_headline_says_what_the_teacher_added(tmp_path: Path) -> None:
    gain = kd_gain([0.50, 0.54, 0.52], [0.45, 0.47, 0.49], metric="val_acc", mode="max",
                   n_val=30)
    facts = dataclasses.replace(FACTS, kd_gain=gain)
    page = write_report(RECORDS, make_search(), tmp_path, facts)[-1].read_text()
    headline = page[page.index("<section class='headline'>"):page.index("</section>")]
    assert "Distillation: +0.050 val_acc over the same student without the teacher" in headline
    assert "helped." in headline
    assert "Distillation" not in write_report(RECORDS, make_search(), tmp_path, FACTS)[-1] \
        .read_text()


def test_the_front_of_accuracy_and_latency_is_marked_in_the_table_and_drawn(
        tmp_path: Path) -> None:
    from kdsearch.track.report import pareto_records, write_report

    # (val_acc, latency_ms): c3 is best, c1 faster, c2 fastest; c0, c4 and c5 are beaten by
    # one of them on both; an infeasible trial is never on the front.
    latency = {"c0": 30.0, "c1": 12.0, "c2": 5.0, "c3": 25.0, "c4": 40.0, "c5": 6.0}
    records = [dataclasses.replace(r, metrics={**r.metrics, "latency_ms": latency[r.trial_id]})
               if r.trial_id in latency else r for r in RECORDS]
    records.append(TrialRecord("i0", "run-i0", "infeasible", 0, params(3),
                               {"latency_ms": 1.0}, {}))
    search = make_search()
    assert [r.trial_id for r in pareto_records(records, search)] == ["c3", "c1", "c2"]
    table = trials_table(records, search).to_pylist()
    assert {r["trial_id"] for r in table if r["pareto"]} == {"c3", "c1", "c2"}
    assert next(r for r in table if r["trial_id"] == "c2")["metric.latency_ms"] == 5.0

    written = write_report(records, search, tmp_path)
    assert "front" in written_plots(written)
    assert (tmp_path / "plots" / "front.png").read_bytes()[:8] == PNG_SIGNATURE
    page = (tmp_path / "search_report.html").read_text()
    assert "val_acc against latency_ms: the Pareto front" in page

    # Many objectives: the front is theirs.
    multi = make_search(objectives=[{"metric": "val_acc", "mode": "max"},
                                    {"metric": "student_params", "mode": "min"}])
    params_of = {"c0": 5.0, "c1": 9.0, "c2": 1.0, "c3": 9.0, "c4": 2.0, "c5": 1.0}
    records = [dataclasses.replace(r, metrics={**r.metrics,
                                               "student_params": params_of[r.trial_id]})
               if r.trial_id in params_of else r for r in RECORDS]
    assert [r.trial_id for r in pareto_records(records, multi)] == ["c3", "c4", "c2"]

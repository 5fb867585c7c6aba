import numpy as np
import pandas as pd
import pytest

from cxr_transfer.evaluate.compare import check_same_images, compare_modes, comparisons, table_lines
from cxr_transfer.evaluate.evaluation import HEADLINE, evaluate, headline, prediction_table
from cxr_transfer.evaluate.metrics import mcnemar_p
from cxr_transfer.evaluate.verdicts import Scored
from cxr_transfer.report.summary import summary_markdown, summary_table

NAMES = ["vgg16-scratch", "vgg16-fe", "vgg16-ft", "vgg16-ft_classifier", "resnet18-ft", "resnet18-fe"]


def test_comparisons_pair_each_mode_with_every_earlier_mode_of_its_arch():
    assert comparisons(NAMES) == [
        ("vgg16-fe", "vgg16-scratch"),
        ("vgg16-ft", "vgg16-scratch"),
        ("vgg16-ft", "vgg16-fe"),
        ("vgg16-ft_classifier", "vgg16-scratch"),
        ("vgg16-ft_classifier", "vgg16-fe"),
        ("vgg16-ft_classifier", "vgg16-ft"),
        ("resnet18-fe", "resnet18-ft"),  # another arch: only its own modes
    ]


def _preds(correct: np.ndarray, y: np.ndarray, positive="Covid", other="Normal"):
    """Predictions whose correctness per image is `correct` (probabilities 0.8 / 0.2)."""
    p_pos = np.where(correct == (y == 1), 0.8, 0.2)
    cls = np.where(y == 1, positive, other)
    return pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(len(y))],
            "group": np.arange(len(y)),
            "class": cls,
            "probability": p_pos,
            "predicted": np.where(p_pos >= 0.5, positive, other),
        }
    )


def test_compare_modes_is_paired_on_the_same_images():
    y = np.array([1, 0] * 20)
    a_right = np.ones(40, bool)
    b_right = np.ones(40, bool)
    b_right[:10] = False  # b is wrong on 10 images a gets right, never the other way
    runs = {
        n: {0: Scored.of(_preds(r, y), ["Normal", "Covid"], "Covid")}
        for n, r in (("x-ft", a_right), ("x-scratch", b_right))
    }
    out = compare_modes(runs, None, ("auroc", "accuracy"), (200, 0, 0.95))
    c = out["x-ft vs x-scratch"]
    assert c["accuracy"].point == pytest.approx(0.25) and c["accuracy"].method == "test_set"
    assert c["mcnemar_p"] == pytest.approx(mcnemar_p(a_right, b_right)) == pytest.approx(2 * 0.5**10)
    assert 0 < c["accuracy"].lo < 0.25 < c["accuracy"].hi <= 0.5
    assert c["accuracy"].level() == "suggestive"  # one run per mode: never conclusive


def test_compare_modes_refuses_predictions_on_different_images():
    y = np.array([1, 0] * 5)
    a, b = _preds(np.ones(10, bool), y), _preds(np.ones(10, bool), y)
    b["path"] = b["path"][::-1].to_numpy()
    with pytest.raises(ValueError, match="evaluated on different test images"):
        check_same_images({"x-fe": list(a["path"]), "x-scratch": list(b["path"])})


def test_summary_table_marks_only_the_best_its_verdict_supports_and_keeps_intervals():
    def m(acc, auc):
        return {
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "accuracy": acc,
            "specificity": 0.5,
            "auroc": auc,
            "ci": {"accuracy": [acc - 0.1, acc + 0.1], "auroc": None},
            "train_seconds": 1.0,
            "images_per_s": 2.0,
        }

    runs = {"a-scratch": [m(0.6, 0.7)], "a-fe": [m(0.9, None)], "a-ft": [m(0.8, 0.9)]}
    df = summary_table(runs)  # no verdict supports a winner: nobody is marked, not even the top accuracy
    assert "Seeds" not in df and "Accuracy SD" not in df  # one seed: today's table
    assert df["Best"].tolist() == ["", "", ""]
    assert "(best" not in summary_markdown(df, [])
    df = summary_table(runs, marks={"a-ft": "best internally, suggestive; behind fe at site-b"})
    assert df.loc[1, "Accuracy CI"] == [0.8, 1.0]
    text = summary_markdown(df, [], ["a-x trains exactly what a-y trains"])
    assert "| **a-ft** (best internally, suggestive; behind fe at site-b) |" in text
    assert "| 0.900 [0.800, 1.000] |" in text
    assert "| n/a |" in text  # an undefined AUROC is said, never shown as a number
    assert "Note: a-x trains exactly what a-y trains" in text


@pytest.mark.parametrize(
    "classes, positive",
    [(["Normal", "Covid"], "Covid"), (["Covid", "Normal"], "Covid"), (["Normal", "Covid"], "Normal")],
)
def test_the_positive_class_may_be_either_class(classes, positive):
    """data.positive naming the first class must not swap predictions or metrics."""
    test = pd.DataFrame(
        {"path": ["a", "b", "c", "d"], "group": [0, 1, 2, 3], "class": ["Covid", "Covid", "Normal", "Normal"]}
    )
    test["label"] = test["class"].map(classes.index)
    p_covid = np.array([0.9, 0.4, 0.2, 0.6])  # one Covid and one Normal image are wrong
    p_pos = p_covid if positive == "Covid" else 1 - p_covid
    pred = prediction_table(test, p_pos, classes, positive)
    assert pred["predicted"].tolist() == ["Covid", "Normal", "Normal", "Covid"]
    y = (test["label"] == classes.index(positive)).to_numpy()
    m = evaluate(y, p_pos, None, y, p_pos, 20, 0, 0.95, 10)
    assert m["accuracy"] == 0.5 and m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert m["auroc"] == 0.75


def test_the_headline_is_lean_and_flat():
    y = np.array([1, 0] * 10)
    p = np.linspace(0.05, 0.95, 20)
    full = {
        "arch": "a",
        "mode": "fe",
        **evaluate(y, p, None, y, p, 50, 0, 0.95, 10),
        "best_epoch": 3,
        "epochs_run": 5,
        "train_seconds": 1.5,
    }
    h = headline(full)
    assert h["accuracy"] == full["accuracy"] and h["auroc"] == full["auroc"] and h["n_test"] == 20
    assert list(h) == list(HEADLINE) and len(h) == 11  # about a dozen columns in `dvc metrics show`
    assert not {"per_class", "confusion", "ci", "accuracy_ci_low", "train_seconds", "arch"} & set(h)
    assert all(not isinstance(v, dict | list) for v in h.values())


def test_per_source_metrics_only_where_a_source_has_both_classes():
    from cxr_transfer.evaluate.evaluation import per_source

    test = pd.DataFrame(
        {
            "source": ["A", "A", "A", "A", "B", "B", ""],
            "class": ["Covid", "Covid", "Normal", "Normal"] + ["Covid"] * 3,
        }
    )
    y = (test["class"] == "Covid").to_numpy()
    p = np.array([0.9, 0.4, 0.2, 0.1, 0.8, 0.7, 0.6])
    out = per_source(test, y, p)
    assert out["A"] == {"n": 4, "accuracy": 0.75, "auroc": 1.0, "recall": 0.5, "specificity": 1.0}
    assert out["B"] == {"n": 2, "note": "only Covid in test: no per-source accuracy or AUROC"}
    assert "" not in out and per_source(test.assign(source=""), y, p) == {}


def test_the_trust_table_says_green_or_names_each_flag():
    from cxr_transfer.report.summary import trust_lines

    def r(auc, flagged):
        return {
            "auroc": auc,
            "auroc_ci_low": auc - 0.1,
            "auroc_ci_high": min(1.0, auc + 0.1),
            "flagged": flagged,
        }

    probe = {
        "pixels_16": r(0.6, False),
        "acquisition": {**r(0.55, False), "top_features": "bytes 0.60"},
        "outside_lungs": {
            "lite": {"masked": r(0.5, False), "centre_only": {"auroc": 0.85}, "flagged": False}
        },
        "near_duplicates": {
            "pairs": 2,
            "cross_split_pairs": 0,
            "flagged": False,
            "max_bits": 24,
            "max_framed_bits": 36,
        },
        "source": {"skipped": "no image has a source", "flagged": False},
        "flag_auroc": 0.8,
        "flag_cramers_v": 0.5,
    }
    text = "\n".join(trust_lines(probe))
    assert "Nothing is flagged." in text and "**FLAG**" not in text
    assert "| pixels 16x16 | AUROC 0.600 [0.500, 0.700] | >= 0.8 | ok |" in text
    assert "the lungs-only images reach AUROC 0.850" in text and "skipped: no image has a source" in text
    probe["pixels_16"] = r(0.95, True)
    probe["outside_lungs"]["lite"] = {"masked": r(0.9, True), "centre_only": {"auroc": 0.9}, "flagged": True}
    text = "\n".join(trust_lines(probe))
    assert "**2 probe(s) flagged**" in text and text.count("**FLAG**") == 2
    assert "need no disease detail" in text and "the signal lies outside the lungs" in text


K3 = ["Normal", "Covid", "Pneumonia"]


def _k_case(seed=0, n=90, skill=2.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    z = rng.normal(size=(n, 3)) + skill * np.eye(3)[y]
    return y, np.exp(z) / np.exp(z).sum(1, keepdims=True)


def test_k_class_evaluation_headline_and_predictions_agree():
    from cxr_transfer.evaluate.evaluation import evaluate_k, headline_k, prediction_table_k

    y, P = _k_case()
    test = pd.DataFrame({"path": [f"{i}.png" for i in range(90)], "group": np.arange(90) // 2})
    test["class"], test["label"] = np.asarray(K3)[y], y
    full = evaluate_k(y, P, test["group"].to_numpy(), K3, "Covid", 50, 0, 0.95, 10)
    pred = prediction_table_k(test, P, K3)
    assert full["accuracy"] == pytest.approx((pred["predicted"] == pred["class"]).mean(), abs=1e-6)
    assert full["n_groups"] == 45 and full["classes"] == K3
    cm = np.array(full["confusion_matrix"]["rows_true_columns_predicted"])
    assert cm.sum() == 90 and np.trace(cm) == (pred["predicted"] == pred["class"]).sum()
    assert (
        full["recall"]
        == full["per_class"]["Covid"]["recall"]
        == pytest.approx(
            ((pred["class"] == "Covid") & (pred["predicted"] == "Covid")).sum() / (y == 1).sum(), abs=1e-6
        )
    )
    lo, hi = full["ci"]["auroc_macro"]
    assert lo < full["auroc_macro"] < hi
    full.update(best_epoch=2, epochs_run=3, train_seconds=1.0, arch="a", mode="fe")
    head = headline_k(full)
    assert head["auroc_macro"] == full["auroc_macro"] and head["recall"] == full["recall"]
    assert set(head) == {
        *("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro"),
        *("auroc_macro", "auprc_macro", "brier", "ece", "kappa", "recall", "specificity", "auroc", "n_test"),
    }
    assert not any(isinstance(v, dict | list) for v in head.values())  # flat: dvc metrics reads it
    full.pop("recall")  # without data.positive the binary names are absent from every file
    nopos = evaluate_k(y, P, None, K3, None, 10, 0, 0.95, 10)
    assert "recall" not in nopos and "recall" not in headline_k(
        {**nopos, **{k: full[k] for k in ("best_epoch", "epochs_run", "train_seconds", "arch", "mode")}}
    )
    assert np.allclose(pred[[f"p_{c}" for c in K3]].sum(1), 1.0, atol=1e-5)


def test_k_class_summary_compare_and_confusion_plot(tmp_path):
    from cxr_transfer.evaluate.evaluation import evaluate_k, prediction_table_k
    from cxr_transfer.report.charts import plot_confusions
    from cxr_transfer.report.summary import figures_for

    y, good = _k_case(1, skill=3.0)
    _, bad = _k_case(2, skill=0.2)
    test = pd.DataFrame({"path": [f"{i}.png" for i in range(90)], "group": np.arange(90)})
    test["class"], test["label"] = np.asarray(K3)[y], y
    preds = {"m-scratch": prediction_table_k(test, bad, K3), "m-fe": prediction_table_k(test, good, K3)}
    runs_k = {n: {0: Scored.of(d, K3, "Covid")} for n, d in preds.items()}
    compare = compare_modes(runs_k, None, ("auroc_macro", "accuracy"), (100, 0, 0.95))
    c = compare["m-fe vs m-scratch"]
    acc = (good.argmax(1) == y).mean() - (bad.argmax(1) == y).mean()
    assert c["accuracy"].point == pytest.approx(acc) and c["auroc_macro"].lo > 0
    figures, key = figures_for(3)
    runs = {
        n: [{**evaluate_k(y, P, None, K3, None, 20, 0, 0.95, 10), "train_seconds": 1.0, "images_per_s": 9}]
        for n, P in (("m-scratch", bad), ("m-fe", good))
    }
    table = summary_table(runs, figures, key)
    assert table.set_index("NETWORK").loc["m-fe", "AUROC (macro)"] == runs["m-fe"][0]["auroc_macro"]
    md = summary_markdown(table, table_lines(compare, (key, "accuracy")), figures=figures, auroc_key=key)
    assert "| NETWORK | Precision (macro) |" in md and "macro AUROC diff (95% CI)" in md
    plot_confusions({n: r[0] for n, r in runs.items()}, K3, None, tmp_path)
    assert (tmp_path / "confusion.png").stat().st_size > 5000


def test_the_confusion_chart_draws_rows_actual_and_columns_predicted(tmp_path, monkeypatch):
    """An asymmetric matrix: a transposed chart (or swapped labels) would draw another picture."""
    from cxr_transfer.report import charts

    drawn = {}
    monkeypatch.setattr(charts, "save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    m = {"confusion": {"tn": 5, "fp": 1, "fn": 7, "tp": 30}}  # 7 Covid called Normal, 1 Normal called Covid
    charts.plot_confusions({"a-ft": m}, ["Normal", "Covid"], "Covid", tmp_path)
    ax = drawn["fig"].axes[0]
    assert ax.images[0].get_array().tolist() == [[5, 1], [7, 30]]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("actual", "predicted")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Normal", "Covid"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Normal", "Covid"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(0, 0): "5", (0, 1): "1", (1, 0): "7", (1, 1): "30"}  # (row, column)


def _binary_case(n=60):
    """(y, p, groups, y_val, p_val) of a model with some skill."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, n), 0.01, 0.99)
    return y, p, None, y, p


def test_one_mode_says_there_is_nothing_to_compare_and_the_unit_is_named():
    from cxr_transfer.evaluate.compare import answer_lines
    from cxr_transfer.report.summary import resampling_unit

    runs = {"m-fe": [{**evaluate(*_binary_case(), 20, 0, 0.95, 10), "train_seconds": 1.0, "images_per_s": 9}]}
    unit = resampling_unit(["img:ab", "img:cd"])
    answer = answer_lines({}, {}, ("auroc", "accuracy"), None, unit)
    md = summary_markdown(summary_table(runs), [], answer=answer, unit=unit)
    assert "Nothing to compare: one mode per architecture ran" in md and "| comparison |" not in md
    assert "nothing to compare" in md and "bootstrap over images: there is no patient table" in md
    assert "images of one patient may sit in train and test" in md
    assert resampling_unit(["patient:1", "patient:2"]) == "patients"
    assert resampling_unit(["patient:1", "img:2"]).startswith("patients, and images")


def test_ece_has_no_interval_because_resampling_biases_it():
    m = evaluate(*_binary_case(), 50, 0, 0.95, 10)
    assert m["ece"] is not None and "ece" not in m["ci"] and m["ci"]["brier"] is not None


def test_run_folders_the_params_no_longer_produce_are_named(tmp_path):
    from cxr_transfer.report.summary import stale_runs

    for d in ("eval/a-fe-s0", "eval/a-ft-s0", "eval/probe", "dvclive/a-ft-s0"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "eval" / "note.txt").write_text("")
    folders = {"eval": tmp_path / "eval", "dvclive": tmp_path / "dvclive"}
    assert stale_runs(folders, {"a-fe-s0"}) == ["eval/a-ft-s0", "dvclive/a-ft-s0"]
    assert stale_runs(folders, {"a-fe-s0", "a-ft-s0"}) == []


def test_modes_that_train_the_same_layers_on_an_arch_are_named_one_result(tmp_path):
    """The report reads each run's mode from model.json (ModelInfo): on EfficientNet-Lite0 the
    classifier block is the last layer, so ft_classifier is fe; on VGG they differ."""
    from dataclasses import asdict

    from cxr_transfer.core.params import SEED_MODES
    from cxr_transfer.report.build import same_mode_notes
    from cxr_transfer.runtime.card import ModelInfo

    runs = {}
    for arch in ("efficientnet_lite0", "vgg16"):
        for mode in ("fe", "ft_classifier"):
            run = f"{arch}-{mode}-s0"
            info = ModelInfo(arch, mode, ["Normal", "Covid"], 32, [0.5] * 3, [0.5] * 3)
            ModelInfo(**{**vars(info), "mode_config": asdict(SEED_MODES[mode])}).write(tmp_path / run)
            runs[f"{arch}-{mode}"] = run
    assert same_mode_notes(tmp_path, runs) == [
        "efficientnet_lite0-ft_classifier trains exactly what efficientnet_lite0-fe trains (on "
        "efficientnet_lite0 the classifier block is the last layer): the two rows are one result, not two."
    ]

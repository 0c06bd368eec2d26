"""The evaluation report: tables per cutoff and task, with the bootstrap intervals."""

import json

import pytest

from contoso_recs.recommender.report import markdown, rerender, write_report


def test_report_shows_each_methods_interval_and_its_difference_from_the_reference():
    figures = {"hr@5": 0.07, "ndcg@5": 0.016, "customers": 1265.0}
    results = {
        "completejourney": {
            "2017-12-04": {
                "B": {"popularity": figures, "blend": figures},
                "intervals": {
                    "B": {
                        "popularity": {"hr@5": [0.059, 0.086], "ndcg@5": [0.0127, 0.0195]},
                        "blend": {
                            "hr@5": [0.061, 0.089],
                            "hr@5 - popularity": [-0.0055, 0.0111],
                            "ndcg@5": [0.0132, 0.0204],
                            "ndcg@5 - popularity": [0.0007, 0.0023],
                        },
                    }
                },
            }
        }
    }

    text = markdown(results, "evaluation.png")

    assert "| method | hr@5 | hr@5 - popularity | ndcg@5 | ndcg@5 - popularity |" in text
    assert "| popularity | [0.0590, 0.0860] | — | [0.0127, 0.0195] | — |" in text
    cells = ["[0.0610, 0.0890]", "[-0.0055, +0.0111]", "[0.0132, 0.0204]", "[+0.0007, +0.0023]"]
    assert "| blend | " + " | ".join(cells) + " |" in text
    assert (
        "What ships (`blend`) against `popularity`: HR@5 no measured difference; "
        "NDCG@5 measurably above." in text
    )


def test_evaluation_json_holds_the_task_figures_and_the_details_sit_beside_it(tmp_path):
    figures = {"hr@5": 0.07, "ndcg@5": 0.016}
    result = {
        "A": {"popularity": figures},
        "B": {"popularity": figures},
        "intervals": {"A": {}, "B": {}},
        "segments": {"A": {}, "B": {}},
        "seconds": 12.5,
    }

    write_report({"completejourney": {"2017-12-04": result}}, tmp_path)

    shaped = json.loads((tmp_path / "evaluation.json").read_text())
    assert shaped == {"completejourney": {"2017-12-04": {"A": result["A"], "B": result["B"]}}}
    details = json.loads((tmp_path / "evaluation_details.json").read_text())
    assert details == {
        "completejourney": {
            "2017-12-04": {
                "intervals": result["intervals"],
                "segments": {"A": {}, "B": {}},
                "seconds": 12.5,
            }
        }
    }
    assert (tmp_path / "evaluation.md").exists() and (tmp_path / "evaluation.png").exists()


def test_a_segment_without_test_customers_reads_n_a_not_a_measured_zero():
    figures = {"hr@5": 0.5, "ndcg@5": 0.2, "customers": 40.0}
    segments = {"blend": {"new": {"customers": 0.0}, "light": figures, "heavy": figures}}
    results = {"completejourney": {"2017-12-04": {"A": {}, "segments": {"A": segments}}}}

    text = markdown(results, "evaluation.png")

    assert "| blend | n/a (0) | 0.500 / 0.200 (40) | 0.500 / 0.200 (40) |" in text


def test_the_report_written_again_from_its_json_files_is_the_report(tmp_path):
    figures = {"hr@5": 0.07, "ndcg@5": 0.016, "customers": 1265.0}
    result = {
        "A": {"popularity": figures},
        "B": {"popularity": figures},
        "intervals": {"B": {"popularity": {"hr@5": [0.059, 0.086], "ndcg@5": [0.012, 0.019]}}},
        "segments": {"A": {"popularity": {"light": figures}}, "B": {}},
        "blend_config": {"blend": {"A": {"repeat_weight": 1.0}}},
    }
    write_report({"completejourney": {"2017-12-04": result}}, tmp_path)
    written = (tmp_path / "evaluation.md").read_text()
    (tmp_path / "evaluation.md").unlink()

    assert rerender(tmp_path).read_text() == written


def test_a_report_written_before_blend_named_what_ships_is_not_rendered_again(tmp_path):
    figures = {"hr@5": 0.07, "ndcg@5": 0.016}
    old = {"A": {"blend": figures, "shipped_blend": figures}, "B": {"popularity": figures}}
    (tmp_path / "evaluation.json").write_text(json.dumps({"completejourney": {"2017-12-04": old}}))
    (tmp_path / "evaluation_details.json").write_text("{}")

    with pytest.raises(ValueError, match="run the evaluation again"):
        rerender(tmp_path)

    assert not (tmp_path / "evaluation.md").exists()

"""The evaluation report: tables per cutoff and task, with the bootstrap intervals."""

from contoso_recs.recommender.report import markdown


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

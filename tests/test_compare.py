"""The comparison behind `vllm_outputs_match`, at its boundary, and the one-line reasons
a failed check gives (what `modelpub publish` prints)."""

from __future__ import annotations

from resources.validation.roundtrip import RoundTripReport
from resources.vllm.runner import compare_generations


def result(prompt: str, token_ids: list[int], logprobs: list[float]) -> dict:
    return {"prompt": prompt, "token_ids": token_ids, "logprobs": logprobs, "text": "t"}


SOURCE = {"results": [result("a", [1, 2], [-1.0, -2.0]), result("b", [3], [-0.5])]}


def test_logprobs_exactly_at_the_tolerance_pass_and_beyond_it_fail():
    published = {"results": [result("a", [1, 2], [-1.5, -2.0]), result("b", [3], [-0.5])]}
    at = compare_generations(SOURCE, published, tolerance=0.5)
    assert [r["within_tolerance"] for r in at] == [True, True]
    assert at[0]["max_abs_logprob_diff"] == 0.5
    beyond = compare_generations(SOURCE, published, tolerance=0.4999)
    assert [r["within_tolerance"] for r in beyond] == [False, True]
    assert all(r["tokens_equal"] for r in beyond)


def test_other_tokens_fail_whatever_the_logprobs():
    published = {"results": [result("a", [1, 9], [-1.0, -2.0]), result("b", [3], [-0.5])]}
    rows = compare_generations(SOURCE, published, tolerance=10.0)
    assert [r["tokens_equal"] for r in rows] == [False, True]
    report = RoundTripReport(generations=rows)
    assert not report.generations_passed
    assert report.generations_problem() == (
        "greedy tokens differ from the source model's on 1 of 2 prompts (first: 'a')"
    )


def test_each_failed_check_says_why_in_one_line():
    report = RoundTripReport(
        files=[{"file": "config.json", "present": True, "sha256_matches": False}],
        tensors=[{"name": "w", "equal": True}],
        generations=compare_generations(
            SOURCE,
            {"results": [result("a", [1, 2], [-1.0, -2.0]), result("b", [3], [-3.0])]},
            tolerance=0.01,
        ),
        expectations={
            "success": False,
            "results": [
                {"table": "generations", "expectation": "x", "column": "y", "success": False}
            ],
        },
    )
    assert report.tensors_problem() == "files missing or changed since upload: config.json"
    assert report.generations_problem() == (
        "logprobs differ by up to 2.5, beyond the tolerance, on 1 of 2 prompts"
    )
    assert report.expectations_problem() == "failed expectations: generations.x(y)"
    passing = RoundTripReport(
        files=[{"file": "f", "present": True, "sha256_matches": True}],
        tensors=[{"name": "w", "equal": True}],
        generations=compare_generations(SOURCE, SOURCE, tolerance=0.0),
        expectations={"success": True, "results": []},
    )
    assert passing.passed
    assert (passing.tensors_problem(), passing.generations_problem()) == (None, None)
    assert passing.expectations_problem() is None

"""``tagstream eval``: the pipeline scored on an evaluation set, with a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from inference.pipeline import Pipeline
from streams.cli.options import Commands, offline_option, settings_from
from streams.settings import Settings
from streams.worker.engine import pipeline_config
from workbench.evaluation import SAMPLE_CASES, EvalReport, evaluate
from workbench.match_orders import order_seeds, order_spread, spread_summary
from workbench.pictures import write_pictures
from workbench.pipeline_locator import pipeline_locator
from workbench.pretrained import with_available_models


def register(commands: Commands) -> None:
    evaluate = commands.add_parser("eval", help="score the pipeline offline on an evaluation set (cases.json format)")
    evaluate.add_argument(
        "--cases", type=Path, help="path to cases.json (default: the real photographs shipped in data/eval-sample)"
    )
    evaluate.add_argument("--json", type=Path, help="also write the full report (per case) as JSON here")
    evaluate.add_argument(
        "--viz", type=Path, metavar="DIR", help="write pictures of the worst cases here (source box | truth and answer)"
    )
    evaluate.add_argument("--viz-limit", type=int, default=24, metavar="N", help="at most N pictures (default 24)")
    evaluate.add_argument(
        "--match-orders",
        type=int,
        default=1,
        metavar="N",
        help="score again with the verifier's matches in N - 1 other orders and report the spread (default 1)",
    )
    evaluate.add_argument(
        "--catalogue",
        action="store_true",
        help="ask each box with every photo of its product the set holds from other scenes too (a multi-view "
        "catalogue; boxes with a product name)",
    )
    offline_option(evaluate, "use random-init models even if pretrained ones exist")
    evaluate.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    settings, offline = with_available_models(settings_from(args))
    return run_eval(
        settings,
        offline,
        args.cases or SAMPLE_CASES,
        args.json,
        args.viz,
        args.viz_limit,
        args.match_orders,
        args.catalogue,
    )


def run_eval(
    settings: Settings,
    offline: bool,
    cases: Path,
    json_out: Path | None,
    viz: Path | None = None,
    viz_limit: int = 24,
    match_orders: int = 1,
    catalogue: bool = False,
) -> int:
    """Scores the pipeline on ``cases``; the report, JSON and pictures are those of the natural match order.

    With ``match_orders`` > 1 the set is scored again with the matches shuffled (`workbench.match_orders`),
    sharing the first run's cached source features, and the report gains ``match_orders``: per row,
    the counts of every run. Its ``seconds`` are the first run's, caches cold as before.
    ``catalogue``: every box is asked with its product's views from other scenes too
    (`workbench.evaluation.with_catalogue`); the report says so in ``catalogue``.
    """
    if not cases.is_file():
        print(f"no evaluation cases at {cases}: pass --cases PATH/cases.json", file=sys.stderr)
        return 2
    if match_orders < 1:
        print("--match-orders must be at least 1", file=sys.stderr)
        return 2
    if offline:
        print("models: random-init (offline); scores reflect the geometric verifier and the fusion rules")
    print("loading models ...", flush=True)
    pipeline = Pipeline.load(pipeline_config(settings))
    seeds = order_seeds(match_orders)
    reports = [
        _scored(cases, pipeline.with_match_order(seed), "eval" if seed is None else f"order {seed}", catalogue)
        for seed in seeds
    ]
    report = reports[0]
    result = report.to_json()
    result["model_version"] = pipeline.model_version
    result["catalogue"] = catalogue
    print(_summary(result))
    if match_orders > 1:
        result["match_orders"] = order_spread(seeds, [result, *(r.to_json() for r in reports[1:])])
        print("\n" + spread_summary(result["match_orders"]))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1))
        print(f"report written to {json_out}")
    if viz is not None:
        pictures = write_pictures(report, viz, viz_limit)
        print(f"{len(pictures)} pictures of the worst cases written to {viz}")
    return 0


def _scored(cases: Path, pipeline: Pipeline, label: str, catalogue: bool) -> EvalReport:
    with tqdm(total=0, unit="box", desc=label) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return evaluate(cases, pipeline_locator(pipeline), progress=progress, catalogue=catalogue)


def _summary(result: dict[str, Any]) -> str:
    header = (
        f"{'':28} {'boxes':>5} {'recall@.5':>9} {'wrong box':>9} {'missed':>6} {'precision':>9} "
        f"{'mean IoU':>8} {'IoU all':>8} {'trivial':>8} {'FP rate':>8}"
    )
    lines = ["by sequence", header]
    lines += [_row(name, scores) for name, scores in sorted(result["per_sequence"].items())]
    lines += ["", "by kind", header]
    lines += [_row(name, scores) for name, scores in result["per_category"].items()]
    for category, buckets in result["per_view_change"].items():
        lines += ["", f"{category} by viewpoint change (degrees)", header]
        lines += [_row(bucket, scores) for bucket, scores in buckets.items()]
    lines += ["", header, _row("OVERALL", result)]
    if result["copies_expected"] or result["copies_wrong"]:
        lines.append(
            f"further copies of repeated products: {result['copies_found']} of {result['copies_expected']} found, "
            f"{result['copies_wrong']} answered where no copy is"
        )
    lines.append(f"seconds: {result['seconds']:.1f}")
    return "\n".join(lines)


def _row(name: str, m: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    return (
        f"{name:28} {m['boxes']:>5} {fmt(m['recall_iou50']):>9} {m['found_wrong_box']:>9} {m['not_found']:>6} "
        f"{fmt(m['precision']):>9} {fmt(m['mean_iou']):>8} {fmt(m['mean_iou_all']):>8} "
        f"{fmt(m['trivial_baseline_iou']):>8} {fmt(m['false_positive_rate']):>8}"
    )

"""The scoring job: manifest shards -> decode + prepare (CPU) -> scorer actors (GPU) -> committed score shards.

A run is three steps, each in one module:

1. plan (pipeline.scoring.plan): resolve the model and the kind of scorer, open the output (a rerun adds to it only
   with the same identity), validate the manifest, find the shards left to score;
2. execute (pipeline.scoring.stages): the Ray Data pipeline, which hands each completed shard to
3. commit (pipeline.scoring.commit): assemble the shard's output in manifest order, write it whole, mark it.

A rerun skips committed shards; a shard that was not committed when the job died is scored again from scratch, so
every manifest row ends up in the output exactly once.
"""

from __future__ import annotations

import time
from collections import Counter

from pipeline.infra import store
from pipeline.infra.console import console
from pipeline.scoring.commit import commit_shard, totals
from pipeline.scoring.config import JobConfig, JobError
from pipeline.scoring.plan import Plan, plan
from pipeline.scoring.stages import execute


def run(config: JobConfig, log=console.say) -> dict:
    """Score every uncommitted shard of the manifest. Returns the run summary (also written to _run.json)."""
    t0 = time.perf_counter()
    p = plan(config, log)
    run_url = store.join(p.output.url, "_run.json")
    store.write_json(run_url, {**p.run_info, "status": "running"})

    t_score = time.perf_counter()
    counts: Counter = Counter()
    for shard in [s for s in p.pending if s.num_rows == 0]:  # nothing to score: commit the empty shard now
        counts += commit_shard(shard, [], p.kind, p.output)
    scored, timing, short = execute(p, log)
    counts += scored
    scoring_s = time.perf_counter() - t_score

    summary = _summary(p, counts, timing, short, scoring_s, time.perf_counter() - t0)
    store.write_json(run_url, summary)
    log(
        f"done: {summary['rows']} rows in the output, {summary['errors']} errors {summary['errors_by_kind']}; "
        f"this run scored {counts['rows']} rows in {scoring_s:.1f} s "
        f"({summary['this_run']['rows_per_s']} rows/s; Ray start {p.ray_start_s:.1f} s)"
    )
    if summary["status"] == "failed":
        raise JobError(summary["failure"])
    return summary


def _summary(p: Plan, counts: Counter, timing: dict, short: dict[str, str], scoring_s: float, wall_s: float) -> dict:
    """The run's record: the whole output's totals (from the commit markers), this run's figures, and its status:
    failed when a shard came up short or the error rate passed --max-error-rate."""
    pending = {s.name for s in p.pending}
    done = [s.name for s in p.shards if s.name not in pending or s.name not in short]
    total = totals(p.output, done)
    summary = {
        **p.run_info,
        "status": "done",
        "rows": total["rows"],
        "errors": total["errors"],
        "errors_by_kind": {k.split(":", 1)[1]: v for k, v in sorted(total.items()) if k.startswith("error:")},
        "this_run": {
            "shards": len(p.pending),
            "rows": counts["rows"],
            "errors": counts["errors"],
            "scoring_s": round(scoring_s, 2),
            "ray_start_s": round(p.ray_start_s, 2),
            "rows_per_s": round(counts["rows"] / scoring_s, 2) if counts["rows"] else None,
            **timing,
            "wall_s": round(wall_s, 2),
        },
    }
    rate = counts["errors"] / counts["rows"] if counts["rows"] else 0.0
    if short:
        summary["status"] = "failed"
        summary["failure"] = (
            f"{len(short)} shard(s) yielded fewer rows than their manifest holds, nothing committed for them: "
            + ", ".join(f"{name} ({seen})" for name, seen in sorted(short.items()))
            + " (changed or emptied after validation? the job's log says why): check them, rerun"
        )
    elif rate > p.config.max_error_rate:
        summary["status"] = "failed"
        summary["failure"] = (
            f"error rate {rate:.1%} over --max-error-rate {p.config.max_error_rate:.1%} "
            f"({dict(summary['errors_by_kind'])}); the scored shards are committed"
        )
    return summary

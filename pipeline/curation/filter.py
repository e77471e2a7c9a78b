"""Filter a manifest by its scores: keep the rows that pass thresholds and an expression, sharded like the input.

    manifest/part-00007.parquet + scores/part-00007.parquet (committed)  ->  output/part-00007.parquet (kept rows)
                                                                           output/_filter.json (what was kept)

Each output shard depends only on its manifest shard and the score shard of the same NAME, so the shards are filtered
independently in a Ray Data map over shard names: a worker reads one manifest shard and the few score columns it
needs, writes the kept rows and returns small statistics. The driver only merges those statistics, so its memory does
not grow with the number of rows.

Decisions worth knowing:
- The manifest is read as the scoring job read it (pipeline.corpora.shards.scored_manifest and read_shard), so every
  layout the job takes filters. Output rows are the manifest's rows with the manifest shard's columns, no score
  columns (string-like columns come as `string`, as in the score output): the output is a manifest again, for the
  next training run or another scoring pass. A shard in a sub-folder or a hive partition keeps its relative path
  (partition keys stay folders). A shard holding its images' bytes (pipeline.corpora.inline) keeps its bytes column
  as stored: the bytes are its items, and without them the output could not be scored or trained on again. A
  WebDataset tar's kept rows are its index rows (`tar://<member>::<tar>` uris, the sidecar Parquet's columns), as a
  Parquet shard of the same name (`00000.parquet`): no tar is copied, and the scoring job reads the output back as a
  manifest of tar members.
- A shard with no kept rows writes NO file (the scoring job cannot take 0-row shards); `_filter.json` lists it under
  `shards` with `rows_kept: 0`. Every written shard has the name of its input shard.
- `_filter.json` is written last: its presence means the output is complete. On any failure the output folder, which
  the filter created, is deleted again. A non-empty output folder is refused unless `overwrite`.
- Rows with an `error` have no score: they are dropped, or with `keep_errors` kept whatever the thresholds say.
- Only committed score shards are read. A manifest shard without one, or a manifest row without a score row, fails
  the filter (before anything is written for a missing shard) unless `drop_missing`; dropped rows are counted.
- The driver keeps per-shard counts for `_filter.json` (grows with the number of shards, never with rows).
- `--where` is evaluated by pandas (`DataFrame.eval`, python engine). Before that, the expression's Python syntax tree
  is checked against a whitelist: column names, literals, arithmetic, comparisons, `and`/`or`/`not`, `in [...]`. No
  calls, no attributes, no subscripts, no `@` locals. It must give a boolean column; it is tried on an empty frame
  with the real column types and on the first score shard before anything is written.
- Any kind of scorer's output is filtered the same way (pipeline.scorers): `--min-score`/`--max-score` apply to its
  headline column (an LMM's `score`, a full-reference scorer's `fr_score`) or to `--column` (e.g. `psnr`), read
  from the score shards' schema metadata, with the column's range.
- Quantiles come from a fixed-bin histogram (4000 bins over the column's range, 0.001 on the 1..5 level scale;
  mergeable across shards, 32 KB): each quantile is exact to within one bin; min and max are exact.
"""

from __future__ import annotations

import ast
import pickle
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.corpora.inline import bytes_column
from pipeline.corpora.shards import check_manifest_schema, filter_rows, read_shard, scored_manifest
from pipeline.infra import store
from pipeline.infra.console import console
from schemas import SchemaError, ScoreColumns, output_columns

QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
BINS = 4000  # over a column's range: 0.001 wide on the 1..5 level scale, 0.025 dB on PSNR's 0..100


class FilterError(ValueError):
    """The filter cannot run as asked: the message says why (and names the shard or column)."""


# ------------------------------------------------------------------------------------------------------------
# What a score shard holds, and score histograms (shared with the report)


def score_columns(schema: pa.Schema, column: str | None = None) -> tuple[object, str]:
    """The scorer's columns of a score shard (schemas.ScoreColumns) and the column to threshold: `column`, one of
    the scorer's numeric columns, or by default its headline column (an LMM's `score`, a full-reference `fr_score`)."""
    try:
        columns = ScoreColumns.of(schema)
    except SchemaError as e:
        raise FilterError(f"not a score shard: {e}") from e
    column = column or columns.score_column
    if column not in columns.ranges:
        numeric = list(columns.ranges)
        raise FilterError(f"--column {column!r}: the {columns.scorer} scores' numeric columns are {numeric}")
    return columns, column


@dataclass
class ScoreHistogram:
    """Scores counted in BINS fixed bins over [lo, hi] (values outside go to the edge bins).

    Mergeable across shards in constant memory; quantiles are exact to within one bin; min, max and mean exactly.
    """

    lo: float
    hi: float
    counts: np.ndarray = None  # type: ignore[assignment]
    min: float = np.inf
    max: float = -np.inf
    total: float = 0.0  # the exact sum, for the mean

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(BINS, np.int64)

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / len(self.counts)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def add(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores, np.float64)
        scores = scores[np.isfinite(scores)]
        if not len(scores):
            return
        bins = np.clip(((scores - self.lo) / self.width).astype(np.int64), 0, len(self.counts) - 1)
        self.counts += np.bincount(bins, minlength=len(self.counts))
        self.min, self.max = min(self.min, float(scores.min())), max(self.max, float(scores.max()))
        self.total += float(scores.sum())

    def merge(self, other: ScoreHistogram) -> None:
        self.counts += other.counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.total += other.total

    def quantile(self, q: float) -> float | None:
        n = self.n
        if not n:
            return None
        if q <= 0 or q >= 1:
            return self.min if q <= 0 else self.max
        rank = q * (n - 1)  # 0-based rank of the quantile among the sorted scores
        b = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        return float(np.clip(self.lo + (b + 0.5) * self.width, self.min, self.max))

    def quantiles(self, qs: tuple[float, ...] = QUANTILES) -> dict[str, float | None]:
        return {f"q{round(q * 100):02d}": _round(self.quantile(q)) for q in qs}

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


# ------------------------------------------------------------------------------------------------------------
# The --where expression

_BOOLEAN_OPS = (ast.And, ast.Or, ast.Not, ast.Invert, ast.BitAnd, ast.BitOr)
_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.List,
    ast.Tuple,
    *_BOOLEAN_OPS,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.USub,
    ast.UAdd,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
)
_BACKTICKED = re.compile(r"`([^`]*)`")


def expression_columns(expr: str, columns: list[str]) -> list[str]:
    """Check `expr` against the whitelist and the known columns; return the columns it uses.

    The syntax tree is Python's own (pandas parses the same grammar); evaluation is left to pandas.
    """
    if "@" in expr:
        raise FilterError(f"--where {expr!r}: '@' (local variables) is not allowed; write the value itself")
    backticked = _BACKTICKED.findall(expr)
    # pandas quotes odd column names in backticks, which Python cannot parse: check them as placeholders.
    plain = _BACKTICKED.sub(lambda m: f"_qcurate_bt{backticked.index(m.group(1))}", expr)
    try:
        tree = ast.parse(plain.strip(), mode="eval")
    except SyntaxError as e:
        raise FilterError(f"--where {expr!r}: invalid syntax: {e.msg}") from None
    used: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            what = {ast.Call: "function calls", ast.Attribute: "attribute access", ast.Subscript: "subscripts"}
            kind = what.get(type(node), type(node).__name__)
            raise FilterError(f"--where {expr!r}: {kind} not allowed (use columns, numbers, comparisons, and/or/not)")
        if isinstance(node, ast.Name):
            name = node.id
            if name.startswith("_qcurate_bt"):
                name = backticked[int(name.removeprefix("_qcurate_bt"))]
            if name not in columns:
                raise FilterError(f"--where {expr!r}: unknown column {name!r}; the score columns are {columns}")
            used.append(name)
    if not used:
        raise FilterError(f"--where {expr!r}: names no column")
    return sorted(set(used))


def evaluate(expr: str, frame: pd.DataFrame, source: str) -> np.ndarray:
    """The expression's value on each row as a bool array (null -> False). Raises FilterError if not boolean."""
    try:
        result = frame.eval(expr, engine="python")
    except Exception as e:  # pandas raises many kinds: type mismatches, bad operands, ...
        raise FilterError(f"--where {expr!r} on {source}: {type(e).__name__}: {e}") from None
    if not isinstance(result, pd.Series) or not pd.api.types.is_bool_dtype(result.dtype):
        dtype = getattr(result, "dtype", type(result).__name__)
        raise FilterError(f"--where {expr!r}: gives {dtype}, not true/false per row (add a comparison)")
    return result.fillna(False).to_numpy(dtype=bool)


def check_where(expr: str, schema: pa.Schema) -> list[str]:
    """Validate `expr` on an empty frame with the real column types. Returns the columns it uses."""
    used = expression_columns(expr, schema.names)
    empty = pa.schema([schema.field(c) for c in used]).empty_table().to_pandas()
    evaluate(expr, empty, "an empty frame of the score columns")
    return used


# ------------------------------------------------------------------------------------------------------------
# One shard


@dataclass
class FilterConfig:
    manifest: str
    scores: str
    output: str
    min_score: float | None = None  # keep <column> >= min_score
    max_score: float | None = None  # keep <column> <= max_score
    column: str | None = None  # the thresholded column; None: the scorer's headline (score, fr_score)
    where: str | None = None
    keep_errors: bool = False
    drop_missing: bool = False  # drop manifest rows (or whole shards) without committed scores instead of failing
    overwrite: bool = False  # replace a non-empty output folder

    def __post_init__(self) -> None:
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise FilterError(f"--min-score {self.min_score} is above --max-score {self.max_score}")
        if self.where is not None and not self.where.strip():
            raise FilterError("--where is empty")


@dataclass
class ShardSpec:
    """What a worker needs to filter one shard (small: shipped to every task)."""

    config: FilterConfig
    column: str  # the thresholded column, with its range (of the histograms)
    lo: float
    hi: float
    words: list[str]  # a level scorer's level words, best first; [] for other scorers
    where_columns: list[str] = field(default_factory=list)


@dataclass
class ShardResult:
    name: str
    rows_in: int = 0
    rows_kept: int = 0
    missing: int = 0  # manifest rows without a score row
    errors: int = 0  # rows with an error (kept or dropped)
    kept_errors: int = 0
    kept_per_level: np.ndarray = None  # type: ignore[assignment]
    hist_in: ScoreHistogram = None  # type: ignore[assignment]  # every scored row
    hist_kept: ScoreHistogram = None  # type: ignore[assignment]
    problem: str | None = None  # set: the shard failed (nothing was written for it)


def filter_shard(item: dict, spec: ShardSpec) -> dict:
    """Ray Data map function: filter one manifest shard by its score shard, write the kept rows, return stats."""
    cfg, words = spec.config, spec.words
    result = ShardResult(item["name"], kept_per_level=np.zeros(len(words), np.int64))
    result.hist_in, result.hist_kept = ScoreHistogram(spec.lo, spec.hi), ScoreHistogram(spec.lo, spec.hi)
    try:
        manifest = read_shard(item["manifest"], name=item["name"], bytes_as_stored=True)
    except SchemaError as e:  # rewritten or removed since the plan read its footer
        result.problem = str(e)
        return {"result": pickle.dumps(result)}
    result.rows_in = manifest.num_rows
    # (uri and media_type: implied where the shard holds its images' bytes, pipeline.corpora.inline)
    implied = ("uri", "media_type") if bytes_column(manifest.schema, item["manifest"]) else ()
    absent = [c for c in ("id", "uri", "media_type") if c not in (*manifest.column_names, *implied)]
    if absent:
        result.problem = f"{item['manifest']}: not a manifest shard, missing column(s) {absent}"
        return {"result": pickle.dumps(result)}
    if item["scores"] is None:  # no committed score shard, and drop_missing was asked
        result.missing = manifest.num_rows
        return {"result": pickle.dumps(result)}

    probs = [f"p_{w}" for w in words]
    needed = sorted({"id", "error", spec.column, *probs, *spec.where_columns})
    schema = store.read_parquet_schema(item["scores"])
    absent = [c for c in needed if c not in schema.names]
    if absent:
        result.problem = f"{item['scores']}: missing column(s) {absent}"
        return {"result": pickle.dumps(result)}
    scores = store.read_parquet(item["scores"], columns=needed)

    # Match by id: row i of the manifest has score row order[i] (null: no score row).
    order = pc.index_in(manifest.column("id").cast(pa.string()), scores.column("id").cast(pa.string()))
    has_score = order.is_valid().to_numpy(zero_copy_only=False)
    result.missing = int((~has_score).sum())
    if result.missing and not cfg.drop_missing:
        sample = manifest.column("id").filter(pa.array(~has_score)).to_pylist()[:5]
        result.problem = (
            f"{item['scores']}: {result.missing} manifest row(s) of {item['manifest']} have no score, e.g. {sample} "
            "(rescore them, or pass --drop-missing)"
        )
        return {"result": pickle.dumps(result)}
    aligned = scores.take(order.drop_null())  # one score row per manifest row that has one, in manifest order

    is_error = aligned.column("error").is_valid().to_numpy(zero_copy_only=False)
    score = aligned.column(spec.column).to_numpy(zero_copy_only=False).astype(np.float64)
    passes = ~is_error
    if cfg.min_score is not None:
        passes &= score >= cfg.min_score
    if cfg.max_score is not None:
        passes &= score <= cfg.max_score
    if cfg.where:
        frame = aligned.select(spec.where_columns).to_pandas()
        passes &= evaluate(cfg.where, frame, item["scores"])
    keep = passes | (is_error & cfg.keep_errors)

    mask = np.zeros(manifest.num_rows, bool)
    mask[has_score] = keep
    kept = filter_rows(manifest, pa.array(mask))  # the manifest's own rows and schema, nothing added
    if kept.num_rows:
        store.write_parquet(kept, store.join(cfg.output, item["name"]))

    result.rows_kept, result.errors = kept.num_rows, int(is_error.sum())
    result.kept_errors = int((is_error & keep).sum())
    result.hist_in.add(score[~is_error])
    result.hist_kept.add(score[passes])
    if passes.any() and words:
        p = np.column_stack([aligned.column(c).to_numpy(zero_copy_only=False) for c in probs])[passes]
        result.kept_per_level += np.bincount(p.argmax(axis=1), minlength=len(words))
    return {"result": pickle.dumps(result)}


# ------------------------------------------------------------------------------------------------------------
# The whole manifest


def _prepare_output(cfg: FilterConfig) -> None:
    out = cfg.output.rstrip("/")
    for name, url in (("--manifest", cfg.manifest), ("--scores", cfg.scores)):
        url = url.rstrip("/")
        if out == url or out.startswith(url + "/") or url.startswith(out + "/"):
            raise FilterError(f"--output {cfg.output} overlaps {name} {url}")
    if store.exists(out):
        fs, path = store.filesystem(out)
        if store.retry(lambda: fs.ls(path, detail=False), f"list {out}"):
            if not cfg.overwrite:
                raise FilterError(f"--output {out} is not empty; pass --overwrite to replace it")
            _remove(out)


def _remove(url: str) -> None:
    fs, path = store.filesystem(url)
    if store.exists(url):
        store.retry(lambda: fs.rm(path, recursive=True), f"remove {url}")


def _plan(cfg: FilterConfig) -> tuple[list[dict], pa.Schema]:
    """Shard items (name, manifest URL, score URL or None) and the score schema, checked before any work."""
    from pipeline.scoring.commit import Output

    files = scored_manifest(cfg.manifest, cfg.scores)  # a WebDataset tar's rows: its index, which the scoring wrote
    scores = Output(cfg.scores)
    committed = scores.committed()
    # A shard's name is its path under the manifest folder: the kept rows go to the same path under the output, so a
    # hive-partitioned manifest stays one (its partition keys stay folders, not columns).
    names, manifest_urls = [f.name for f in files], [f.url for f in files]
    missing = [n for n in names if n not in committed]
    if missing and not cfg.drop_missing:
        raise FilterError(
            f"{len(missing)} of {len(names)} manifest shard(s) have no committed score shard in {cfg.scores}, "
            f"e.g. {missing[:5]} (finish the scoring run, or pass --drop-missing)"
        )
    if len(missing) == len(names):
        raise FilterError(f"no manifest shard has a committed score shard in {cfg.scores}")
    items = [
        {"name": n, "manifest": u, "scores": None if n in missing else scores.shard_url(n)}
        for n, u in zip(names, manifest_urls)
    ]
    first = next(i["scores"] for i in items if i["scores"])
    schema = store.read_parquet_schema(first)
    columns, _ = score_columns(schema, cfg.column)
    needed = ["id", "error", *columns.names]
    absent = [c for c in needed if c not in schema.names]
    if absent:
        raise FilterError(f"{first}: not a score shard, missing column(s) {absent}")
    # The manifest rules of the scoring job hold here too, checked from the footers before anything is written: a
    # readable file, the manifest's columns, none named like a score column (in --where, `score` means the model's).
    reserved = output_columns(columns)
    for f in files:
        try:
            check_manifest_schema(f.url, reserved, partitions=f.partitions)
        except SchemaError as e:
            if not f.webdataset:
                raise
            raise FilterError(
                f"{e} (a WebDataset shard's rows are the index that scoring {cfg.manifest} wrote into its output: "
                f"is --scores {cfg.scores} that output?)"
            ) from e
    return items, schema


def run_filter(cfg: FilterConfig, log=console.say) -> dict:
    """Filter every manifest shard; write the kept rows and `_filter.json`. Returns the summary (the JSON)."""
    import ray

    from pipeline.infra.version import code_version
    from pipeline.scoring.plan import init_ray

    t0 = time.perf_counter()
    cfg = replace(
        cfg, manifest=store.absolute(cfg.manifest), scores=store.absolute(cfg.scores), output=store.absolute(cfg.output)
    )
    items, schema = _plan(cfg)
    columns, column = score_columns(schema, cfg.column)
    words = list(columns.levels)
    lo, hi = columns.ranges[column]
    where_columns: list[str] = []
    if cfg.where:  # fail on a bad expression before any output exists
        where_columns = check_where(cfg.where, schema)
        sample = store.read_parquet(next(i["scores"] for i in items if i["scores"]), columns=where_columns)
        evaluate(cfg.where, sample.slice(0, 10_000).to_pandas(), "the first score shard")
    _prepare_output(cfg)
    rules = [
        f"{column} >= {cfg.min_score:g}" if cfg.min_score is not None else "",
        f"{column} <= {cfg.max_score:g}" if cfg.max_score is not None else "",
        f"where {cfg.where!r}" if cfg.where else "",
        "" if cfg.keep_errors else "no errors",
    ]
    log(
        f"filter: {len(items)} shard(s) of {cfg.manifest} by the scores in {cfg.scores} "
        f"({', '.join(r for r in rules if r) or 'everything'}) -> {cfg.output}"
    )

    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = ShardSpec(cfg, column, lo, hi, words, where_columns)
    total = ShardResult("all", kept_per_level=np.zeros(len(words), np.int64))
    total.hist_in, total.hist_kept = ScoreHistogram(lo, hi), ScoreHistogram(lo, hi)
    shards: dict[str, dict] = {}
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map(
            filter_shard,
            fn_kwargs={"spec": spec},
            num_cpus=0.5,  # mostly I/O: two shards per core
        )
        for row in ds.iter_rows():  # results stream in as shards finish; only their statistics stay here
            r: ShardResult = pickle.loads(row["result"])
            if r.problem:
                raise FilterError(r.problem)
            shards[r.name] = {"rows_in": r.rows_in, "rows_kept": r.rows_kept, "missing": r.missing}
            for name in ("rows_in", "rows_kept", "missing", "errors", "kept_errors"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
            total.kept_per_level += r.kept_per_level
            total.hist_in.merge(r.hist_in)
            total.hist_kept.merge(r.hist_kept)
    except BaseException:
        _remove(cfg.output)  # never leave a half-written manifest behind (we created the folder)
        raise

    dropped_errors = total.errors - total.kept_errors
    summary = {
        "manifest": cfg.manifest,
        "scores": cfg.scores,
        "output": cfg.output,
        "scores_run": scores_run(cfg.scores),
        "thresholds": {
            "min_score": cfg.min_score,
            "max_score": cfg.max_score,
            "column": column,
            "where": cfg.where,
            "keep_errors": cfg.keep_errors,
            "drop_missing": cfg.drop_missing,
        },
        "rows_in": total.rows_in,
        "rows_kept": total.rows_kept,
        "rows_dropped": {
            "by_thresholds": total.rows_in - total.missing - total.errors - (total.rows_kept - total.kept_errors),
            "errors": dropped_errors,
            "missing_scores": total.missing,
        },
        "kept_errors": total.kept_errors,
        "kept_per_level": dict(zip(words, total.kept_per_level.tolist())),
        "score_quantiles": {
            "method": f"fixed-bin histogram of {column} over [{lo}, {hi}], bin width {total.hist_in.width:g}; "
            "min/max exact",
            "input": total.hist_in.quantiles(),
            "kept": total.hist_kept.quantiles(),
        },
        "shards": shards,
        "code_version": code_version(),
        "created_at": datetime.now(timezone.utc).isoformat(),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    store.write_json(store.join(cfg.output, "_filter.json"), summary)  # last: marks the output complete
    log(
        f"filter: kept {total.rows_kept} of {total.rows_in} rows "
        f"({dropped_errors} errors dropped, {total.missing} without scores) -> {cfg.output}"
    )
    return summary


def scores_run(scores: str) -> dict | None:
    """Which model made the scores (from the scoring run's _run.json), when it is there."""
    url = store.join(scores, "_run.json")
    if not store.exists(url):
        return None
    run = store.read_json(url)
    keys = ("scorer", "model", "model_revision", "task", "levels", "code_version")
    return {k: run.get(k, "lmm" if k == "scorer" else None) for k in keys}

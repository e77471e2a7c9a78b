"""A self-contained HTML report of a scoring run: open it from disk, no server, no network.

It shows the score histogram, error counts by kind, and thumbnail strips of the lowest and highest scored items (a
video shows its middle sampled frame). For a level scorer (an LMM) also the mean level probabilities and a per-level
breakdown (argmax level); for a full-reference scorer, its score against PSNR and each pair side by side
(reference | distorted). With a threshold it shows what `--min-score` would keep and drop, and marks it on the
histogram. What kind of scorer wrote the shards, and so what their headline column is, their schema says.

The score shards are read one at a time and only their statistics are kept (a fixed-bin histogram, sums, counts and
the N lowest/highest rows), so memory does not grow with the run's size. Plots are drawn by matplotlib's Agg canvas
(no pyplot, no display) and embedded as PNG data URIs; thumbnails as JPEG data URIs. No external CSS or JS.

`--manifest` is read as the scoring run read it (pipeline.corpora.shards.scored_manifest), in any layout: a WebDataset
folder's rows are the index the run wrote under its output. Thumbnails of tar members are read archive by archive;
those of a manifest holding its images' bytes come from those bytes.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from pipeline.corpora.shards import BYTES, ShardFile, list_manifest, read_shard, scored_manifest, shard_schema
from pipeline.corpora.tars import read_members
from pipeline.curation.filter import (
    FilterConfig,
    FilterError,
    ScoreHistogram,
    run_filter,
    score_columns,
    scores_run,
)
from pipeline.infra import store
from pipeline.infra.media import MediaError, MediaOptions, given_bytes, load_media
from pipeline.scoring.commit import Output

CAPTION_COLUMNS = ("source", "mos")  # shown under thumbnails and in the per-level table when present
THUMB_PX = 160
KEPT_COLOUR = "#2a6fdb"  # the histogram's kept bars, and every plot's main colour (the browser test looks for it)
DROPPED_COLOUR = "#c8553d"
# Videos: 1 fps samples capped at 3 frames (first, middle, last): the thumbnail is the middle one.
THUMB_MEDIA = MediaOptions(sample_fps=1.0, max_frames=3)
GRID = 50  # bins per axis of the score-against-PSNR density (bounded memory, mergeable across shards)


@dataclass
class Item:
    score: float
    id: str
    uri: str
    media_type: str
    extras: dict = field(default_factory=dict)
    ref_uri: str | None = None  # full-reference scores: the reference, shown beside the item
    shard: str = ""  # the name of its score shard, and of its manifest shard
    data: bytes | None = None  # its bytes, where its manifest shard holds them (pipeline.corpora.inline)


@dataclass
class ReportData:
    """What the report shows, gathered shard by shard in bounded memory."""

    scores: str
    manifest: str | None
    words: list[str]  # level scorers' level words; [] for full-reference scorers
    hist: ScoreHistogram
    column: str = "score"  # the headline column (pipeline.curation.filter.score_columns)
    scorer: str = "lmm"
    against_psnr: np.ndarray | None = None  # full-reference: [GRID, GRID] counts of (psnr, score)
    psnr_range: tuple[float, float] = (0.0, 100.0)
    run: dict | None = None
    shards: int = 0
    rows: int = 0
    manifest_rows: int | None = None
    errors_by_kind: Counter = field(default_factory=Counter)
    prob_sums: np.ndarray = None  # type: ignore[assignment]
    level_counts: np.ndarray = None  # type: ignore[assignment]
    level_score_sums: np.ndarray = None  # type: ignore[assignment]
    level_mos_sums: np.ndarray = None  # type: ignore[assignment]
    level_mos_counts: np.ndarray = None  # type: ignore[assignment]
    lowest: list[Item] = field(default_factory=list)
    highest: list[Item] = field(default_factory=list)
    min_score: float | None = None
    kept: int | None = None  # scored rows with score >= min_score

    @property
    def scored(self) -> int:
        return self.hist.n

    @property
    def errors(self) -> int:
        return sum(self.errors_by_kind.values())


def _top(items: list[Item], candidates: list[Item], n: int, highest: bool) -> list[Item]:
    key = (lambda it: (-it.score, it.id)) if highest else (lambda it: (it.score, it.id))
    return sorted(items + candidates, key=key)[:n]


def collect(scores: str, manifest: str | None = None, n_thumbs: int = 8, min_score: float | None = None) -> ReportData:
    """Read the committed score shards (and the manifest's caption columns, when given) into ReportData."""
    scores, manifest = store.absolute(scores), store.absolute(manifest) if manifest else None
    committed = Output(scores).committed()
    shards = {f.name: f.url for f in list_manifest(scores) if f.name in committed}
    if not shards:
        raise FilterError(f"no committed score shards in {scores}")
    urls = list(shards.values())
    # read as the scoring run read it, whatever its layout (a WebDataset tar's rows: the index in the scores folder)
    manifest_files = {f.name: f for f in scored_manifest(manifest, scores)} if manifest else {}
    columns, column = score_columns(store.read_parquet_schema(urls[0]))
    words = list(columns.levels)
    probs = [f"p_{w}" for w in words]
    n = len(words)
    hist = ScoreHistogram(*columns.ranges[column])
    data = ReportData(scores, manifest, words, hist, column, columns.scorer, run=scores_run(scores))
    full_reference = "psnr" in columns.ranges
    if full_reference:
        data.against_psnr, data.psnr_range = np.zeros((GRID, GRID), np.int64), columns.ranges["psnr"]
    data.prob_sums, data.level_counts, data.level_score_sums = np.zeros(n), np.zeros(n, np.int64), np.zeros(n)
    data.level_mos_sums, data.level_mos_counts = np.zeros(n), np.zeros(n, np.int64)
    data.min_score, data.kept = min_score, 0 if min_score is not None else None
    if manifest:
        # footers alone: every layout's rows are Parquet here (a WebDataset tar's: its index)
        data.manifest_rows = sum(store.read_parquet_num_rows(f.url) for f in manifest_files.values())

    for name, url in shards.items():
        names = store.read_parquet_schema(url).names
        captions = [c for c in CAPTION_COLUMNS if c in names]
        pair = ["ref_uri", "psnr"] if full_reference and "ref_uri" in names else []
        table = store.read_parquet(url, columns=["id", "uri", "media_type", column, "error", *probs, *captions, *pair])
        extra = [c for c in CAPTION_COLUMNS if c not in names]
        if extra and name in manifest_files:  # caption columns the score shard lacks, from the same-named shard
            table = _join_manifest(table, manifest_files[name], extra)
        data.shards += 1
        data.rows += table.num_rows
        errors = table.column("error")
        data.errors_by_kind.update(e.split(":", 1)[0] for e in errors.drop_null().to_pylist())
        scored = table.filter(errors.is_null())
        s = scored.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        data.hist.add(s)
        if min_score is not None:
            data.kept += int((s >= min_score).sum())
        if not scored.num_rows:
            continue
        if pair:
            psnr = scored.column("psnr").to_numpy(zero_copy_only=False).astype(np.float64)
            edges = (np.linspace(*data.psnr_range, GRID + 1), np.linspace(hist.lo, hist.hi, GRID + 1))
            data.against_psnr += np.histogram2d(psnr, s, bins=edges)[0].astype(np.int64)
        p = np.column_stack([scored.column(c).to_numpy(zero_copy_only=False) for c in probs]) if probs else None
        if p is not None:
            level = p.argmax(axis=1)
            data.prob_sums += p.sum(axis=0)
            data.level_counts += np.bincount(level, minlength=n)
            data.level_score_sums += np.bincount(level, weights=s, minlength=n)
        if p is not None and "mos" in scored.column_names and pa.types.is_floating(scored.schema.field("mos").type):
            mos = scored.column("mos").to_numpy(zero_copy_only=False).astype(np.float64)
            ok = np.isfinite(mos)
            data.level_mos_sums += np.bincount(level[ok], weights=mos[ok], minlength=n)
            data.level_mos_counts += np.bincount(level[ok], minlength=n)
        # Only each shard's n lowest and highest rows become Python objects.
        order = np.argsort(s, kind="stable")
        for rows, highest in ((order[:n_thumbs], False), (order[::-1][:n_thumbs], True)):
            picked = scored.take(pa.array(rows)).to_pylist()
            candidates = [
                Item(
                    r[column],
                    r["id"],
                    r["uri"],
                    r["media_type"],
                    {c: r[c] for c in CAPTION_COLUMNS if c in r},
                    r.get("ref_uri"),
                    name,
                )
                for r in picked
            ]
            if highest:
                data.highest = _top(data.highest, candidates, n_thumbs, True)
            else:
                data.lowest = _top(data.lowest, candidates, n_thumbs, False)
    if manifest_files:
        _take_inline_bytes(data.lowest + data.highest, manifest_files)
    return data


def _take_inline_bytes(items: list[Item], files: dict[str, ShardFile]) -> None:
    """Give the items of manifest shards that hold their images' bytes (pipeline.corpora.inline) those bytes, for
    their thumbnails: their uri may name no object (`<shard>#<row>`, a Hugging Face `path`). A shard without bytes
    costs the read of its ids."""
    by_shard: dict[str, list[Item]] = {}
    for item in items:
        if item.shard in files:
            by_shard.setdefault(item.shard, []).append(item)
    for name, picked in by_shard.items():
        file = files[name]
        table = read_shard(file.url, ["id", BYTES], file.partitions, file.name)
        table = table.filter(pc.is_in(table.column("id"), pa.array([i.id for i in picked], pa.string())))
        found = dict(zip(table.column("id").to_pylist(), table.column(BYTES).to_pylist()))
        for item in picked:
            item.data = found.get(item.id)


def _join_manifest(table: pa.Table, file: ShardFile, columns: list[str]) -> pa.Table:
    present = [c for c in columns if c in shard_schema(file.url, file.partitions).names]
    if not present:
        return table
    manifest = read_shard(file.url, ["id", *present], file.partitions, file.name)
    order = pc.index_in(table.column("id"), manifest.column("id"))
    for c in present:
        table = table.append_column(c, manifest.column(c).take(order))
    return table


# ------------------------------------------------------------------------------------------------------------
# Plots and thumbnails


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot, no GUI backend, no global state
    fig.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _histogram_plot(data: ReportData) -> str:
    hist = data.hist
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    if hist.n:
        # Whole scale when the scores spread over it; zoomed to their range when they bunch up (e.g. a fresh model).
        lo_bin, hi_bin = 0, len(hist.counts)
        if hist.max - hist.min < 1.0:
            pad = max(0.01, 0.1 * (hist.max - hist.min))
            lo_bin = max(0, int((hist.min - pad - hist.lo) / hist.width))
            hi_bin = min(len(hist.counts), int((hist.max + pad - hist.lo) / hist.width) + 1)
        group = max(1, -(-(hi_bin - lo_bin) // 40))  # about 40 bars
        counts = hist.counts[lo_bin:hi_bin]
        counts = np.pad(counts, (0, -len(counts) % group)).reshape(-1, group).sum(axis=1)
        left = hist.lo + (lo_bin + np.arange(len(counts)) * group) * hist.width
        width = group * hist.width
        colours = [
            DROPPED_COLOUR if data.min_score is not None and x + width / 2 < data.min_score else KEPT_COLOUR
            for x in left
        ]
        ax.bar(left, counts, width=width, align="edge", color=colours, edgecolor="white", linewidth=0.5)
        if data.min_score is not None:
            ax.axvline(data.min_score, color="black", linestyle="--", linewidth=1.2)
            ax.annotate(
                f"min-score {data.min_score:g}",
                (data.min_score, 1),
                xycoords=("data", "axes fraction"),
                xytext=(4, -12),
                textcoords="offset points",
                fontsize=9,
            )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(data.column)
    ax.set_ylabel("items")
    ax.set_title(f"Score histogram ({hist.n} scored items)")
    return _png(fig)


def _against_psnr_plot(data: ReportData) -> str:
    """The density of (PSNR, score) pairs: where a learned full-reference score agrees with PSNR, and where not. The
    rows' `psnr` column is over RGB (pipeline.scorers.full_reference), so colour damage moves a pair left."""
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    counts = np.ma.masked_equal(data.against_psnr.T, 0)  # empty cells stay blank
    x, y = np.linspace(*data.psnr_range, GRID + 1), np.linspace(data.hist.lo, data.hist.hi, GRID + 1)
    mesh = ax.pcolormesh(x, y, counts, cmap="Blues", shading="flat")
    fig.colorbar(mesh, ax=ax, label="pairs")
    ax.set_xlabel("PSNR (dB, over RGB)")
    ax.set_ylabel(f"{data.column} ({data.scorer})")
    ax.set_title("Score against PSNR")
    return _png(fig)


def _bar_plot(labels: list[str], values: np.ndarray, title: str, ylabel: str, fmt: str) -> str:
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(labels, values, color=KEPT_COLOUR)
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=9)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)
    return _png(fig)


def _thumbnail(uri: str, media_type: str = "image", given: bytes | MediaError | None = None) -> str | None:
    """A JPEG data URI of the item (a video's middle sampled frame), THUMB_PX on the long side; None if unloadable.
    `given`: the item's bytes already read (a tar member), else it is fetched."""
    try:
        with given_bytes(uri, given) if given is not None else nullcontext():
            media = load_media(uri, media_type, THUMB_MEDIA)
    except MediaError:
        return None
    image = Image.fromarray(media.frames[len(media.frames) // 2])
    image.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------------------------------------
# HTML

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 24px 0 8px; }
.meta { color: #666; font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(2, 600px); gap: 16px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.strip { display: flex; flex-wrap: wrap; gap: 10px; }
.thumb { width: 160px; font-size: 11px; color: #444; overflow-wrap: anywhere; }
.thumb img, .missing { width: 160px; height: 160px; object-fit: contain; background: #f2f2f2; display: block; }
.missing { display: flex; align-items: center; justify-content: center; color: #999; }
.pair { display: flex; gap: 6px; }
.score { font-weight: bold; font-size: 13px; color: #222; }
.kept { color: #2a6fdb; font-weight: bold; } .dropped { color: #c8553d; font-weight: bold; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _picture(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">' if uri else '<div class="missing">unavailable</div>'


def _strip(items: list[Item], min_score: float | None) -> str:
    """Thumbnails with their scores; a full-reference pair as reference | distorted."""
    # Bytes from the manifest where it holds them; tar members (pipeline.corpora.tars) read archive by archive, each
    # streamed once; other items fetched.
    uris = [i.uri for i in items]
    members = read_members(uris, THUMB_MEDIA.max_video_bytes)
    with ThreadPoolExecutor(max_workers=8) as pool:  # object-store reads overlap
        given = [i.data if i.data is not None else members.get(i.uri) for i in items]
        thumbs = list(pool.map(_thumbnail, uris, [i.media_type for i in items], given))
        refs = list(pool.map(lambda i: _thumbnail(i.ref_uri) if i.ref_uri else None, items))
    cells = []
    for item, uri, ref in zip(items, thumbs, refs):
        picture = _picture(uri, item.id)
        if item.ref_uri:
            picture = f'<div class="pair">{_picture(ref, "reference of " + item.id)}{picture}</div>'
        extras = " · ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in item.extras.items())
        video = " (video, middle frame)" if item.media_type == "video" else ""
        verdict = "" if min_score is None else (" kept" if item.score >= min_score else " dropped")
        width = ' style="width: 330px"' if item.ref_uri else ""
        cells.append(
            f'<div class="thumb"{width}>{picture}<div class="score{verdict}">{item.score:.3f}</div>'
            f"<div>{_e(item.id)}{_e(video)}</div><div>{_e(extras)}</div></div>"
        )
    return f'<div class="strip">{"".join(cells)}</div>' if cells else "<p>No scored items.</p>"


def render(data: ReportData, out_dir: str) -> str:
    """Write `<out_dir>/index.html` and return its path (an absolute path for a local folder)."""
    scored = max(data.scored, 1)
    run = data.run or {}
    task = f", task {run['task']}" if run.get("task") else ""
    facts = [
        ["scores", data.scores],
        ["scorer", f"{data.scorer}: {run.get('model', '?')} @ {run.get('model_revision', '?')}{task}"],
        ["score shards (committed)", data.shards],
        ["score rows", data.rows],
        ["scored", data.scored],
        ["errors", data.errors],
        [f"mean {data.column}", f"{data.hist.mean():.3f}" if data.hist.n else "-"],
        [f"median {data.column}", f"{data.hist.quantile(0.5):.3f}" if data.hist.n else "-"],
    ]
    if data.manifest:
        facts[1:1] = [["manifest", data.manifest], ["manifest rows", data.manifest_rows]]
        facts.append(["manifest rows without a score row", max(0, (data.manifest_rows or 0) - data.rows)])
    threshold = ""
    if data.min_score is not None:
        dropped = data.scored - data.kept
        threshold = (
            f"<h2>Threshold: min-score {data.min_score:g}</h2><p>"
            f'<span class="kept">kept {data.kept}</span> of {data.rows} rows '
            f"({data.kept / max(data.rows, 1):.1%}); "
            f'<span class="dropped">dropped {dropped + data.errors}</span>: '
            f"{dropped} scored below {data.min_score:g}, {data.errors} with errors.</p>"
        )
    level_rows = []
    for i, word in enumerate(data.words):
        count = int(data.level_counts[i])
        row = [word, count, f"{count / scored:.1%}", f"{data.prob_sums[i] / scored:.3f}"]
        row.append(f"{data.level_score_sums[i] / count:.3f}" if count else "-")
        if data.level_mos_counts.sum():
            mos_n = data.level_mos_counts[i]
            row.append(f"{data.level_mos_sums[i] / mos_n:.3f}" if mos_n else "-")
        level_rows.append(row)
    level_header = ["level (argmax)", "items", "share", "mean p(level)", "mean score"]
    level_header += ["mean MOS"] if data.level_mos_counts.sum() else []
    errors = sorted(data.errors_by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
    errors_html = _table(["kind", "rows"], [[k, v] for k, v in errors]) if errors else "<p>No errors.</p>"
    panels = [f'<div><h2>Score histogram</h2><img id="histogram" src="{_histogram_plot(data)}" alt="histogram"></div>']
    if data.words:  # a level scorer's
        mean_probs = _bar_plot(data.words, data.prob_sums / scored, "Mean level probabilities", "probability", "{:.3f}")
        per_level = _bar_plot(data.words, data.level_counts, "Items per level (argmax)", "items", "{:d}")
        panels += [
            f'<div><h2>Mean level probabilities</h2><img id="levels" src="{mean_probs}" alt="level probabilities">'
            "</div>",
            f'<div><h2>Per level (argmax)</h2><img id="argmax" src="{per_level}" alt="items per level">'
            f"{_table(level_header, level_rows)}</div>",
        ]
    if data.against_psnr is not None:  # a full-reference scorer's
        density = _against_psnr_plot(data)
        panels.append(
            f'<div><h2>Score against PSNR</h2><img id="psnr" src="{density}" alt="score against PSNR over RGB"></div>'
        )
    panels.append(f"<div><h2>Errors by kind</h2>{errors_html}</div>")
    what = "pairs: reference | distorted, " if data.against_psnr is not None else ""

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qcurate report</title><style>{CSS}</style></head>
<body>
<h1>qcurate report</h1>
<div class="meta">{_e(data.scores)} · generated {_e(datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))}</div>
<h2>Summary</h2>{_table(["", ""], facts)}
{threshold}
<div class="grid">
{"".join(panels)}
</div>
<h2>Lowest scored ({what}{len(data.lowest)})</h2>{_strip(data.lowest, data.min_score)}
<h2>Highest scored ({what}{len(data.highest)})</h2>{_strip(data.highest, data.min_score)}
</body></html>
"""
    out = store.join(store.absolute(out_dir), "index.html")
    store.write_text(out, page)
    return out


def write_report(
    scores: str, out_dir: str, manifest: str | None = None, min_score: float | None = None, n_thumbs: int = 8
) -> str:
    """Collect and render the report of the score run `scores` into `out_dir`. Returns the HTML file's path."""
    return render(collect(scores, manifest, n_thumbs, min_score), out_dir)


def demo_tail(manifest: str, scores: str, out_dir: str) -> str:
    """The demo's last step: filter the corpus at its median score and write the report. Returns the report path.

    The median keeps about half the items whatever model scored them: the demo's tiny random model gives scores in a
    narrow band, where a fixed threshold would keep all or nothing.
    """
    threshold = collect(scores, manifest, n_thumbs=0).hist.quantile(0.5)  # None: nothing was scored
    run_filter(FilterConfig(manifest, scores, store.join(out_dir, "filtered"), min_score=threshold, overwrite=True))
    return write_report(scores, store.join(out_dir, "report"), manifest=manifest, min_score=threshold)

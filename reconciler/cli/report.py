"""`reconciler report --out DIR`: one self-contained `index.html` that draws the
fleet from the ledger alone: a timeline (one row per host, one bar per
attempt, coloured by outcome, hover text with job, attempt and duration), the
jobs by status, the failed jobs with their error line, and the workers.

No script, font or style is fetched from anywhere (the Pi may be offline): the
timeline is inline SVG and the hover text is SVG `<title>`, which every
browser shows without JavaScript. `reconciler run --report-dir DIR` rewrites
the same file after passes, so any static web server on the Pi serves it.

Results (issue: runtime) plug in through `SECTIONS`: a function from the
report's data to an HTML fragment, appended in order after the failed jobs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.cli.main import add_ledger_arg
from reconciler.cli.timeline import Attempt, Timeline
from reconciler.cli.util import error_line

if TYPE_CHECKING:
    from reconciler.daemon.loop import Reconciler
    from reconciler.git.snapshot import Snapshot

COLOURS = {"completed": "#2e9d4f", "failed": "#d64545", "running": "#3b7dd8",
           "claimed": "#9cc1f0", "released": "#9a9a9a", "swept": "#e69b2e",
           "cancelled": "#5c5c5c"}
STATUS_COLOURS = {"pending": "#c9c9c9", **COLOURS}
MAX_BARS = 5000  # the newest attempts; older ones are summarised in the counts
ROW_H, LABEL_W, PLOT_W = 28, 150, 1000
REWRITE_EVERY_S = 60.0


@dataclass
class ReportData:
    """What a section draws from: the status document (reconciler/cli/status.py),
    the timeline, the fleet's name and when the report was made."""

    doc: dict[str, Any]
    timeline: Timeline
    fleet: str
    now: float


# Extra sections, in order: results leaderboard and the like (the runtime issue).
SECTIONS: list[Callable[[ReportData], str]] = []


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def utc(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)) if epoch else "-"


def _bars(data: ReportData) -> list[Attempt]:
    attempts = [a for a in data.timeline.attempts.values()
                if a.host and a.claimed_at is not None]
    attempts.sort(key=lambda a: a.claimed_at or 0.0)
    return attempts[-MAX_BARS:]


def timeline_svg(data: ReportData) -> str:
    """One row per host that ran an attempt, one bar per attempt."""
    bars = _bars(data)
    if not bars:
        return '<p class="empty">No job has been claimed yet.</p>'
    names = {j["job_id"]: j["name"] for j in data.doc["jobs"]}
    hosts = sorted({a.host for a in bars if a.host})
    start = min(a.claimed_at or data.now for a in bars)
    end = max(max((a.ended_at or data.now) for a in bars), start + 1.0)
    scale = PLOT_W / (end - start)
    height = ROW_H * len(hosts) + 30
    out = [f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'width="{LABEL_W + PLOT_W + 10}" height="{height}" '
           f'aria-label="attempts by host over time">']
    axis_y = ROW_H * len(hosts) + 18
    out += [f'<rect x="0" y="{row * ROW_H}" width="{LABEL_W + PLOT_W}" height="{ROW_H}" '
            f'fill="{"#f6f6f6" if row % 2 else "#ffffff"}"/>' for row in range(len(hosts))]
    for i in range(1, 4):  # light grid lines with the time, UTC
        x = LABEL_W + PLOT_W * i / 4
        out.append(f'<line x1="{x:.0f}" y1="0" x2="{x:.0f}" y2="{ROW_H * len(hosts)}" '
                   f'stroke="#ddd" stroke-dasharray="2,3"/>')
        out.append(f'<text x="{x:.0f}" y="{axis_y}" class="axis" text-anchor="middle">'
                   f'{time.strftime("%H:%M:%S", time.gmtime(start + (end - start) * i / 4))}'
                   "</text>")
    for row, host in enumerate(hosts):
        y = row * ROW_H
        out.append(f'<g class="host-row" data-host="{escape(host)}">')
        out.append(f'<text class="host-label" x="6" y="{y + ROW_H * 0.65:.0f}">'
                   f'{escape(host)}</text>')
        for a in (b for b in bars if b.host == host):
            x0 = LABEL_W + ((a.claimed_at or start) - start) * scale
            x1 = LABEL_W + ((a.ended_at or data.now) - start) * scale
            name = names.get(a.job_id, a.job_id)
            took = a.elapsed_s(data.now) or 0.0
            hover = (f"{name} (attempt {a.attempt}) on {host}: {a.outcome}, "
                     f"{duration(took)}; claimed {utc(a.claimed_at)}"
                     + (f", ended {utc(a.ended_at)}" if a.ended_at else ""))
            out.append(f'<rect class="bar {a.outcome}" data-job="{escape(name)}" '
                       f'data-attempt="{a.attempt}" x="{x0:.1f}" y="{y + 4}" '
                       f'width="{max(3.0, x1 - x0):.1f}" height="{ROW_H - 8}" rx="3" stroke="#fff" '
                       f'fill="{COLOURS.get(a.outcome, "#888")}">'
                       f'<title>{escape(hover)}</title></rect>')
        out.append("</g>")
    out.append(f'<text x="{LABEL_W}" y="{axis_y}" class="axis">{utc(start)}</text>')
    out.append(f'<text x="{LABEL_W + PLOT_W}" y="{axis_y}" class="axis" '
               f'text-anchor="end">{utc(end)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def legend() -> str:
    return '<p class="legend">' + " ".join(
        f'<span><i style="background:{c}"></i>{k}</span>' for k, c in COLOURS.items()) + "</p>"


def counts_html(doc: dict[str, Any]) -> str:
    return '<div class="counts">' + "".join(
        f'<div class="count" style="border-color:{STATUS_COLOURS.get(s, "#888")}">'
        f'<b>{n}</b><span>{escape(s)}</span></div>'
        for s, n in doc["counts"].items()) + "</div>"


def failed_html(doc: dict[str, Any]) -> str:
    failed = [j for j in doc["jobs"] if j["status"] == "failed"]
    if not failed:
        return "<p>No failed jobs.</p>"
    rows = "".join(
        f"<tr><td>{escape(j['name'])}</td><td><code>{j['job_id'][:8]}</code></td>"
        f"<td>{j['attempt']}</td><td>{escape(j.get('last_host') or '')}</td>"
        f"<td class=\"err\">{escape(error_line(j['last_error']))}</td></tr>" for j in failed)
    return ('<table id="failed"><tr><th>job</th><th>id</th><th>attempt</th><th>host</th>'
            f"<th>error</th></tr>{rows}</table>")


def workers_html(doc: dict[str, Any]) -> str:
    from reconciler.cli.status import worker_state

    if not doc["workers"]:
        return "<p>No worker has sent a heartbeat.</p>"
    rows = "".join(
        f"<tr><td>{escape(w['name'])}</td><td>{escape(worker_state(w))}</td>"
        f"<td>{w['last_seen_s']:.0f}s</td><td>{len(w['jobs'])}</td></tr>"
        for w in doc["workers"])
    return ("<table id=\"workers\"><tr><th>worker</th><th>state</th><th>last beat</th>"
            f"<th>jobs</th></tr>{rows}</table>")


CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.meta{color:#666;margin:0 0 12px}
.counts{display:flex;gap:10px;flex-wrap:wrap}
.count{border-left:6px solid;padding:4px 10px;background:#fafafa;min-width:80px}
.count b{display:block;font-size:20px} .count span{color:#555}
svg text{font:12px system-ui,sans-serif;fill:#222} svg .axis{fill:#777}
.legend span{margin-right:12px} .legend i{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:-1px;border-radius:2px}
table{border-collapse:collapse} td,th{padding:3px 10px;border-bottom:1px solid #e4e4e4;
text-align:left} .err{font-family:ui-monospace,monospace;font-size:12px;color:#a22}
"""


def render_html(data: ReportData) -> str:
    doc = data.doc
    rec = doc.get("reconciler")
    seen = f"reconciler last beat {rec['last_seen_s']:.0f}s before" if rec else \
        "reconciler never seen"
    extra = "\n".join(section(data) for section in SECTIONS)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(data.fleet)}: trainledger fleet report</title>
<style>{CSS}</style></head>
<body>
<h1>{escape(data.fleet)}</h1>
<p class="meta">ledger at <code>{escape(doc['revision'][:12])}</code>, made
{utc(data.now)}; {seen}. Times are commit times (each writer's clock).</p>
<h2>Jobs by status</h2>
{counts_html(doc)}
<h2>Timeline</h2>
{legend()}
{timeline_svg(data)}
<h2>Failed jobs</h2>
{failed_html(doc)}
<!-- results: sections registered in reconciler.report.SECTIONS follow -->
{extra}
<h2>Workers</h2>
{workers_html(doc)}
</body></html>
"""


def write_report(out_dir: Path, data: ReportData) -> Path:
    from reconciler.cli.metrics import write_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    write_atomic(path, render_html(data))
    return path


def data_of(snap: Snapshot, beats: Any, timeline: Timeline, now: float) -> ReportData:
    from reconciler.cli.status import collect

    fleet = snap.manifest.manifest.name if snap.manifest else "trainledger"
    return ReportData(collect(snap, beats, now, timeline), timeline, fleet, now)


class ReportDir:
    """The after-pass hook of `reconciler run --report-dir`: rewrites the report
    when the ledger moved, and at least every REWRITE_EVERY_S for the beats."""

    def __init__(self, out_dir: Path, cache: Path | None = None) -> None:
        self.out_dir = out_dir
        self.cache = cache
        self.timeline = Timeline.load(cache) if cache is not None else Timeline()
        self.written: tuple[str | None, float] = (None, 0.0)

    def __call__(self, reconciler: Reconciler, snap: Snapshot) -> None:
        now = time.time()
        if self.written[0] == snap.revision and now - self.written[1] < REWRITE_EVERY_S:
            return
        before = self.timeline.revision
        self.timeline.update(reconciler.ledger.repo, snap.revision)
        if self.cache is not None and self.timeline.revision != before:
            self.timeline.save(self.cache)
        write_report(self.out_dir, data_of(snap, reconciler.ledger.heartbeats(),
                                           self.timeline, now))
        self.written = (snap.revision, now)


def cmd_report(args: argparse.Namespace) -> int:
    from reconciler.cli.status import cache_for, cached_ledger
    from reconciler.cli.timeline import read_timeline
    from reconciler.protocol.errors import LedgerError

    with cached_ledger(args.ledger, "report") as ledger:
        tip = ledger.fetch(heartbeats=True)
        if tip is None:
            raise LedgerError(f"{args.ledger}: the ledger has no main branch")
        snap = ledger.snapshot(tip)
        cache = cache_for(args.ledger, "report")
        timeline = read_timeline(ledger.repo, snap.revision,
                                 cache.with_name(cache.name + ".timeline.json"))
        path = write_report(Path(args.out), data_of(snap, ledger.heartbeats(), timeline,
                                                    time.time()))
    print(f"wrote {path} ({len(timeline.attempts)} attempts on {len(timeline.hosts())} hosts)")
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    add_ledger_arg(parser)
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="directory for index.html (created if missing)")
    parser.set_defaults(func=cmd_report)

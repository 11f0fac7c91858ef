"""`sslab report`: one self-contained HTML page per run, RUN/report.html.

Every figure is embedded as a base64 data URI; there is no script, no external stylesheet, font or image,
so the file can be mailed or archived alone. Sections: config, summary, learning curves (RUN/plots/),
evaluation (eval.json, RUN/eval/), analysis (analysis.json, RUN/analysis/), attention (RUN/attention/),
SCAN (RUN/scan/scan.json and every PNG under RUN/scan/) and any augmentation preview in the run folder.
A section whose command has not been run says which command makes it.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any, Iterable

from sslab.errors import RunFolderError
from sslab.safe_write import read_inside, write_bytes

REPORT_FILE = "report.html"
MAX_TABLE_ROWS = 200

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 16px 24px 48px; color: #1d2433; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #d8dde6; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: 0.4em; }
.sub { color: #5b6578; margin-top: 0; }
.missing { color: #8a5a00; background: #fff7e6; padding: 6px 10px; border-radius: 4px; }
nav a { margin-right: 14px; } summary { cursor: pointer; color: #2b5fb3; }
pre { background: #f5f7fa; padding: 10px; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.88em; }
th, td { border: 1px solid #d8dde6; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 8px 12px 16px 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e8ee; }
figcaption { font-size: 0.8em; color: #5b6578; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value[:20]) + (" …" if len(value) > 20 else "")
    if isinstance(value, dict):
        return json.dumps(value)[:300]
    return str(value)


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def table(header: list[str], rows: Iterable[list[Any]], numeric: set[int] = frozenset()) -> str:
    rows = list(rows)
    out = ["<table><thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in rows[:MAX_TABLE_ROWS]:
        out.append("<tr>" + "".join(f'<td class="num">{_esc(c)}</td>' if i in numeric else f"<td>{_esc(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    if len(rows) > MAX_TABLE_ROWS:
        out.append(f'<tr><td colspan="{len(header)}">… {len(rows) - MAX_TABLE_ROWS} more rows in the JSON file</td></tr>')
    return "".join(out) + "</tbody></table>"


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> [("a.b.c", value)]; lists of scalars stay one value."""
    if isinstance(d, dict):
        items: list[tuple[str, Any]] = []
        for k, v in d.items():
            items += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return items
    return [(prefix, d)]


def figure(path: Path, root: Path) -> str:
    """An <img> with the PNG inline as a data URI, and its path as the caption ("" for a file that is not a
    regular, non-empty file inside the run folder: a link is never followed, so nothing from elsewhere is
    embedded)."""
    raw = read_inside(path, root)
    if not raw:
        return ""
    data = base64.b64encode(raw).decode("ascii")
    rel = path.relative_to(root)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(rel)}">'
            f"<figcaption>{_esc(rel)}</figcaption></figure>")


def figures(paths: Iterable[Path], root: Path) -> str:
    return "".join(figure(p, root) for p in paths)


def _read_json(path: Path, root: Path) -> dict[str, Any] | None:
    """A JSON object from a regular file inside the run folder; None for anything else (missing, a link, not
    JSON, a JSON list)."""
    raw = read_inside(path, root)
    try:
        found = json.loads(raw.decode("utf-8")) if raw is not None else None
    except (ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None


def _section(build, run: Path, source: str, command: str) -> str:
    """A section built from a JSON file written by sslab; one that does not hold what the command writes (edited
    by hand, or by another version) is named instead of stopping the report."""
    try:
        return build(run)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        return (f'<p class="missing">{_esc(source)} does not hold what <code>{_esc(command)}</code> writes '
                f"({_esc(type(e).__name__)}); run it again.</p>")


def _missing(what: str, command: str) -> str:
    return f'<p class="missing">No {_esc(what)} yet: run <code>{_esc(command)}</code>.</p>'


def _baseline_sentence(sentence: str | None) -> str:
    """The one sentence saying which learned figures are below a baseline ("" when none is)."""
    return f'<p class="missing">{_esc(sentence)}</p>' if sentence else ""


# ---- sections ----------------------------------------------------------------------------------------------------
def section_summary(run: Path) -> str:
    summary = _read_json(run / "summary.json", run)
    if summary is None:
        return _missing("summary (the run has not finished)", f"sslab train --resume {run}")
    return table(["field", "value"], [[k, _pct(v) if _is_accuracy(k) else _fmt(v)] for k, v in summary.items()])


def _is_accuracy(key: str) -> bool:
    """Fractions the figures show in percent: kNN top-1 and its baselines, ACC, confident shares."""
    return key.startswith("knn_top1") or key in ("acc", "neighbor_accuracy") or key.endswith(("_acc", "_fraction"))


def section_eval(run: Path) -> str:
    ev = _read_json(run / "eval.json", run)
    if ev is None:
        return _missing("evaluation", f"sslab eval {run}")
    from sslab.eval.baselines import below_baseline_sentence

    rows = []
    for r in ev.get("results", []):
        sizes = ", ".join(f"{k} {v}" for k, v in (r.get("sizes") or {}).items())
        base = r.get("baselines") or {}
        rows.append([r.get("name"), r.get("protocol"), r.get("classifier"), r.get("dataset"), _pct(r.get("accuracy")),
                     _pct(base.get("pixels")), _pct(base.get("untrained")), sizes, r.get("note") or ""])
    parts = [_baseline_sentence(below_baseline_sentence(ev.get("results", [])))]
    parts.append(table(["name", "protocol", "classifier", "dataset", "accuracy", "raw pixels", "untrained network",
                        "sizes", "note"], rows, {4, 5, 6}))
    if ev.get("complete") is False:
        parts.append(_missing("complete evaluation (it was interrupted)", f"sslab eval {run}"))
    own = [r for r in ev.get("results", []) if not str(r.get("name", "")).startswith("transfer-")]
    classes = ev.get("classes", [])
    if own and classes:
        parts.append("<h3>Per-class accuracy</h3>")
        parts.append(table(["class"] + [r["name"] for r in own],
                           [[c] + [_pct((r.get("per_class_accuracy") or {}).get(c)) for r in own] for c in classes],
                           set(range(1, len(own) + 1))))
    parts.append(figures(sorted((run / "eval").glob("*.png")), run))
    return "".join(parts)


def section_analysis(run: Path) -> str:
    an = _read_json(run / "analysis.json", run)
    pngs = sorted((run / "analysis").glob("*.png"))
    if an is None and not pngs:
        return _missing("analysis", f"sslab analyze {run}")
    parts = []
    if an is not None:
        p, k = an.get("pca", {}), an.get("kmeans", {})
        parts.append(f"<p>{_esc(an.get('points'))} images ({_esc(an.get('split'))}), "
                     f"{_esc(an.get('feature_dim'))}-d features; PCA effective rank {_fmt(p.get('effective_rank'))}.</p>")
        parts.append(table(["explained variance", "components"],
                           [[f"{100 * float(t):g}%", n] for t, n in (p.get("components_for_variance") or {}).items()], {1}))
        from sslab.eval.baselines import below_baseline_sentence, kmeans_record

        base = k.get("baselines") or {}
        rows = [["learned features (l2-normalised)", k.get("k"), _pct(k.get("acc")), _fmt(k.get("nmi")),
                 _fmt(k.get("ari")), k.get("acc_mapping")]]
        rows += [[f"baseline: {label} (test split)", k.get("k"), _pct(b.get("acc")), _fmt(b.get("nmi")),
                  _fmt(b.get("ari")), b.get("acc_mapping")]
                 for label, b in (("raw pixels", base.get("pixels")), ("untrained network", base.get("untrained"))) if b]
        parts.append(_baseline_sentence(below_baseline_sentence([kmeans_record("k-means ACC", k, base)])))
        parts.append(table(["k-means", "k", "ACC", "NMI", "ARI", "ACC mapping"], rows, {1, 2, 3, 4}))
    parts.append(figures(pngs, run))
    return "".join(parts)


def section_attention(run: Path) -> str:
    pngs = sorted((run / "attention").glob("*.png"))
    if not pngs:
        return _missing("attention maps", f"sslab attention {run}")
    info = _read_json(run / "attention" / "attention.json", run) or {}
    note = ""
    if info:
        cam = info.get("gradcam")
        note = (f"<p>Layer {_esc(info.get('layer'))}; Grad-CAM "
                + (f"for the {_esc(cam.get('target'))} class of probe {_esc(cam.get('probe'))}" if cam else
                   _esc(info["gradcam_note"]) if info.get("gradcam_note") else
                   "skipped (no linear probe: run <code>sslab eval</code> first)") + ".</p>")
    return note + figures(pngs, run)


SCAN_STAGES = (("kmeans", "k-means on the features"), ("scan", "SCAN"), ("selflabel", "SCAN + self-label"))


def section_scan(run: Path) -> str | None:
    """scan.json as tables: ACC (%) and NMI/ARI (0-1, as in the k-means table) per stage, the setting, and the
    config folded away."""
    scan_dir = run / "scan"
    scan = _read_json(scan_dir / "scan.json", run)
    if scan is None:
        return None
    scores = []
    for key, name in SCAN_STAGES + tuple((k, k) for k, v in scan.items() if isinstance(v, dict) and "acc" in v
                                         and k not in dict(SCAN_STAGES)):
        stage = scan.get(key)
        if isinstance(stage, dict):
            head = f" (head {stage['head']})" if "head" in stage else ""
            scores.append([name + head, _pct(stage.get("acc")), _fmt(stage.get("nmi")), _fmt(stage.get("ari"))])
        elif key in scan:
            scores.append([name, "not run", "", ""])
    base = scan.get("baselines") or {}
    scores += [[f"baseline: k-means on {label}", _pct(b.get("acc")), _fmt(b.get("nmi")), _fmt(b.get("ari"))]
               for label, b in (("raw pixels", base.get("pixels")), ("the untrained network", base.get("untrained")))
               if isinstance(b, dict)]
    parts = [_baseline_sentence(scan.get("below_baselines")),
             f"<p>{_esc(scan.get('acc_note', ''))}</p>" if scan.get("acc_note") else "",
             table(["test split", "ACC", "NMI", "ARI"], scores, {1, 2, 3})]
    facts = [[k, _scan_value(k, v)] for k, v in scan.items()
             if k not in dict(SCAN_STAGES) and k not in ("config", "acc_note", "baselines", "below_baselines")
             and not (isinstance(v, dict) and "acc" in v)]
    parts.append(table(["setting", "value"], facts))
    if isinstance(scan.get("config"), dict):
        parts.append("<details><summary>SCAN config</summary>"
                     + table(["option", "value"], [[k, _fmt(v)] for k, v in flatten(scan["config"])]) + "</details>")
    parts.append(figures(sorted(scan_dir.rglob("*.png")), run))
    return "".join(parts)


def _scan_value(key: str, value: Any) -> str:
    if key == "seconds" and isinstance(value, dict):
        return ", ".join(f"{k} {v:.1f} s" if isinstance(v, (int, float)) else f"{k} –" for k, v in value.items())
    if isinstance(value, dict):
        return ", ".join(f"{k} {_scan_value(k, v)}" for k, v in value.items())
    if isinstance(value, list) and key.endswith("_acc"):
        return ", ".join(_pct(v) for v in value)
    return _pct(value) if _is_accuracy(key) else _fmt(value)


def build_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html from whatever the run folder holds; returns its path."""
    from sslab.config import Config
    from sslab.plots import run_title

    run = Path(run_dir)
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise RunFolderError(f"{run} is not a run folder (no config.yaml); pass a folder made by `sslab train` or "
                             "`sslab demo`")
    config_text = read_inside(config_path, run)
    if config_text is None:
        raise RunFolderError(f"{config_path} is a link or not a regular file; the report reads only the run folder's "
                             "own files; put the run's config.yaml back")
    cfg = Config.load(config_path)
    title = run_title(cfg)
    sections: list[tuple[str, str, str]] = [
        ("config", "Config", f"<details><summary>config.yaml (the resolved config)</summary>"
                             f"<pre>{_esc(config_text.decode('utf-8', errors='replace'))}</pre></details>"),
        ("summary", "Training summary", _section(section_summary, run, "summary.json", f"sslab train --resume {run}")),
        ("curves", "Learning curves", figures(sorted((run / "plots").glob("*.png")), run)
         or _missing("learning curves", f"sslab train --resume {run}")),
        ("eval", "Evaluation", _section(section_eval, run, "eval.json", f"sslab eval {run}")),
        ("analysis", "Analysis: PCA, t-SNE, k-means", _section(section_analysis, run, "analysis.json",
                                                               f"sslab analyze {run}")),
        ("attention", "Attention", _section(section_attention, run, "attention/attention.json",
                                            f"sslab attention {run}")),
    ]
    scan = _section(section_scan, run, "scan/scan.json", f"sslab scan {run}")
    if scan is not None:
        sections.append(("scan", "SCAN clustering", scan))
    previews = sorted(run.glob("augment-preview*.png"))
    if previews:
        sections.append(("augment", "Augmentation preview", figures(previews, run)))
    nav = " ".join(f'<a href="#{key}">{_esc(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_esc(name)}</h2>{content}</section>' for key, name, content in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{_esc(title)}</title><style>{CSS}</style></head><body>'
            f"<h1>{_esc(title)}</h1><p class=\"sub\">{_esc(run.resolve())} · report written "
            f"{_esc(time.strftime('%Y-%m-%d %H:%M'))}</p><nav>{nav}</nav>{body}</body></html>\n")
    path = run / REPORT_FILE
    write_bytes(path, page.encode("utf-8"), durable=False)  # a report can be written again
    return path

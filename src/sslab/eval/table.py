"""The results of `sslab eval` as the text table it prints: each figure beside its raw-pixel and untrained-network
baselines, the notes, and one sentence naming every figure below a baseline."""
from __future__ import annotations

from typing import Any

from sslab.eval.baselines import below_baseline_sentence


def format_results(result: dict[str, Any]) -> str:
    def pct(v) -> str:
        return f"{100 * v:.2f}%" if v is not None else "-"

    lines = [f"{'name':<24s} {'classifier':<10s} {'dataset':<14s} {'accuracy':>9s} {'pixels':>9s} {'untrained':>9s}   sizes"]
    for r in result["results"]:
        sizes = " ".join(f"{k}={v}" for k, v in r["sizes"].items())
        b = r.get("baselines") or {}
        lines.append(f"{r['name']:<24s} {r['classifier']:<10s} {r['dataset']:<14s} {pct(r['accuracy']):>9s} "
                     f"{pct(b.get('pixels')):>9s} {pct(b.get('untrained')):>9s}   {sizes}")
    lines += [f"note, {r['name']}: {r['note']}" for r in result["results"] if r.get("note")]
    sentence = below_baseline_sentence(result["results"])
    return "\n".join(lines + ([sentence] if sentence else []))


def written_line(result: dict[str, Any]) -> str:
    """Where `sslab eval` wrote its files."""
    run = result["run_dir"]
    return (f"wrote {run}/eval.json, {len(result['figures'])} figures in {run}/eval, probes in {run}/probe.pt")


__all__ = ["format_results", "written_line"]

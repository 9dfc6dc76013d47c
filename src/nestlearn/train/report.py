"""Per-run artefacts: the loss-curve PNG and ``report.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Training and validation bits per byte against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(ln) for ln in Path(metrics_path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    train = [(r["step"], r["bpb"]) for r in records if "bpb" in r]
    val = [(r["step"], r["val_bpb"]) for r in records if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train (batch)", color="tab:blue", alpha=0.7, linewidth=1)
    if val:
        ax.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
    ax.axhline(8.0, color="grey", linestyle=":", linewidth=1, label="uniform over bytes (8 bpb)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("bits per byte")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)


def write_report(out_dir: str | Path, meta: dict, result: dict) -> Path:
    """A Markdown summary of a finished run: config, data fingerprint, final metrics, sample."""
    out = Path(out_dir)
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
    curve = [(r["step"], r["val_bpb"], r["val_tokens"]) for r in records if "val_bpb" in r]
    data = meta["data"]
    val = result.get("val", {})
    tok_s = result["tokens_seen"] / max(result["elapsed_s"], 1e-9)
    lines = [
        f"# nestlearn run: {out.name}",
        "",
        f"- model: `{meta['config']['model']['family']}`, {result['parameters']:,} parameters",
        f"- steps: {result['step']} ({result['tokens_seen']:,} tokens in {result['elapsed_s']:.0f} s, {tok_s:,.0f} tokens/s)",
        f"- nestlearn {meta['nestlearn_version']}, seed {meta['config']['train']['seed']}",
        "",
        "## Final metrics",
        "",
        "| split | bits per byte | loss (nats/token) | tokens scored |",
        "|---|---|---|---|",
        f"| validation | {val.get('bpb', math.nan):.4f} | {val.get('loss', math.nan):.4f} | {val.get('tokens', 0):,} |",
        "",
        "A model that knows nothing scores 8 bits per byte (uniform over 256 bytes).",
        "",
        "| step | validation bits per byte | tokens scored |",
        "|---|---|---|",
        *[f"| {step} | {bpb:.4f} | {tokens:,} |" for step, bpb, tokens in curve],
        "",
        "![loss curve](loss.png)",
        "",
        "## Sample",
        "",
        "```text",
        result.get("sample", ""),
        "```",
        "",
        "## Data",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| {k} | `{v}` |" for k, v in data.items()],
        f"| tokenizer | `{json.dumps(meta['tokenizer'])}` |",
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(meta["config"], sort_keys=False).rstrip(),
        "```",
    ]
    if meta.get("config_overrides"):
        lines += ["", "## Config changes on resume", "", "```json", json.dumps(meta["config_overrides"], indent=1), "```"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

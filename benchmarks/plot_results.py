"""Plots of the quantization and compression benchmarks' saved results, for the docs: speed-up (and,
for compression, file size) against fidelity.

Reads results/quant_vs_ort.json and results/quant_static_vs_ort.json (what quant_vs_ort.py and
quant_static_vs_ort.py wrote; nothing is re-measured) and writes results/quant_vs_ort.png and
results/quant_static_vs_ort.png: per model, every variant's speed-up over the float export
against its distance from float (1 − min cosine, log scale), graphopt's variants and ONNX Runtime's apart, each panel titled with the
fidelity measure and the date of the run that measured it.

results/compression_vs_peers.json (compression_vs_peers.py) becomes results/compression_vs_peers.png:
per model, each row's speed-up over O3 float (top) and file size against O3 float (bottom) against
its distance from O3 float (1 − its fidelity: min cosine, or test top-1 for digits-cnn), graphopt's
rows as circles, the peers' as squares; a peer that refused or broke the graph is named in the title.

    python benchmarks/plot_results.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MIN_DISTANCE = 1e-6  # 1 − cosine is plotted on a log axis: the float reference would be at 0


def _points(entry: dict, speedup_key: str, fidelity_key: str) -> list[tuple[str, float, float]]:
    points = []
    for name, variant in entry.get("variants", {}).items():  # the memory measurement has none
        if name == "float" or variant.get(speedup_key) is None or variant.get(fidelity_key) is None:
            continue  # the reference itself, a variant that crashed, or digits-cnn's accuracy (no cosine)
        points.append((name, variant[speedup_key], variant[fidelity_key]))
    return points


def _panel(axis, title: str, points: list[tuple[str, float, float]], fidelity_label: str) -> None:
    for name, speedup, cosine in points:
        ours = name.startswith("graphopt") and "+ort" not in name  # O1+ort-dynamic is ORT's quantizer
        distance = max(1.0 - cosine, MIN_DISTANCE)
        axis.scatter(distance, speedup, marker="o" if ours else "s", color="tab:blue" if ours else "tab:red",
                     zorder=3)
        axis.annotate(name.removeprefix("graphopt-"), (distance, speedup), fontsize=6,
                      xytext=(3, 2), textcoords="offset points")
    axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xscale("log")
    axis.invert_xaxis()
    axis.set_title(title, fontsize=8)
    axis.set_xlabel(f"1 − {fidelity_label} (log; right is more faithful)", fontsize=7)
    axis.set_ylabel("speed-up over the float export (p50)", fontsize=7)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)


def plot(source: str, speedup_key: str, fidelity_key: str, fidelity_label: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [entry for entry in json.loads((RESULTS / f"{source}.json").read_text())
               if _points(entry, speedup_key, fidelity_key)]
    columns = min(3, len(entries))
    rows = -(-len(entries) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for axis, entry in zip(axes.flat, entries):
        title = f"{entry['model']} ({entry.get('date', 'undated')})\n{entry['fidelity']}"
        _panel(axis, title, _points(entry, speedup_key, fidelity_key), fidelity_label)
    for axis in list(axes.flat)[len(entries):]:
        axis.set_visible(False)
    figure.suptitle(f"benchmarks/{source}.py: graphopt (circles) and ONNX Runtime (squares)", fontsize=9)
    figure.tight_layout()
    path = RESULTS / f"{source}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_compression() -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = json.loads((RESULTS / "compression_vs_peers.json").read_text())
    figure, axes = plt.subplots(2, len(entries), figsize=(3.6 * len(entries), 6.4), squeeze=False)
    for column, entry in enumerate(entries):
        rows = entry["rows"]
        baseline = rows["O3 float"]["fidelity"]
        failed = [label.split(" ")[0] for label, row in rows.items() if "failed" in row]
        for row_index, (key, label) in enumerate((("vs_o3", "speed-up over O3 float (p50)"),
                                                 ("size_ratio", "file size (x O3 float)"))):
            axis = axes[row_index][column]
            for name, row in rows.items():
                if "failed" in row or name == "O3 float":
                    continue
                ours = not name.startswith(("torch-pruning", "qonnx"))
                distance = max(baseline - row["fidelity"], MIN_DISTANCE)
                axis.scatter(distance, row[key], marker="o" if ours else "s",
                             color="tab:blue" if ours else "tab:red", zorder=3)
                axis.annotate(name.replace("--", "").replace("prune-channels", "prune"), (distance, row[key]),
                              fontsize=5, xytext=(3, 2), textcoords="offset points")
            axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            axis.set_xscale("log")
            axis.invert_xaxis()
            axis.set_ylabel(label, fontsize=7)
            axis.set_xlabel(f"O3's {entry['fidelity'].split(',')[0]} − the row's (log; right is more faithful)",
                            fontsize=6)
            axis.tick_params(labelsize=6)
            axis.grid(alpha=0.3)
        title = f"{entry['model']} ({entry['date']})"
        axes[0][column].set_title(title + (f"\nrefused or broken: {', '.join(failed)}" if failed else ""), fontsize=7)
    figure.suptitle("benchmarks/compression_vs_peers.py: graphopt compress (circles) and peers (squares)", fontsize=9)
    figure.tight_layout()
    path = RESULTS / "compression_vs_peers.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main() -> None:
    print(plot("quant_vs_ort", "speedup_128", "min_cosine", "min cosine (seq 128)"))
    print(plot("quant_static_vs_ort", "speedup", "min_cosine", "min cosine"))
    print(plot_compression())


if __name__ == "__main__":
    main()

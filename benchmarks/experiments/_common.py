"""What the experiment scripts share: environment, raw results, tables, figures.

Every experiment collects one flat record per (kind, shared_key_dim, seed) run,
e.g. `{"kind": "collaborative", "shared_key_dim": 128, "seed": 0,
"accuracy": 0.61, ...}`; this module writes those records as JSON, prints them
as a Markdown table of mean ± standard deviation over the seeds, and plots a
metric against `shared_key_dim` with one line per kind and error bars over
the seeds.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time

# Single-threaded BLAS: on a shared 2-core machine multi-threaded OpenBLAS
# spins and runs several times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

REPOSITORY = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
sys.path.insert(0, REPOSITORY)
FIGURES = os.path.join(REPOSITORY, "docs", "figures")


def default_output_dir():
    """`benchmarks/results/<today>-<cpu|gpu>-experiments`."""
    today = datetime.date.today().isoformat()
    return os.path.join(REPOSITORY, "benchmarks", "results", f"{today}-{_device_kind()}-experiments")


def _device_kind():
    if keras.backend.backend() == "jax":
        import jax

        return "gpu" if jax.default_backend() == "gpu" else "cpu"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    return "cpu"


def environment():
    """The machine, the library versions and the commit of this checkout."""
    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": np.__version__}
    for name in ("tensorflow", "jax", "keras_hub", "sacrebleu", "sklearn"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    try:
        commit = subprocess.run(
            ["git", "-C", REPOSITORY, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = _device_kind()
    if device == "gpu" and keras.backend.backend() == "jax":
        import jax

        device = ", ".join(sorted({d.device_kind for d in jax.devices()}))  # e.g. NVIDIA H100 80GB HBM3
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {device}",
        "load_average": os.getloadavg(),
        "backend": keras.backend.backend(),
        "versions": versions,
        "commit": commit,
        "command": " ".join([os.path.relpath(sys.argv[0], REPOSITORY)] + sys.argv[1:]),
    }


def parse_args(parser, quick):
    """Parses the command line; with `--quick`, the settings in `quick`
    replace the defaults (flags given explicitly still win)."""
    args = parser.parse_args()
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args()
    return args


class Stopwatch:
    """Wall-clock seconds since creation."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.start


def query_key_parameters(model):
    """Trainable parameters of the attention layers' query/key parts: the
    query and key projections (kernels and biases), and for collaborative
    attention the mixing matrix and the content bias (the frozen block
    one-hot mixing of cached concatenated heads is not counted)."""
    parts = {"query", "key", "mixing", "content_bias"}
    weights = model.trainable_weights
    return int(sum(np.prod(w.shape) for w in weights if parts & set(w.path.split("/"))))


class Restarter:
    """Restarts one compiled model from a new initialization, once per seed.

    Compiling once per configuration instead of once per run saves the
    tracing time, which on a shared 2-core machine is a large part of a short
    run. `restart(initial_model)` gives the model the weights of
    `initial_model` (the same architecture built under the seed, never
    compiled) and puts the optimizer's variables (step count, moments,
    learning rate) back to their values before the first step, so a
    learning-rate schedule restarts too.
    """

    def __init__(self, model):
        model.optimizer.build(model.trainable_variables)
        self.model = model
        self.optimizer_state = [np.array(v.numpy()) for v in model.optimizer.variables]

    def restart(self, initial_model):
        self.model.set_weights(initial_model.get_weights())
        for variable, value in zip(self.model.optimizer.variables, self.optimizer_state):
            variable.assign(value)


def summarize(records, metrics):
    """Mean and standard deviation of `metrics` per (kind, shared_key_dim).

    Returns a list of dicts with `kind`, `shared_key_dim`, `seeds` and, for
    each metric, `<metric>` (mean) and `<metric>_std` (over seeds; 0 for one).
    """
    groups = {}
    for record in records:
        groups.setdefault((record["kind"], record["shared_key_dim"]), []).append(record)
    rows = []
    for (kind, dim), group in groups.items():
        row = {"kind": kind, "shared_key_dim": dim, "seeds": len(group)}
        for metric in metrics:
            values = np.array([r[metric] for r in group], dtype=float)
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown_table(rows, metrics, formats=None):
    """A Markdown table, one row per (kind, shared_key_dim): `mean ± std`."""
    formats = formats or {}
    lines = [
        "| kind | shared_key_dim | seeds | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for row in rows:
        cells = []
        for metric in metrics:
            fmt = formats.get(metric, "{:.4f}")
            cell = fmt.format(row[metric])
            if row["seeds"] > 1 and row[f"{metric}_std"] > 0:
                cell += " ± " + fmt.format(row[f"{metric}_std"])
            cells.append(cell)
        dim = "–" if row["shared_key_dim"] is None else row["shared_key_dim"]
        lines.append(f"| {row['kind']} | {dim} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, metric, path, title, ylabel=None, baselines=()):
    """`metric` against shared_key_dim, one line per kind, error bars = std.

    Rows whose `shared_key_dim` is None (e.g. the original model) are drawn
    as a horizontal line with a band of one standard deviation; so are the
    kinds named in `baselines`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    kinds = list(dict.fromkeys(row["kind"] for row in rows))
    for kind in kinds:
        group = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["shared_key_dim"] or 0)
        if group[0]["shared_key_dim"] is None or kind in baselines:
            mean, std = group[0][metric], group[0][f"{metric}_std"]
            line = axis.axhline(mean, linestyle="--", label=kind)
            axis.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.15)
            continue
        axis.errorbar(
            [r["shared_key_dim"] for r in group],
            [r[metric] for r in group],
            yerr=[r[f"{metric}_std"] for r in group],
            marker="o",
            capsize=3,
            label=kind,
        )
    axis.set_xscale("log", base=2)
    dims = sorted({r["shared_key_dim"] for r in rows if r["shared_key_dim"] is not None})
    axis.set_xticks(dims)
    axis.set_xticklabels([str(d) for d in dims])
    axis.set_xlabel("shared_key_dim (key size of the shared / concatenated projections)")
    axis.set_ylabel(ylabel or metric)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"figure: {os.path.relpath(path, REPOSITORY)}")


def save(output_dir, name, payload):
    """Writes `payload` (records, summary, environment) as `<name>.json`."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    print(f"raw results: {os.path.relpath(path, REPOSITORY)}")
    return path


def print_header(title, env):
    print(f"## {title}\n")
    print(f"- command: `{env['command']}`")
    print(f"- machine: {env['machine']}, load average at start {env['load_average'][0]:.2f}")
    print(f"- backend: {env['backend']}; versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"- commit: {env['commit']}, started {env['date']}\n", flush=True)

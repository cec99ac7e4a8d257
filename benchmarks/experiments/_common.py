"""What the experiment scripts share: environment, raw results, tables, figures, grids of runs.

Every experiment collects one flat record per (kind, shared_key_dim, seed) run,
e.g. `{"kind": "collaborative", "shared_key_dim": 128, "seed": 0,
"accuracy": 0.61, ...}`; this module writes those records as JSON, prints them
as a Markdown table of mean ± standard deviation over the seeds, and plots a
metric against `shared_key_dim` with one line per kind and error bars over
the seeds.

A grid of `collab-keras train` runs (`run_grid`): each run is a `RunConfig`
with its own folder; one whose folder holds its `metrics.json` is read
instead of trained again, and no run starts after `--deadline` seconds, so
rerunning the command completes the grid. With `--data DIR` (a folder of
`collab-keras prepare`) each run is a `python -m collab_keras.training
train ... --data DIR` subprocess, `--parallel` at a time sharing the card
(each with `XLA_PYTHON_CLIENT_MEM_FRACTION` = `--memory-share` / parallel,
the share 0.8 unless several grids share the card), which needs
no TensorFlow; `--archive FILE` writes, after every finished run, a .tar.gz
of the output folder without the runs' `checkpoints/`, `model/` and
`learning_curves.png` (the records, small enough to carry back from a GPU
machine and to travel with the tree on the next call).
"""

import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tarfile
import textwrap
import time
import types

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


def parse_args(parser, quick, argv=None, grid=None, grid_quick=None):
    """Parses the command line (`argv`, default `sys.argv[1:]`); with
    `--quick`, the settings in `quick` replace the defaults. A script whose
    `--data` mode (a grid of `collab-keras train` runs) has other defaults
    passes them as `grid` and `grid_quick`, used when `--data` is given.
    Flags given explicitly always win."""
    args = parser.parse_args(argv)
    grid_mode = getattr(args, "data", None) is not None
    defaults = dict(grid or {}) if grid_mode else {}
    if args.quick:
        defaults.update((grid_quick or {}) if grid_mode else quick)
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
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
    axis.set_title("\n".join(textwrap.wrap(title, 64)), fontsize=10)  # within the figure
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


# ---------------------------------------------------------------------------
# Grids of `collab-keras train` runs (see the module doc).

# What a run folder holds that is too large to carry: left out of --archive
# (learning_curves.png: 40 kB a run, redrawn from learning_curves.jsonl with
# collab_keras.training.evaluation.plot_learning_curves).
NOT_ARCHIVED = ("checkpoints", "model", "learning_curves.png")


def add_grid_arguments(parser, task):
    """The flags of a grid of `task` runs: --data, --parallel, --memory-share, --deadline, --archive."""
    parser.add_argument("--data", default=None,
                        help=f"a folder of `collab-keras prepare {task}`: every run a `collab-keras train "
                             f"{task} --data` subprocess (its data options from the folder's manifest)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time with --data, sharing the card")
    parser.add_argument("--memory-share", type=float, default=0.8,
                        help="share of the card's memory this grid's runs take together, each "
                             "`--memory-share / --parallel` (grids sharing one card: their shares must add "
                             "up to less than one)")
    parser.add_argument("--deadline", type=float, default=math.inf,
                        help="seconds from the start after which no run starts")
    parser.add_argument("--archive", default=None,
                        help="a new .tar.gz: the output folder without checkpoints/, model/, learning_curves.png, "
                             "rewritten after every finished run")


def check_grid_arguments(args):
    """Checks the grid flags (paths made absolute); with --data, keeps this
    process, which only starts runs and reads their records, from taking the
    card's memory (JAX preallocates 75 %): call it before `environment()`,
    which starts the backend."""
    if args.parallel < 1:
        raise ValueError(f"`--parallel` must be at least 1. Received: parallel={args.parallel}")
    if not 0 < args.memory_share < 1:
        raise ValueError(
            f"`--memory-share` must be between 0 and 1. Received: memory_share={args.memory_share}")
    if args.data is not None:
        args.data = os.path.abspath(args.data)
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if args.archive is not None:
        args.archive = os.path.abspath(args.archive)
        if os.path.exists(args.archive):
            raise ValueError(f"`--archive` must be a new file; nothing is overwritten. Received: archive={args.archive!r}")


def check_archive(args, output_dir):
    """The archive must not lie inside the folder it archives."""
    if args.archive is not None and os.path.commonpath([args.archive, output_dir]) == output_dir:
        raise ValueError(f"`--archive` must lie outside the output folder {output_dir}. "
                         f"Received: archive={args.archive!r}")


def manifest_options(data):
    """The data options a run needs to train from the prepared folder
    `data` (`RunConfig` arguments: all of the manifest's but the task)."""
    from collab_keras.training import prepared

    return {k: v for k, v in prepared.read_manifest(data)["options"].items() if k != "task"}


def command(config):
    """`python -m collab_keras.training train TASK ...`: the command line of
    `config` (the settings that differ from `RunConfig`'s defaults)."""
    from collab_keras.training.config import RunConfig

    defaults = RunConfig(task=config.task, output_dir="-")
    arguments = [sys.executable, "-m", "collab_keras.training", "train", config.task,
                 "--output-dir", config.output_dir]
    for field in dataclasses.fields(RunConfig):
        value = getattr(config, field.name)
        if field.name in ("task", "output_dir") or value == getattr(defaults, field.name):
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.name == "overrides":
            arguments += [item for k, v in value.items() for item in ("--set", f"{k}={v!r}")]
        elif field.name == "export":
            arguments.append("--no-export")
        elif field.name == "jit_compile":
            arguments.append(flag if value else "--no-jit-compile")
        elif isinstance(value, bool):
            arguments.append(flag)
        else:
            arguments += [flag, str(value)]
    return arguments


def finished(config):
    return os.path.exists(os.path.join(config.output_dir, "metrics.json"))


def train_in_processes(configs, args, started, after_each):
    """Runs `configs` as `collab-keras train` subprocesses in the repository
    root (where a prepared folder's relative `--preset` lies), `args.parallel`
    at a time, none started after `args.deadline` seconds from `started`.
    Each writes its output to `<run folder>.log`; `after_each(config,
    returncode)` is called as each ends. Returns the configs not started."""
    environment = dict(os.environ)
    environment["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{args.memory_share / args.parallel:.3f}"
    environment.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)  # this process's, see check_grid_arguments
    environment.setdefault("COLLAB_KERAS_VERBOSE", "2")  # one line per checkpoint
    environment["PYTHONPATH"] = os.pathsep.join(
        [REPOSITORY] + [p for p in [environment.get("PYTHONPATH")] if p])
    pending, running = list(configs), []
    try:
        while pending or running:
            for process, config, log in list(running):
                if process.poll() is not None:
                    log.close()
                    running.remove((process, config, log))
                    after_each(config, process.returncode)
            while pending and len(running) < args.parallel and time.time() - started < args.deadline:
                config = pending.pop(0)
                os.makedirs(os.path.dirname(config.output_dir), exist_ok=True)
                log = open(config.output_dir + ".log", "a", encoding="utf-8")
                print(f"start {os.path.basename(config.output_dir)}", flush=True)
                running.append((subprocess.Popen(command(config), stdout=log, stderr=subprocess.STDOUT,
                                                 env=environment, cwd=REPOSITORY), config, log))
            if time.time() - started >= args.deadline and not running:
                break
            time.sleep(1)
    finally:  # interrupted: the runs keep their last checkpoints
        for process, _, log in running:
            process.terminate()
            process.wait()
            log.close()
    return pending


def write_archive(output_dir, path):
    """Writes `path`, a .tar.gz of `output_dir` (its name the top folder)
    without what `NOT_ARCHIVED` names, through a temporary file."""
    def keep(info):
        parts = info.name.split("/")
        return None if set(parts[1:]) & set(NOT_ARCHIVED) else info

    tmp = path + ".tmp"
    with tarfile.open(tmp, "w:gz") as archive:
        archive.add(output_dir, arcname=os.path.basename(os.path.normpath(output_dir)), filter=keep)
    os.replace(tmp, path)


def run_grid(configs, args, output_dir, started, env):
    """Trains the `configs` (`RunConfig`s) whose folders hold no
    `metrics.json` yet, none started after `args.deadline` seconds from
    `started`: with `args.data` as subprocesses (`train_in_processes`),
    else one after the other in this process (`run.train`). Counts the runs
    read, trained, failed and not started in `env`; rewrites `args.archive`
    after each run. Returns the configs not started."""
    pending = [c for c in configs if not finished(c)]
    env["runs_read"] = len(configs) - len(pending)  # finished earlier
    env["runs_trained"] = env["runs_failed"] = 0

    def after_each(config, returncode):
        name = os.path.basename(config.output_dir)
        if returncode == 0 and finished(config):
            env["runs_trained"] += 1
            print(f"done {name} ({time.time() - started:.0f} s)", flush=True)
        else:
            env["runs_failed"] += 1
            print(f"FAILED {name} (status {returncode}; see {config.output_dir}.log)", flush=True)
        if args.archive is not None:
            write_archive(output_dir, args.archive)

    if args.data is not None:
        not_started = train_in_processes(pending, args, started, after_each)
    else:
        from collab_keras.training import run

        not_started = list(pending)
        while not_started and time.time() - started < args.deadline:
            config = not_started.pop(0)
            run.train(config)
            keras.backend.clear_session()
            after_each(config, 0)
    env["runs_not_started"] = len(not_started)
    if not_started:
        print(f"{len(not_started)} runs not started (--deadline {args.deadline:.0f} s): rerun the command", flush=True)
    return not_started


def run_metrics(config):
    """`(final, history)` of a finished run's `metrics.json`."""
    with open(os.path.join(config.output_dir, "metrics.json")) as f:
        saved = json.load(f)
    return saved["final"], saved["history"]


def add_fit_arguments(parser, steps, checkpoint_every, patience, warmup_steps, weight_decay):
    """The "with --data" flags of a classification grid (`fit_options`),
    with the script's defaults; returns the argument group to add to."""
    group = parser.add_argument_group("with --data")
    group.add_argument("--steps", type=int, default=steps, help="at most")
    group.add_argument("--checkpoint-every", type=int, default=checkpoint_every,
                       help="steps between validation checks")
    group.add_argument("--patience", type=int, default=patience, help="checks without a better validation accuracy")
    group.add_argument("--warmup-steps", type=int, default=warmup_steps)
    group.add_argument("--weight-decay", type=float, default=weight_decay)
    group.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    group.add_argument("--figures", default=None,
                       help="where the figure goes (default: the output folder, so --archive carries it)")
    return group


def fit_options(args):
    """The `RunConfig` arguments a classification grid takes from its flags:
    the batches, the schedule, early stopping after `--patience` checks, the
    prepared data, no export (every run the same but for its model and
    seed)."""
    return dict(batch_size=args.batch_size, steps=args.steps, checkpoint_every=args.checkpoint_every,
                learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                early_stopping_patience=args.patience, mixed_precision=args.mixed_precision, data=args.data,
                export=False)


def start_grid(args, title):
    """The start of a script's --data mode: the environment and its header,
    the output folder (made; the archive checked against it) and the
    prepared folder's manifest. Returns a namespace: `env`, `started`
    (`time.time()`), `total` (a `Stopwatch`), `output_dir`, `suffix`
    ("_quick" or ""), `manifest`."""
    from collab_keras.training import prepared

    env = environment()
    env["settings"] = vars(args)
    grid = types.SimpleNamespace(env=env, started=time.time(), total=Stopwatch(),
                                 output_dir=os.path.abspath(args.output_dir or default_output_dir()),
                                 suffix="_quick" if args.quick else "", manifest=prepared.read_manifest(args.data))
    print_header(title, env)
    os.makedirs(grid.output_dir, exist_ok=True)
    check_archive(args, grid.output_dir)
    return grid


def classifier_record(kind, shared_key_dim, config):
    """One flat record of a finished classification run (`collab-keras
    train` with early stopping): the test accuracy, the best validation
    accuracy and its step, where it stopped, parameters and training
    seconds (over resumes where the history has them)."""
    final, history = run_metrics(config)
    stopping = final.get("early_stopping") or {}
    return {
        "kind": kind,
        "shared_key_dim": shared_key_dim,
        "seed": config.seed,
        "accuracy": final["test_sparse_categorical_accuracy"],
        "validation_accuracy": stopping.get("best", history[-1].get("val_sparse_categorical_accuracy")),
        "best_step": stopping.get("best_step", history[-1]["step"]),
        "stopped_step": stopping.get("stopped_step"),
        "parameters": final["parameters"],
        "train_seconds": history[-1].get("seconds", final["train_seconds"]),
        "steps_per_second": final["steps_per_second"],
        "run_dir": config.output_dir,
    }


def finish_grid(grid, args, records, metrics, name, title, rows_of=summarize):
    """The end of a script's --data mode, after `run_grid`: prints every
    finished run's record, summarizes them (`rows_of(records, metrics)`),
    plots the test accuracy to `results_<name>.png` in `args.figures` (by
    default the output folder, which `--archive` carries back), saves
    `<name>.json` and rewrites the archive. Returns the rows (None without
    a finished run)."""
    if not records:
        print("no finished runs yet")
        return None
    for r in records:
        print(f"{r['kind']} {r['shared_key_dim']} seed {r['seed']}: test accuracy {r['accuracy']:.4f}, "
              f"validation {r['validation_accuracy']:.4f} at step {r['best_step']}, {r['train_seconds']:.0f} s")
    rows = rows_of(records, metrics)
    figure = os.path.join(args.figures or grid.output_dir, f"results_{name}{grid.suffix}.png")
    plot(rows, "accuracy", figure, title, ylabel="test accuracy")
    grid.env["total_seconds"] = grid.total()
    save(grid.output_dir, f"{name}{grid.suffix}", {"environment": grid.env, "records": records, "summary": rows})
    if args.archive is not None:
        write_archive(grid.output_dir, args.archive)
    env = grid.env
    print(f"total time {grid.total() / 60:.1f} min, {env['runs_trained']} runs trained, {env['runs_read']} read, "
          f"{env['runs_failed']} failed, {env['runs_not_started']} not started")
    return rows

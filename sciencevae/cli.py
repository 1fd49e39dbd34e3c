"""The ``sciencevae`` command.

``sciencevae fit INPUT --out RUN_DIR`` trains a β-VAE on a samples x features
matrix (.npy, .npz from ``scipy.sparse.save_npz``, or .csv with a header row of
feature names and a first column of sample names) and writes:

- ``RUN_DIR/model/``       the saved model (config.json, weights.pt, history.csv)
- ``RUN_DIR/latents.csv``  posterior means, one row per sample, columns z0 ...
- ``RUN_DIR/history.csv``  the per-epoch training history
- ``RUN_DIR/run.json``     the input's absolute path and sha256, the toolkit version

``sciencevae diagnose RUN_DIR [--data FILE]`` prints per-latent KL, active
units and a plain-words collapse verdict for a saved run (on its recorded
input unless ``--data`` is given).

Errors print one line and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import __version__
from .console import WarningLines
from .io import atomic_write_text
from .likelihoods import LIKELIHOODS
from .distributed import launched_workers
from .train import CHECKPOINT_NAME, TrainingInterrupted

__all__ = ["main", "build_parser", "read_matrix", "run_folder", "INCOMPLETE"]

INCOMPLETE = "INCOMPLETE"


def read_matrix(path: Path, layer: str | None = None):
    """Read a matrix file; returns (X, sample names or None).

    ``.h5ad`` / ``.zarr`` AnnData are not loaded: X is a
    :class:`~sciencevae.streaming.Streamed` over ``X`` or ``layers[layer]``.
    """
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".h5ad", ".zarr"):
        from .streaming import open_counts

        streamed = open_counts(path, layer=layer)
        names = streamed.reader.obs_names
        return streamed, None if names is None else [str(n) for n in names]
    if layer is not None:
        raise ValueError(f"--layer applies to .h5ad / .zarr AnnData input, not {suffix}")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".npz":
            return sp.load_npz(path).tocsr(), None
        if suffix == ".csv":
            frame = pd.read_csv(path, index_col=0)
            return frame.to_numpy(dtype=np.float32), [str(i) for i in frame.index]
    except (ValueError, OSError) as err:
        raise ValueError(f"could not read {path} as {suffix[1:]}: {err}") from None
    raise ValueError(f"input {path} has suffix {suffix!r}; give a .npy, .npz (scipy sparse), .csv, .h5ad or .zarr")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _diagnose_data(run_dir: Path, data: Path | None, layer: str | None) -> tuple[Path | None, str | None]:
    """The data to diagnose on and its AnnData layer: as given, else as the run recorded them."""
    if data is not None:
        return data, layer
    run_file = run_dir / "run.json"
    if not run_file.exists():
        return None, layer
    run = json.loads(run_file.read_text(encoding="utf-8"))
    recorded = Path(run["input"])
    return (recorded if recorded.exists() else None), run.get("layer", layer)


def _cells_data(adapter_file: Path, data: Path):
    """The counts a cells run modelled (its genes, by name, from its layer) with its covariates, read from
    ``data`` (.h5ad, .zarr, 10x) with the adapter the run saved — in memory, or streamed from the file when
    they would not fit (``CellsAdapter.prepare_or_stream``); returns (data, layer)."""
    from .adapters.cells import CellsAdapter, read_cells

    adapter = CellsAdapter.load(adapter_file)
    return adapter.prepare_or_stream(read_cells(data, backed=True)), adapter.layer


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnostics import collapse_report
    from .io import load

    model_dir = args.run_dir / "model" if (args.run_dir / "model").is_dir() else args.run_dir
    vae = load(model_dir)
    print(f"model: {model_dir} ({vae!r})")
    data, layer = _diagnose_data(args.run_dir, args.data, args.layer)
    if data is None:
        if vae.history is None:
            raise ValueError(f"{args.run_dir} records no input data and no history; pass --data FILE")
        last = vae.history.iloc[-1]
        kl = [last[f"kl_{j}"] for j in range(vae.config.n_latent)]
        print("per-latent KL at the last training epoch (nats): " + ", ".join(f"z{j}={v:.3f}" for j, v in enumerate(kl)))
        print("active units need the data: pass --data FILE (the input of the run was not found)")
        return 0
    if (args.run_dir / "adapter.json").exists():  # a cells run: its genes, layer and covariates
        X, layer = _cells_data(args.run_dir / "adapter.json", data)
    else:
        X, _ = read_matrix(data, layer)
    print(f"data: {data}" + (f" (layer {layer})" if layer else ""))
    report = collapse_report(vae, X, threshold=args.threshold)
    print(report)
    if report.n_active <= 1:
        print(f"warning: {report.verdict}", file=sys.stderr)
    return 0


def _check_out(out: Path, inputs: list[Path], overwrite: bool) -> None:
    resolved = out.resolve()
    for path in inputs:
        if path.resolve() == resolved or resolved in path.resolve().parents:
            raise ValueError(f"--out {out} would overwrite the input {path}; choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} is not empty; choose a new folder or pass --overwrite")


@contextmanager
def run_folder(out: Path, on_start=None):
    """Create ``out`` with an INCOMPLETE marker that is removed only when the run finishes;
    ``on_start()`` is called once the folder exists (the input has been checked)."""
    if on_start is not None:
        on_start()
    out.mkdir(parents=True, exist_ok=True)
    marker = out / INCOMPLETE
    atomic_write_text("this run has not finished (or it failed); its outputs may be missing or partial\n", marker)
    yield out
    marker.unlink()


def _warnings_table(args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """The warnings of the run so far (each once, in order) as a report table; none: no table."""
    lines = getattr(args, "warning_lines", None)
    texts = [] if lines is None else list(lines.shown)
    return {"Warnings during the run": pd.DataFrame({"warning": texts})} if texts else {}


def _release_warnings(args: argparse.Namespace):
    """The callable that prints the warnings held back while the input was checked."""
    lines = getattr(args, "warning_lines", None)
    return None if lines is None else lines.release


def _cmd_fit(args: argparse.Namespace) -> int:
    X, names = read_matrix(args.input, args.layer)
    workers = launched_workers()
    if not workers.is_main:  # torchrun: ranks > 0 train their shard; rank 0 checks and writes everything
        return _fit_worker(args, X)
    _check_out(args.out, [args.input], args.overwrite or _resuming(args))
    vae = _model_from_args(args, X.shape[1])
    vae.validate(X)  # before anything is written
    with run_folder(args.out, _release_warnings(args)):
        history = vae.fit(
            X, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
            progress=not args.quiet, **_kernel_choices(args), **_checkpointing(args),
        )
        _write_fit_outputs(args, vae, X, names, history)
    kl = ", ".join(f"z{j}={v:.2f}" for j, v in enumerate(vae.kl_per_latent(X)))
    print(f"wrote {args.out}: model/, latents.csv, history.csv, run.json"
          f"{', checkpoint/' if args.checkpoint_every else ''}\nper-latent KL (nats): {kl}")
    return 0


_COMPILE_CHOICES = {"auto": None, "on": True, "off": False}


def _kernel_choices(args: argparse.Namespace) -> dict:
    """fit's ``compile`` and ``cuda_graph`` from --compile and --cuda-graph."""
    return {"compile": _COMPILE_CHOICES[args.compile], "cuda_graph": args.cuda_graph == "on"}


def _model_from_args(args: argparse.Namespace, n_features: int):
    from .model import BetaVAE

    return BetaVAE(n_features=n_features, n_latent=args.n_latent, likelihood=args.likelihood, beta=args.beta,
                   decoder=args.decoder, objective=args.objective, seed=args.seed)


def _fit_worker(args: argparse.Namespace, X) -> int:
    """A torchrun rank other than 0: train (gradients are shared), write nothing."""
    _model_from_args(args, X.shape[1]).fit(
        X, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
        progress=False, **_kernel_choices(args), **_checkpointing(args),
    )
    return 0


def _write_fit_outputs(args: argparse.Namespace, vae, X, names, history) -> None:
    vae.save(args.out / "model")
    run = {
        "command": "fit",
        "sciencevae_version": __version__,
        "input": str(args.input.resolve()),
        "input_sha256": file_sha256(args.input) if args.input.is_file() else None,
        "layer": args.layer,
    }
    atomic_write_text(json.dumps(run, indent=2), args.out / "run.json")
    latents = pd.DataFrame(vae.encode(X), columns=[f"z{j}" for j in range(args.n_latent)], index=names)
    atomic_write_text(latents.to_csv(index_label="sample"), args.out / "latents.csv")
    atomic_write_text(history.to_csv(index=False), args.out / "history.csv")


def _refuse_torchrun(command: str) -> None:
    if launched_workers().active:
        raise ValueError(f"`sciencevae {command}` runs in one process; under torchrun only `sciencevae fit` "
                         "trains data-parallel (run it without torchrun)")


def _check_run_flags(n_latent, beta, epochs: int | None) -> None:
    """Refuse impossible --n-latent / --beta / --epochs (single values or lists) in one line, before anything
    is read or written."""
    for value in (n_latent if isinstance(n_latent, list) else [n_latent]):
        if value != "auto" and value < 1:
            raise ValueError(f"--n-latent must be at least 1, got {value}")
    for value in (beta if isinstance(beta, list) else [beta]):
        if value != "auto" and not value >= 0:
            raise ValueError(f"--beta must be 0 or more, got {value}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")


def _cmd_climate(args: argparse.Namespace) -> int:
    _refuse_torchrun("climate")
    from .case_studies import climate_trend

    _check_run_flags(args.n_latent, args.beta, args.epochs)
    _check_out(args.out, args.inputs, args.overwrite or _resuming(args))
    inputs = [str(p) for p in args.inputs] if len(args.inputs) > 1 else str(args.inputs[0])
    var = args.var[0] if args.var and len(args.var) == 1 else args.var
    climate_trend.validate(inputs, var)  # times, record length, grid: before anything is written
    with run_folder(args.out, _release_warnings(args)):
        _write_run_json(args.out, "climate", args.inputs)  # first: the report names the input
        res = climate_trend.run(
            inputs, var=var, n_latent=args.n_latent, beta=args.beta, epochs=args.epochs, seed=args.seed,
            device=args.device, progress=not args.quiet, **_checkpointing(args),
        )
        saving = time.perf_counter()
        res.save(args.out, extra_tables=_warnings_table(args))
        _record_seconds(args.out, {**res.seconds, "save": time.perf_counter() - saving})
    print(res.roles.round(3).to_string())
    report = json.loads((args.out / "report.json").read_text(encoding="utf-8"))  # computed once, by save
    for var, slopes in report["trend_component_slope_per_decade"].items():
        print(f"{var}: {slopes['summary']}")
    for var, left in report["residual_seasonality"].items():
        print(f"{var}: {left['summary']}")
    print(report["seasonal_change"]["summary"])
    if climate_trend.training_note(res):
        print(f"note: {climate_trend.training_note(res)}")
    print(f"wrote {args.out}: latents.nc, components.nc, maps.nc, climatology.nc, report.json, report.html, "
          f"run.json, adapter.nc, figures/, model/{', checkpoint/' if args.checkpoint_every else ''}")
    return 0


def _file_record(path: Path) -> dict:
    """A file's absolute path and sha256 (None for a folder, e.g. a .zarr store or a 10x mtx folder)."""
    return {"path": str(path.resolve()), "sha256": file_sha256(path) if path.is_file() else None}


def _write_run_json(out: Path, command: str, inputs: list[Path], gene_sets: Path | None = None) -> None:
    """``RUN_DIR/run.json``: the command, the toolkit version and every input's path and sha256."""
    run = {"command": command, "sciencevae_version": __version__, "inputs": [_file_record(p) for p in inputs]}
    if command == "cells":  # the single-input form `diagnose` and older runs read
        run.update(input=run["inputs"][0]["path"], input_sha256=run["inputs"][0]["sha256"])
    if gene_sets is not None:
        run["gene_sets"] = _file_record(gene_sets)
    atomic_write_text(json.dumps(run, indent=2), out / "run.json")


def _record_seconds(out: Path, seconds: dict) -> None:
    """Add the wall seconds of each phase of the run to ``RUN_DIR/run.json`` (``seconds``)."""
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    run["seconds"] = {phase: round(value, 3) for phase, value in seconds.items()}
    atomic_write_text(json.dumps(run, indent=2), out / "run.json")


def _cmd_cells(args: argparse.Namespace) -> int:
    _refuse_torchrun("cells")
    if args.reference is not None and args.stream is not None:
        raise ValueError("--stream / --no-stream choose how training reads the counts; --reference maps cells "
                         "without training: leave them out")
    from .adapters.cells import drop_empty_cells, read_cells
    from .case_studies import gene_programmes

    started = time.perf_counter()
    adata = read_cells(args.input, backed=True)  # .h5ad: read a chunk of cells at a time
    if args.drop_empty_cells:
        adata = drop_empty_cells(adata, args.layer)
    seconds = {"read": time.perf_counter() - started}
    _check_out(args.out, [args.input] + ([args.gene_sets] if args.gene_sets else []),
               args.overwrite or _resuming(args))
    if args.reference is not None:
        return _map_cells(args, adata, seconds, started)
    choices = dict(layer=args.layer, likelihood=args.likelihood, batch_key=args.batch_key, gene_sets=args.gene_sets,
                   gene_symbols=args.gene_symbols, n_top_genes=args.n_top_genes or None, compare=args.compare,
                   sample_key=args.sample_key, guided=args.guided, n_denovo=args.n_denovo, stream=args.stream)
    if args.batch_mmd is not None and not (np.isfinite(args.batch_mmd) and args.batch_mmd >= 0):
        raise ValueError(f"--batch-mmd must be a finite number >= 0 (0: off), got {args.batch_mmd}")
    if args.batch_mmd and not args.batch_key:
        raise ValueError("--batch-mmd mixes the batches of --batch-key: add --batch-key (or leave it out)")
    if args.fits < 1:
        raise ValueError(f"--fits must be at least 1, got {args.fits}")
    n_latent, beta = _setting(args.n_latent, int, "--n-latent"), _setting(args.beta, float, "--beta")
    _check_run_flags(n_latent, beta, args.epochs)
    _check_guided_flags(args, beta)
    if not all(isinstance(v, (int, float)) for v in (n_latent, beta)) and args.fits < 2:
        raise ValueError("--n-latent / --beta auto or a list compare stability across seeds: add --fits 2 or more "
                         "(3 or more gives steadier stabilities)")
    inputs = gene_programmes.check_inputs(adata, **choices)  # everything checked before anything is written
    seconds["check"] = time.perf_counter() - started - seconds["read"]
    with run_folder(args.out, _release_warnings(args)):
        _write_run_json(args.out, "cells", [args.input], gene_sets=args.gene_sets)  # first: the report names it
        res = gene_programmes.run(
            adata, n_latent=n_latent, decoder=args.decoder, beta=beta, epochs=args.epochs, seed=args.seed,
            device=args.device, progress=not args.quiet, inputs=inputs, n_fits=args.fits, batch_mmd=args.batch_mmd,
            **choices, **_checkpointing(args),
        )
        saving = time.perf_counter()
        res.save(args.out, extra_tables=_warnings_table(args))
        _record_seconds(args.out, {**seconds, **res.seconds, "save": time.perf_counter() - saving})
    top = res.programmes[res.programmes["rank"] <= 5]
    for programme, rows in top.groupby("programme"):
        ends = {d: ", ".join(rows.loc[rows["direction"] == d, "gene"]) for d in ("+", "-")}
        said = [] if res.stability is None else [f"stability {res.stability['stability'][programme]:.2f}"]
        if res.guided is not None:
            row = res.guided.iloc[programme]
            if row["status"] == "inactive":
                continue  # said in the notes: an inactive programme has no genes
            said = [str(row["name"]), str(row["status"]), *said]
        lowered = f" | - {ends['-']}" if ends["-"] else ""  # a guided programme may lower no gene
        label = " (" + ", ".join(said) + ")" if said else ""
        print(f"programme {programme}{label}: + {ends['+']}{lowered}")
    if res.selection is not None:
        best = res.selection[res.selection["chosen"]].iloc[0]
        print(f"chose n_latent={best['n_latent']}, beta={best['beta']:g}: {best['n_stable']} stable programmes, the "
              "most in the sweep (selection.csv, figures/selection.png)")
    twins = gene_programmes.twin_notes(res.adata.obsm[gene_programmes.OBSM_KEY])
    for note in gene_programmes.stability_notes(res.stability, res.guided) + twins:
        print(f"note: {note}")
    for hint in gene_programmes.batch_hints(res.association, args.batch_key):
        print(f"hint: {hint}")
    if res.enrichment is not None and len(res.enrichment):
        print(_enrichment_headline(gene_programmes.other_sets(res.enrichment)))
    _print_analyses(res)
    print(_written(args.out, res))
    return 0


def _check_guided_flags(args: argparse.Namespace, beta) -> None:
    """Refuse flags that --guided does not take, and --n-denovo without it (one line each)."""
    from .case_studies.gene_programmes import check_guided
    from .case_studies.guided import N_DENOVO

    if not args.guided:
        if args.n_denovo != N_DENOVO:
            raise ValueError("--n-denovo sets the free programmes of --guided: add --guided (and --gene-sets)")
        return
    if args.n_latent != build_parser().parse_args(["cells", "x", "--out", "y"]).n_latent:
        raise ValueError("--n-latent is not used with --guided (one programme per gene set, plus --n-denovo free "
                         "ones): drop it")
    check_guided(None, beta, args.decoder)  # --n-latent: refused above


def _differential_headline(table) -> str:
    """One line on the differential activity test: how many programme-group pairs differ at q < 0.05, and of
    those the one with the largest Cohen's d."""
    if not len(table):
        return "differential activity: no group had enough cells or samples to test (differential.csv is empty)"
    hits = table[table["q"] < 0.05]
    unit = "samples" if table["unit"].iloc[0] == "samples" else "cells"
    if not len(hits):
        return f"differential activity ({unit} as the unit): no programme differs at q < 0.05 (differential.csv)"
    top = hits.loc[hits["effect_size"].abs().fillna(0).idxmax()]
    return (f"differential activity ({unit} as the unit): {len(hits)} of {len(table)} tests at q < 0.05; largest effect: "
            f"programme {top['programme']} in {top['group1']} vs {top['group2']}, difference {top['difference']:+.2f} "
            f"(Cohen's d {top['effect_size']:+.2f}, q = {top['q']:.2g}) (differential.csv)")


def _map_cells(args: argparse.Namespace, adata, seconds: dict, started: float) -> int:
    """`cells QUERY --reference RUN_DIR`: score the query with the reference run's model, no training."""
    from .case_studies.reference_mapping import check_cells_run, map_to_reference

    _check_out(args.out, [args.input, check_cells_run(args.reference)], args.overwrite)
    defaults = build_parser().parse_args(["cells", "x", "--out", "y"])
    chosen = [flag for flag, given in (("--fits", args.fits != 1), ("--batch-key", args.batch_key),
                                       ("--gene-sets", args.gene_sets), ("--resume", _resuming(args)),
                                       ("--guided", args.guided),
                                       ("--n-denovo", args.n_denovo != defaults.n_denovo),
                                       ("--batch-mmd", bool(args.batch_mmd)),
                                       ("--epochs", args.epochs is not None),
                                       ("--n-latent", args.n_latent != defaults.n_latent),
                                       ("--beta", args.beta != defaults.beta),
                                       ("--likelihood", args.likelihood != defaults.likelihood),
                                       ("--decoder", args.decoder != defaults.decoder))
              if given]
    if chosen:
        raise ValueError(f"{', '.join(chosen)} cannot be used with --reference: the model, its training, batches and "
                         "the programmes' enrichment come from the reference run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = map_to_reference(adata, args.reference, layer=args.layer, compare=args.compare,
                               sample_key=args.sample_key)
    seconds["map"] = time.perf_counter() - started - seconds["read"]
    with run_folder(args.out, _release_warnings(args)):
        _write_run_json(args.out, "cells", [args.input])
        saving = time.perf_counter()
        res.save(args.out, extra_tables=_warnings_table(args))
        _record_seconds(args.out, {**seconds, "save": time.perf_counter() - saving})
    missing = res.settings["genes_missing_in_query"]
    print(f"mapped {adata.n_obs:,} cells onto {args.reference} (no training): {len(res.adapter.genes) - missing:,} of "
          f"the model's {len(res.adapter.genes):,} genes in the query" + (f", {missing:,} missing (zeros)" if missing
                                                                            else ""))
    for warning in caught:
        if issubclass(warning.category, UserWarning):  # what mapping says to the user, not library noise
            print(f"note: {warning.message}")
    _print_analyses(res)
    print(_written(args.out, res))
    return 0


def _print_analyses(res) -> None:
    """Notes on guided programmes, the differential test's headline and the model check's verdict of a cells run."""
    from .case_studies.guided import guided_notes

    for note in guided_notes(res.guided, of_reference="reference" in res.settings):
        print(f"note: {note} (guided.csv)")
    if res.differential is not None:
        print(_differential_headline(res.differential))
    if res.checks is not None:
        print(f"model check: {res.checks.verdict} (model_checks.csv, figures/posterior_predictive.png)")


def _written(out: Path, res) -> str:
    """The line naming what a cells run wrote."""
    optional = (("enrichment.csv", res.enrichment is not None), ("differential.csv", res.differential is not None),
                ("model_checks.csv", res.checks is not None), ("selection.csv", res.selection is not None),
                ("label_matching.csv", res.label_scores is not None and len(res.label_scores)),
                ("guided.csv", res.guided is not None))
    files = ["cells.h5ad", "programmes.csv", "association.csv", *(name for name, written in optional if written),
             "report.html", "run.json", "adapter.json", "figures/", "model/"]
    files += ["checkpoint/"] if (out / "checkpoint").is_dir() else []
    return f"wrote {out}: {', '.join(files)}"


def _setting(value: str, kind: type, flag: str = "") -> int | float | str | list:
    """``"auto"``, the number ``value`` holds, or the list of a comma-separated grid ("4,6,8"); a
    one-line error naming ``flag`` otherwise."""
    if value == "auto":
        return value
    try:
        values = [kind(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"{flag} takes a number, a comma-separated list or 'auto', got {value!r}") from None
    if len(set(values)) < len(values):
        raise ValueError(f"{flag} lists a value twice: {value!r}")
    return values if len(values) > 1 else values[0]


def _enrichment_headline(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """The most significant gene set by either test (top-gene overlap q or rank test rank_q), or a
    plain 'none' when no set passes ``alpha``.

    >>> table = pd.DataFrame({"programme": [0, 1], "direction": ["+", "-"], "gene_set": ["A", "B"],
    ...                       "q": [0.7, 0.9], "rank_q": [0.8, 0.01]})
    >>> _enrichment_headline(table)
    'strongest enrichment: programme 1 (-) B (rank test q=0.01)'
    """
    if not len(table):  # a guided run whose only enrichments are its programmes' own sets
        return "no gene set is enriched but the guided programmes' own sets (enrichment.csv)"
    best_q = table.loc[table["q"].idxmin()]
    best_rank = table.loc[table["rank_q"].idxmin()]
    best, test, q = ((best_q, "top genes", best_q.q) if best_q.q <= best_rank.rank_q
                     else (best_rank, "rank test", best_rank.rank_q))
    if q > alpha:
        return f"no gene set is enriched at q <= {alpha:g} (smallest q {q:.2g}: see enrichment.csv)"
    return f"strongest enrichment: programme {best.programme} ({best.direction}) {best.gene_set} ({test} q={q:.2g})"


def _cmd_demo(args: argparse.Namespace) -> int:
    from .case_studies.demo import run_demo

    _check_out(args.out, [], args.overwrite)
    with run_folder(args.out, _release_warnings(args)):
        result = run_demo(args.out, fast=args.fast, progress=not args.quiet)
    print("gene programmes on pbmc68k_reduced — known markers among the top genes:")
    print(result["markers"].to_string(index=False))
    print("\nclimate on the synthetic field — known truth and what was found:")
    print(result["truth"].to_string(index=False))
    print(f"\nreports: {result['cells']}\n         {result['climate']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .case_studies.export import export_run

    out = args.out or args.run_dir / "export"
    for path in export_run(args.run_dir, out, args.format):
        print(f"wrote {path}")
    return 0


def _cmd_perturb(args: argparse.Namespace) -> int:
    from .case_studies.perturbation import perturb_run
    from .io import atomic_write_text

    table = perturb_run(args.run_dir, args.programme, value=args.set, shift=args.shift, cells=args.cells)
    how = f"set{args.set:g}" if args.set is not None else f"shift{args.shift:+g}"
    name = f"programme_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(args.programme))}_{how}.csv"  # a set name: G2/M
    out = args.run_dir / "perturbations" / name if args.out is None else args.out / name if args.out.is_dir() \
        else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table.to_csv(index=False), out)
    change = f"set to {args.set:g}" if args.set is not None else f"shifted by {args.shift:+g}"
    print(f"programme {args.programme} {change} in {args.cells or 'every cell'}: expected expression per 10,000 "
          "counts, mean over those cells")
    for label, rows in (("up", table[table["log2_fold_change"] > 0]), ("down", table[table["log2_fold_change"] < 0])):
        shown = ", ".join(f"{g} {l2:+.2f}" for g, l2 in zip(rows["gene"][:8], rows["log2_fold_change"][:8]))
        print(f"  {label} (log2 fold change): {shown or 'none'}")
    print(f"wrote {out}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from . import fetch

    if args.action == "list":
        for name, manifest in fetch.manifests().items():
            pinned = all(f.get("sha256") for f in manifest["files"])
            print(f"{name:28s} {'pinned  ' if pinned else 'unpinned'}  {manifest['title']}")
        return 0
    if args.action == "fetch":
        if not args.target:
            raise ValueError("data fetch needs a dataset name; see `sciencevae data list`")
        for path in fetch.fetch(args.target, cache=args.cache, progress=not args.quiet):
            print(path)
        return 0
    if not args.target:
        raise ValueError("data verify needs a file path")
    result = fetch.verify(args.target)
    if not result["ok"]:
        raise ValueError(f"{args.target} (sha256 {result['sha256']}) matches no pinned manifest file")
    print(f"{args.target}: {result['dataset']} / {result['file']} (sha256 {result['sha256']}) — ok")
    return 0


def _add_run_flags(parser: argparse.ArgumentParser, n_latent: int, beta: float, epochs: int | None,
                   epochs_help: str | None = None, auto: bool = False) -> None:
    """Model size, training and run-folder flags shared by the case-study commands (``auto``: --n-latent
    and --beta also take 'auto')."""
    if auto:
        choose = ", a comma-separated list or 'auto' (a stability sweep; needs --fits 2 or more)"
        parser.add_argument("--n-latent", default=str(n_latent), help=f"latents{choose}")
        parser.add_argument("--beta", default=str(beta), help=f"KL weight (1 = the ELBO){choose}")
    else:
        parser.add_argument("--n-latent", type=int, default=n_latent)
        parser.add_argument("--beta", type=float, default=beta, help="KL weight; 1 = the ELBO")
    parser.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_checkpoint_flags(parser)


def _add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                        help="write RUN_DIR/checkpoint/checkpoint.pt every N epochs (0: never)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")


def _checkpointing(args: argparse.Namespace) -> dict:
    """fit() arguments for the run's checkpoint folder."""
    folder = args.out / "checkpoint"
    return {"checkpoint_dir": folder if args.checkpoint_every else None,
            "checkpoint_every": args.checkpoint_every or 1, "resume": args.resume}


def _resuming(args: argparse.Namespace) -> bool:
    return args.resume and (args.out / "checkpoint" / CHECKPOINT_NAME).exists()


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, as every other error of the command: the problem, then where the
    options are listed (no usage block above it). Its subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (options: {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    from .case_studies.gene_programmes import BATCH_MMD
    from .case_studies.guided import N_DENOVO

    parser = OneLineParser(
        prog="sciencevae",
        description="β-VAEs for scientific data: disentangled knobs for climate fields and single-cell counts.",
    )
    parser.add_argument("--version", action="version", version=f"sciencevae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = commands.add_parser("fit", help="train a β-VAE on a samples x features matrix file")
    fit.add_argument("input", type=Path, help=".npy, .npz (scipy sparse), .csv (header + sample column), or an "
                     ".h5ad / .zarr AnnData (streamed from disk in chunks, never loaded whole)")
    fit.add_argument("--layer", help="AnnData layer holding the data (default X)")
    fit.add_argument("--out", type=Path, required=True, help="run folder to write (must be new or empty)")
    fit.add_argument("--likelihood", default="gaussian", choices=sorted(LIKELIHOODS))
    fit.add_argument("--n-latent", type=int, default=10)
    fit.add_argument("--beta", type=float, default=1.0, help="KL weight; 1 = the ELBO")
    fit.add_argument("--objective", default="beta", choices=["beta", "capacity", "tcvae"])
    fit.add_argument("--decoder", default="mlp", choices=["mlp", "linear"])
    fit.add_argument("--epochs", type=int, default=100)
    fit.add_argument("--batch-size", type=int, default=None, help="per process (default 256 on CPU, 1024 on CUDA)")
    fit.add_argument("--lr", type=float, default=None,
                     help="learning rate (default 1e-3, scaled by sqrt(batch / 256) for larger batches)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    fit.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    fit.add_argument("--compile", default="auto", choices=sorted(_COMPILE_CHOICES),
                     help="compile the NB kernel (a few seconds once; faster epochs); auto: on the CPU when the "
                          "run repays it (on a GPU: from ~1e11 cells x genes x epochs)")
    fit.add_argument("--cuda-graph", default="on", choices=["on", "off"],
                     help="on a GPU, replay each full training step from a CUDA graph (one launch per step)")
    _add_checkpoint_flags(fit)
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(run=_cmd_fit)

    diagnose = commands.add_parser("diagnose", help="per-latent KL, active units and collapse warnings of a run")
    diagnose.add_argument("run_dir", type=Path, help="a run folder from 'fit' (or a saved model folder)")
    diagnose.add_argument("--data", type=Path, help="data to evaluate on (default: the run's recorded input)")
    diagnose.add_argument("--layer", help="AnnData layer of --data (default: the run's, else X)")
    diagnose.add_argument("--threshold", type=float, default=0.01, help="active when Var_x E[z|x] exceeds this")
    diagnose.set_defaults(run=_cmd_diagnose)

    climate = commands.add_parser("climate", help="seasonal cycle, trend and other modes of a monthly field")
    climate.add_argument("inputs", type=Path, nargs="+", help="netCDF file(s) (combined by coordinates) or a .zarr")
    climate.add_argument("--var", nargs="+", metavar="NAME",
                         help="variable name(s) (needed when the files hold several; several: each its own scaling)")
    climate.add_argument("--out", type=Path, required=True, help="run folder to write (must be new or empty)")
    _add_run_flags(climate, n_latent=8, beta=8.0, epochs=None,
                   epochs_help="default: enough for 10,000 optimiser steps (435 for 60 years of monthly data)")
    climate.set_defaults(run=_cmd_climate)

    cells = commands.add_parser("cells", help="gene programmes of single-cell counts (AnnData)")
    cells.add_argument("input", type=Path, help=".h5ad, .zarr, a 10x .h5 file or a 10x mtx folder")
    cells.add_argument("--out", type=Path, required=True, help="run folder to write (must be new or empty)")
    cells.add_argument("--layer", help="counts from this layer ('raw' for .raw; default X)")
    cells.add_argument("--likelihood", default="nb", choices=sorted(LIKELIHOODS))
    cells.add_argument("--decoder", default="linear", choices=["linear", "mlp"])
    cells.add_argument("--batch-key", help="obs column of the batch (a covariate)")
    cells.add_argument("--batch-mmd", type=float, default=None, metavar="WEIGHT",
                       help=f"with --batch-key: weight of the penalty that mixes the batches in the latent space "
                            f"(squared MMD between each batch's codes and the minibatch's; default {BATCH_MMD:g}, "
                            "0: off)")
    cells.add_argument("--gene-sets", type=Path, help="a .gmt file of gene sets for enrichment (and --guided)")
    cells.add_argument("--guided", action="store_true",
                       help="the gene sets guide the programmes: one per set (5+ modelled genes), softly confined to "
                            "it, plus --n-denovo free ones; guided.csv says which are active and the genes the data "
                            "added to or dropped from each set")
    cells.add_argument("--n-denovo", type=int, default=N_DENOVO, metavar="N",
                       help=f"free programmes after the guided ones (with --guided; default {N_DENOVO})")
    cells.add_argument("--gene-symbols", help="var column with the gene symbols the gene sets use")
    cells.add_argument("--n-top-genes", type=int, default=2000, help="highly variable genes (0: all genes)")
    cells.add_argument("--drop-empty-cells", action="store_true",
                       help="leave out cells without counts (with a warning) instead of refusing the file")
    cells.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                       help="read the modelled counts from the file a chunk of cells at a time whenever they are "
                            "used (each epoch) instead of holding them in memory; --no-stream holds them (default: "
                            "stream only when they would take over a quarter of the available memory)")
    cells.add_argument("--compare", metavar="KEY[:GROUP1[:GROUP2]]",
                       help="test programme activity between groups of an obs column (default each group against "
                            "the rest): differential.csv")
    cells.add_argument("--reference", type=Path, metavar="RUN_DIR",
                       help="score the cells with this cells run's model and programmes, without training")
    cells.add_argument("--sample-key", help="obs column of samples or donors: the unit of --compare (pseudobulk)")
    cells.add_argument("--fits", type=int, default=1, metavar="K",
                       help="consensus of K fits with seeds SEED..SEED+K-1: programmes found again across seeds, "
                            "each with a stability score (default 1: a single fit)")
    _add_run_flags(cells, n_latent=10, beta=1.0, epochs=None,
                   epochs_help="training epochs (default: scvi-tools' rule, min(20000 / cells x 400, 400))",
                   auto=True)
    cells.set_defaults(run=_cmd_cells)

    demo = commands.add_parser("demo", help="both case studies on embedded data, offline (about a minute)")
    demo.add_argument("--out", type=Path, default=Path("sciencevae-demo"), help="folder to write (new or empty)")
    demo.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)  # a few epochs, for the tests
    demo.set_defaults(run=_cmd_demo)

    export = commands.add_parser("export", help="a run's latents and loadings as zarr, parquet or csv")
    export.add_argument("run_dir", type=Path, help="a run folder from fit, climate or cells")
    export.add_argument("--format", default="zarr", choices=["zarr", "parquet", "csv"])
    export.add_argument("--out", type=Path, help="folder to write (default RUN_DIR/export)")
    export.set_defaults(run=_cmd_export)

    perturb = commands.add_parser("perturb", help="set or shift a programme of a cells run; every gene's change")
    perturb.add_argument("run_dir", type=Path, help="a run folder from `sciencevae cells`")
    perturb.add_argument("--programme", required=True,
                         help="the programme: its number (programmes.csv), or in a guided run its name (guided.csv)")
    change = perturb.add_mutually_exclusive_group(required=True)
    change.add_argument("--set", type=float, help="set the programme's activity to this value")
    change.add_argument("--shift", type=float, help="add this to the programme's activity")
    perturb.add_argument("--cells", metavar="KEY:GROUP", help="perturb only the cells of this obs group (default all)")
    perturb.add_argument("--out", type=Path,
                         help="CSV file to write, or a folder for programme_<P>_<set|shift><value>.csv (default "
                              "RUN_DIR/perturbations/)")
    perturb.set_defaults(run=_cmd_perturb)

    data = commands.add_parser("data", help="real datasets by name: list, fetch (checksum-verified), verify")
    data.add_argument("action", choices=["list", "fetch", "verify"])
    data.add_argument("target", nargs="?", help="dataset name (fetch) or file path (verify)")
    data.add_argument("--cache", type=Path, help="download folder (default $SCIENCEVAE_DATA or ~/.cache/sciencevae)")
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    data.set_defaults(run=_cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sciencevae`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    args.warning_lines = WarningLines()
    try:
        with warnings.catch_warnings():
            args.warning_lines.install()
            status = args.run(args)
        args.warning_lines.release()
        return status
    except (KeyboardInterrupt, TrainingInterrupted) as err:
        print(f"sciencevae: interrupted: {err}" if str(err) else "sciencevae: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if args.debug:
            raise
        print(f"sciencevae: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Every ``medft`` command outside LightningCLI: the function it runs and how it reports.

A command's options are not written here: they are the parameters of the function it
runs (:class:`~medft.options.FunctionOptions`), so ``medft evaluate --help`` and
``medft.eval.evaluate.evaluate`` cannot disagree. This table adds what only a command line
has: its name, a one-line summary, one example, the shared option vocabulary
(:data:`VOCABULARY`), old spellings that still work, and the few lines that print a result.

Functions are named as ``"module:function"`` strings, imported only when their command
is parsed, so ``medft --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medft.errors import ConfigError
from medft.options import FunctionOptions

VOCABULARY: Mapping[str, str] = {
    "--input": "what a command reads: a manifest CSV, a CLASS/** folder, a folder or a file",
    "--out": "the folder a command writes into (export, cv compare and data import also "
    "take a file name with the file's own suffix)",
    "--workers": "processes decoding or reading images",
    "--checkpoint": "a medft checkpoint (.ckpt); repeatable where an ensemble makes sense",
    "--labels": "which of the findings to use (default: all)",
    "--threads": "torch intra-op threads (not processes)",
    "--quiet": "no progress bar or progress lines on stderr",
}
"""One name for one idea across commands (tests/test_cli_vocabulary.py holds them to it)."""

SYNONYMS = ("--manifest", "--root", "--num-workers", "--findings", "--n-workers")
"""Old or other names for the ideas above: accepted as deprecated spellings only."""

INPUT_MANIFEST = "manifest CSV or CLASS/** folder (labelled)"

Show = Callable[[argparse.Namespace, "Command"], int]


@dataclass(frozen=True)
class Command:
    """One ``medft`` command.

    Attributes:
        name: Its words, e.g. ``"data audit"``.
        summary: One line for ``medft --help``.
        example: One command line, printed at the end of its ``--help``.
        options: The functions whose parameters are its options; the first is the one it
            runs, the others supply options for a second step (``--dicom-out``).
        show: Runs the command from the parsed options and prints the result; returns
            the exit status.
        description: A paragraph for its ``--help`` (default: the summary).
        quiet: Add ``--quiet`` (for commands whose function has no ``quiet`` parameter).
        json: Add ``--json`` (print the result as JSON).
        trailing: Help of trailing words after ``--`` (LightningCLI overrides), if taken.
        arguments: ``"module:function"`` adding options by hand, for values the command
            line gives as text (a URL, ``USER:PASS``) rather than as the Python type.
    """

    name: str
    summary: str
    example: str
    options: tuple[FunctionOptions, ...]
    show: Show
    description: str = ""
    quiet: bool = False
    json: bool = False
    trailing: str | None = None
    arguments: str | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Hand-written options that text gives differently from Python (the demo's login)."""
        if self.arguments is not None:
            module, _, name = self.arguments.partition(":")
            getattr(importlib.import_module(module), name)(parser)

    def call(self, args: argparse.Namespace, **extra: Any) -> Any:
        """Run the command's main function with the parsed options."""
        spec = self.options[0]
        return spec.function(**spec.kwargs(args), **extra)


def _print_result(args: argparse.Namespace, report: Any) -> None:
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())


# ----------------------------------------------------------------------------- show


def _show_synth(args: argparse.Namespace, command: Command) -> int:
    result = command.call(args)
    print(
        f"wrote {result.n_images} images of {args.n_patients} patients to {result.root} "
        f"in {result.seconds:.1f} s\nlabels: {result.labels_csv}"
    )
    return 0


def _show_check(args: argparse.Namespace, command: Command) -> int:
    report = command.call(args)
    _print_result(args, report)
    return 0 if report.ok else 1


def _show_audit(args: argparse.Namespace, command: Command) -> int:
    report = command.call(args)
    _print_result(args, report)
    if args.out is not None and not args.json:
        print(f"\nwrote {Path(args.out) / 'audit.json'} and {Path(args.out) / 'audit.html'}")
    return 0  # findings are information, not failure


def _show_import(args: argparse.Namespace, command: Command) -> int:
    from medft.data.importers import import_dataset

    kwargs = command.options[0].kwargs(args)
    root, out = kwargs.pop("root"), kwargs.pop("out")
    print(import_dataset(command.name.split()[-1], root, out, **kwargs).format())
    return 0


def _show_quickstart(args: argparse.Namespace, command: Command) -> int:
    command.call(args)
    return 0


def _show_evaluate(args: argparse.Namespace, command: Command) -> int:
    from medft.eval.evaluate import format_summary

    print(format_summary(command.call(args), args.out))
    return 0


def _show_cv(args: argparse.Namespace, command: Command) -> int:
    if args.config is None:
        raise ConfigError("medft cv needs --config X.yaml (see medft cv --help)")
    command.call(args, overrides=_trailing(args))
    return 0


def _show_cv_aggregate(args: argparse.Namespace, command: Command) -> int:
    from medft.eval.cv import format_summary

    print(format_summary(command.call(args)))
    return 0


def _show_cv_compare(args: argparse.Namespace, command: Command) -> int:
    from medft.eval.cv import format_comparison

    print(format_comparison(command.call(args)))
    return 0


def _show_explain(args: argparse.Namespace, command: Command) -> int:
    from medft._io import check_output_dir
    from medft.explain.batch import format_summary

    check_output_dir(args.out)  # before any model is loaded
    index = command.call(args)
    print(format_summary(index, args.out))
    if args.dicom_out is not None:
        from medft.workflows.dicom_out import explain_dicom, format_dicom_summary

        results = explain_dicom(index, args.out, args.dicom_out, args.checkpoint)
        print(format_dicom_summary(results, args.dicom_out))
    return 0 if (index["status"] == "ok").any() else 1


def _show_predict(args: argparse.Namespace, command: Command) -> int:
    from medft.workflows.predict import format_summary

    run = command.call(args, argv=args.argv)
    print(format_summary(run))
    if args.dicom_out is not None:
        from medft.workflows.dicom_out import format_dicom_summary, predict_dicom

        print(format_dicom_summary(predict_dicom(run, args.dicom_out), args.dicom_out))
    return 0 if len(run.predictions.table) else 1


def _show_export(args: argparse.Namespace, command: Command) -> int:
    print(command.call(args).describe())
    return 0


def _show_send(args: argparse.Namespace, command: Command) -> int:
    if args.report is None:
        args.report = Path(args.folder) / "send_report.json"
    report = command.call(args)
    print(f"{report.format()}\nreport: {args.report}")
    return 0 if report.ok else 1


def _show_lr_find(args: argparse.Namespace, command: Command) -> int:
    from medft.lr_find import PHASES, format_results

    if args.phase is not None:  # the old spelling, which also took "both"
        args.phases = PHASES if args.phase == "both" else (args.phase,)
        _note(f"--phase {args.phase} is now --phases {' '.join(args.phases)}")
    print(format_results(command.call(args, overrides=_trailing(args)), args.out))
    return 0


def add_old_lr_find_options(parser: argparse.ArgumentParser) -> None:
    """``--phase head|unfrozen|both`` of earlier releases (hidden; ``--phases`` replaces it)."""
    parser.add_argument(
        "--phase", choices=("head", "unfrozen", "both"), default=None, help=argparse.SUPPRESS
    )


def _show_weights(args: argparse.Namespace, command: Command) -> int:
    from medft.model.backbones import hub_cache_dir

    pulled = command.call(args)
    for name, path in pulled.items():
        print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    cache = Path(args.cache_dir) if args.cache_dir else hub_cache_dir()
    print(
        f"\nTo use them on a machine without internet, copy {cache} there (same path, or set "
        "HF_HUB_CACHE to the copy); medft then loads them from the cache, offline."
    )
    return 0


def _show_demo(args: argparse.Namespace, command: Command) -> int:
    from medft.demo import run_demo, settings_from_args

    return run_demo(settings_from_args(args))


def _show_bench(args: argparse.Namespace, command: Command) -> int:
    if getattr(args, "scale", False):  # the old spelling of `medft bench scale`
        from medft.bench import run_scale_benchmark

        _note("--scale is now its own command: medft bench scale --out DIR [--sizes N ...]")
        run_scale_benchmark(args.out, sizes=args.scale_sizes, keep=args.keep)
        return 0
    command.call(args)
    return 0


def add_old_bench_options(parser: argparse.ArgumentParser) -> None:
    """``--scale [--scale-sizes N ...] [--keep]`` of earlier releases (hidden)."""
    parser.add_argument("--scale", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scale-sizes", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)


def _note(message: str) -> None:
    """One line on stderr about an old spelling that still works."""
    print(f"medft: note: {message} (the old form still works for now)", file=sys.stderr)


def _trailing(args: argparse.Namespace) -> list[str]:
    words = list(args.words)
    return words[1:] if words[:1] == ["--"] else words


# ---------------------------------------------------------------------------- table

_IMPORT_MODULES = {
    "nih": "nih",
    "chexpert": "chexpert",
    "mimic": "mimic",
    "rsna": "rsna",
    "siim": "siim",
    "vindr": "vindr",
    "medmnist": "medmnist",
    "folder": "folder",
}
_IMPORT_SUMMARIES = {
    "nih": "NIH ChestX-ray14 (Data_Entry_2017.csv and the image folders)",
    "chexpert": "CheXpert (train.csv/valid.csv and the patient folders)",
    "mimic": "MIMIC-CXR-JPG (the metadata, split and label CSVs and the JPG folders)",
    "rsna": "RSNA Pneumonia Detection (labels CSV and DICOMs; boxes sidecar)",
    "siim": "SIIM-ACR Pneumothorax (RLE CSV and DICOMs; masks sidecar)",
    "vindr": "VinDr-CXR (per-reader annotations and DICOMs; boxes sidecar)",
    "medmnist": "a MedMNIST .npz (images written as PNG files)",
    "folder": "a CLASS/**/* folder of images",
}
_IMPORT_EXAMPLES = {
    "medmnist": "medft data import medmnist --input pneumoniamnist.npz --out pneumonia",
    "folder": "medft data import folder --input images/ --out imported",
}


def _import_command(name: str) -> Command:
    return Command(
        f"data import {name}",
        f"manifest of {_IMPORT_SUMMARIES[name]}",
        _IMPORT_EXAMPLES.get(name, f"medft data import {name} --input /data/{name} --out {name}"),
        (
            FunctionOptions(
                f"medft.data.importers.{_IMPORT_MODULES[name]}:import_{name}",
                rename={"root": "input"},
                deprecated={"input": ("--root",)},
                help={
                    "root": "the dataset's folder (medmnist: its .npz file)",
                    "out": "folder for manifest.csv and its sidecars (a path ending in .csv "
                    "names the manifest file itself)",
                },
            ),
        ),
        _show_import,
        quiet=True,
    )


COMMANDS: tuple[Command, ...] = (
    Command(
        "synth",
        "write a synthetic chest X-ray DICOM dataset",
        "medft synth --out synth --n-patients 200",
        (FunctionOptions("medft.data.synth:synthesize"),),
        _show_synth,
        quiet=True,
    ),
    Command(
        "data check",
        "read every file of a manifest and summarise",
        "medft data check --input synth/labels.csv",
        (
            FunctionOptions(
                "medft.data.check:check_manifest",
                skip=frozenset({"read_fn"}),
                rename={"manifest_or_path": "input"},
                deprecated={"input": ("--manifest",)},
                help={"manifest_or_path": INPUT_MANIFEST},
            ),
        ),
        _show_check,
        quiet=True,
        json=True,
    ),
    Command(
        "data audit",
        "shortcut audit: can metadata or borders predict labels?",
        "medft data audit --input synth/labels.csv --out audit",
        (
            FunctionOptions(
                "medft.data.audit:audit_manifest",
                rename={"manifest_or_path": "input", "exclude_columns": "exclude"},
                deprecated={"input": ("--manifest",)},
                help={"manifest_or_path": INPUT_MANIFEST},
            ),
        ),
        _show_audit,
        quiet=True,
        json=True,
    ),
    *(_import_command(name) for name in _IMPORT_MODULES),
    Command(
        "quickstart",
        "synthesise data, fine-tune and test on it, offline (a few minutes)",
        "medft quickstart --out medft-quickstart",
        (FunctionOptions("medft.quickstart:run_quickstart", skip=frozenset({"extra_args"})),),
        _show_quickstart,
    ),
    Command(
        "evaluate",
        "evaluate a checkpoint on a manifest: predictions, metrics with CIs, report.html",
        "medft evaluate --checkpoint best.ckpt --input test.csv --out eval",
        (
            FunctionOptions(
                "medft.eval.evaluate:evaluate",
                rename={"manifest": "input", "num_workers": "workers"},
                deprecated={"input": ("--manifest",), "workers": ("--num-workers",)},
            ),
        ),
        _show_evaluate,
        quiet=True,
    ),
    Command(
        "cv",
        "K-fold cross-validation study (see also `cv aggregate`, `cv compare`)",
        "medft cv --config configs/quickstart.yaml --folds 5 --out study",
        (
            FunctionOptions(
                "medft.workflows.cv:run",
                skip=frozenset({"overrides"}),
                optional=frozenset({"config"}),
            ),
        ),
        _show_cv,
        description="Run a patient-level K-fold study of a `medft fit` config. "
        "`medft cv aggregate STUDY` rebuilds its summary; `medft cv compare STUDY_A STUDY_B` "
        "compares two studies run on the same folds.",
        trailing="after `--`: LightningCLI overrides for every fold "
        "(e.g. -- --trainer.max_epochs 3)",
    ),
    Command(
        "cv aggregate",
        "pool a finished study's folds: summary.json and report.html",
        "medft cv aggregate study",
        (FunctionOptions("medft.eval.cv:aggregate", positional=("out",), rename={"out": "study"}),),
        _show_cv_aggregate,
    ),
    Command(
        "cv compare",
        "compare two studies run on the same folds (paired bootstrap, DeLong)",
        "medft cv compare study_a study_b --out comparison",
        (FunctionOptions("medft.eval.cv:compare", positional=("dir_a", "dir_b")),),
        _show_cv_compare,
    ),
    Command(
        "explain",
        "saliency maps of a checkpoint for a file or folder: overlays, raw maps, index.csv",
        "medft explain --checkpoint best.ckpt --input scans/ --out maps --check",
        (
            FunctionOptions(
                "medft.explain.batch:explain_inputs",
                rename={"inputs": "input", "findings": "labels", "target_layer": "layer"},
                deprecated={"labels": ("--findings",)},
            ),
            FunctionOptions(
                "medft.workflows.dicom_out:explain_dicom",
                skip=frozenset({"index", "explain_out", "checkpoint", "predictor"}),
                optional=frozenset({"dicom_out"}),
                help={
                    "dicom_out": "also write DICOM results (SR + overlay captures, research "
                    "use only) for DICOM inputs into this folder; see docs/pacs.md"
                },
            ),
        ),
        _show_explain,
        quiet=True,
    ),
    Command(
        "predict",
        "score new images (no labels needed): predictions.csv, skipped_files.csv, run.json",
        "medft predict --checkpoint best.ckpt --input scans/ --out preds",
        (
            FunctionOptions(
                "medft.workflows.predict:predict",
                skip=frozenset({"argv"}),
                rename={"inputs": "input", "checkpoints": "checkpoint", "num_workers": "workers"},
                deprecated={"workers": ("--num-workers",)},
            ),
            FunctionOptions(
                "medft.workflows.dicom_out:predict_dicom",
                skip=frozenset({"run"}),
                optional=frozenset({"dicom_out"}),
                help={
                    "dicom_out": "also write a DICOM SR per DICOM input (research use only) "
                    "into this folder; see docs/pacs.md"
                },
            ),
        ),
        _show_predict,
        description="Score a manifest, a folder or a file with one checkpoint, an ensemble "
        "(--checkpoint repeated) or a cross-validation study's fold models (--study).",
    ),
    Command(
        "export",
        "export a checkpoint to ONNX or TorchScript (calibrated probabilities out)",
        "medft export --checkpoint best.ckpt --format onnx --out exported",
        (FunctionOptions("medft.workflows.export:export"),),
        _show_export,
        description="The exported graph takes the cached-form batch (N, 1, S, S) uint8/uint16 "
        "and returns calibrated probabilities; a JSON sidecar says how to make its input.",
    ),
    Command(
        "send",
        "store DICOM results (SR, captures) in a PACS: DICOMweb or DIMSE",
        "medft send results/dicom --to dicom://ORTHANC@pacs.local:4242",
        (
            FunctionOptions(
                "medft.results.send:send_results",
                positional=("folder",),
                rename={"calling_aet": "aet", "report_path": "report"},
                help={"report_path": "JSON report to write (default: FOLDER/send_report.json)"},
            ),
        ),
        _show_send,
    ),
    Command(
        "lr-find",
        "learning-rate range test for the head-only and the unfrozen phase",
        "medft lr-find --config configs/medmnist.yaml --out lr -- --data.manifest m.csv",
        (
            FunctionOptions(
                "medft.lr_find:find_learning_rates",
                skip=frozenset({"overrides", "say"}),
            ),
        ),
        _show_lr_find,
        description="Lightning's LR finder on a fit config: prints suggested rates and saves "
        "plots.",
        trailing="after `--`: LightningCLI overrides (--data.manifest m.csv)",
        arguments="medft.cli.commands:add_old_lr_find_options",
    ),
    Command(
        "weights pull",
        "download timm's ImageNet weights into the Hugging Face cache (to carry offline)",
        "medft weights pull densenet121 resnet50",
        (FunctionOptions("medft.model.backbones:pull_weights", positional=("names",)),),
        _show_weights,
    ),
    Command(
        "demo",
        "review predictions and saliency maps in a browser (Gradio)",
        "medft demo --checkpoint best.ckpt",
        (),
        _show_demo,
        arguments="medft.demo.settings:add_demo_arguments",
    ),
    Command(
        "bench",
        "ratio benchmarks of medft against plain PyTorch",
        "medft bench --out bench --quick",
        (FunctionOptions("medft.bench:run_benchmarks", skip=frozenset({"registry", "echo"})),),
        _show_bench,
        arguments="medft.cli.commands:add_old_bench_options",
    ),
    Command(
        "bench scale",
        "data-pipeline epoch time and peak RSS at growing sizes (tens of minutes)",
        "medft bench scale --out scale --sizes 1000 4000",
        (FunctionOptions("medft.bench:run_scale_benchmark", skip=frozenset({"echo"})),),
        _show_bench,
    ),
)
"""Every command, in the order ``medft --help`` lists them."""

GROUPS: Mapping[str, str] = {
    "data": "inspect datasets: check, audit, import",
    "data import": "turn a public dataset's files into a manifest CSV",
    "weights": "pretrained weights: `weights pull NAME...` fills the local cache",
}
"""Words that only gather commands (``medft data`` lists its subcommands)."""

BY_NAME: Mapping[str, Command] = {command.name: command for command in COMMANDS}

"""The ``medft`` command: a thin shell over library functions.

Every subcommand parses its arguments, calls one function of the package and
prints the result. Errors medft raises on purpose (:class:`MedftError`) are
printed as one clear message without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from medft.errors import ConfigError, MedftError

LIGHTNING_COMMANDS = ("fit", "validate", "test")
"""Subcommands LightningCLI runs. ``predict`` is medft's own (it writes its predictions)."""

Handler = Callable[[argparse.Namespace], int]


def _cmd_synth(args: argparse.Namespace) -> int:
    from medft.data.synth import synthesize

    result = synthesize(
        args.out,
        args.n_patients,
        images_per_patient=args.images_per_patient,
        size=args.size,
        seed=args.seed,
        prevalence=args.prevalence,
        shortcut=args.shortcut,
        shortcut_strength=args.shortcut_strength,
        workers=args.workers,
        patient_info=args.patient_info,
    )
    print(
        f"wrote {result.n_images} images of {args.n_patients} patients to {result.root} "
        f"in {result.seconds:.1f} s\nlabels: {result.labels_csv}"
    )
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from medft.data.check import check_manifest

    report = check_manifest(args.manifest, workers=args.workers)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return 0 if report.ok else 1


def _cmd_data_audit(args: argparse.Namespace) -> int:
    from medft._io import check_output_dir
    from medft.data.audit import audit_manifest

    if args.out is not None:
        check_output_dir(args.out)  # before the audit, not after it
    report = audit_manifest(
        args.manifest,
        labels=args.labels or None,
        threshold=args.threshold,
        folds=args.folds,
        seed=args.seed,
        workers=args.workers,
        max_images=args.max_images,
        probes=not args.no_probes,
        quick=args.quick,
        exclude_columns=args.exclude,
    )
    written = report.write(args.out) if args.out is not None else {}
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    if written and not args.json:
        print(f"\nwrote {written['json']} and {written['html']}")
    return 0  # findings are information, not failure


def _cmd_data_import(args: argparse.Namespace) -> int:
    from medft.data.importers import import_dataset

    option_names = ("frontal_only", "blank_negative", "rule", "val_fraction", "seed", "missing",
                    "images_out", "label_names", "patient_map")  # fmt: skip
    given = {name: getattr(args, name) for name in option_names}
    options = {
        name: value for name, value in given.items() if value is not None and value is not False
    }
    print(import_dataset(args.format, args.root, args.out, **options).format())
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from medft.quickstart import run_quickstart

    run_quickstart(args.out, epochs=args.epochs, n_patients=args.n_patients, seed=args.seed)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medft.eval.evaluate import evaluate, format_summary

    metrics = evaluate(
        args.checkpoint,
        args.manifest,
        args.out,
        n_boot=args.n_boot,
        seed=args.seed,
        by=args.by,
        aggregate=args.aggregate,
        how=args.how,
        calibrate=args.calibrate,
        include_patient_id=args.include_patient_id,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        on_bad_file=args.on_bad_file,
    )
    print(format_summary(metrics, args.out))
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from medft.eval import cv
    from medft.workflows.cv import run as run_study

    command, rest = (args.words[0], args.words[1:]) if args.words else ("", [])
    if command == "aggregate" and len(rest) == 1:
        print(cv.format_summary(cv.aggregate(rest[0], n_boot=args.n_boot, seed=args.seed)))
    elif command == "compare" and len(rest) == 2:
        result = cv.compare(
            rest[0], rest[1], n_boot=args.n_boot or 1000, seed=args.seed or 0, out=args.out
        )
        print(cv.format_comparison(result))
    elif command in ("aggregate", "compare"):
        raise ConfigError("usage: medft cv aggregate DIR | medft cv compare DIR_A DIR_B")
    else:
        if args.config is None or args.out is None:
            raise ConfigError("medft cv needs --config X.yaml and --out DIR (see medft cv -h)")
        run_study(
            args.config,
            args.folds,
            args.out,
            repeats=args.repeats,
            fold=args.fold,
            repeat=args.repeat,
            resume=args.resume,
            seed=args.seed or 0,
            overrides=args.words,
            by=args.by,
            n_boot=args.n_boot or 1000,
        )
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from medft.lr_find import PHASES, find_learning_rates, format_results

    phases = PHASES if args.phase == "both" else (args.phase,)
    overrides = list(args.overrides)
    if overrides[:1] == ["--"]:
        overrides = overrides[1:]
    results = find_learning_rates(
        args.config,
        args.out,
        phases=phases,
        overrides=overrides,
        min_lr=args.min_lr,
        max_lr=args.max_lr,
        steps=args.steps,
        head_epochs=args.head_epochs,
    )
    print(format_results(results, args.out))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medft.demo import run_demo, settings_from_args

    return run_demo(settings_from_args(args))


def _cmd_bench(args: argparse.Namespace) -> int:
    from medft.bench import run_benchmarks, run_scale_benchmark

    if args.scale:
        run_scale_benchmark(args.out, sizes=args.scale_sizes, keep=args.keep)
        return 0
    run_benchmarks(args.out, quick=args.quick, only=args.only, threads=args.threads)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from medft._io import check_output_dir
    from medft.explain.batch import explain_inputs, format_summary

    check_output_dir(args.out)  # before any model is loaded
    index = explain_inputs(
        args.checkpoint,
        args.input,
        args.out,
        method=args.method,
        findings=args.findings,
        norm=args.norm,
        alpha=args.alpha,
        target_layer=args.layer,
        check=args.check,
        check_max=args.check_max,
    )
    print(format_summary(index, args.out))
    if args.dicom_out is not None:
        from medft.workflows.dicom_out import explain_dicom, format_dicom_summary

        results = explain_dicom(index, args.out, args.dicom_out, args.checkpoint)
        print(format_dicom_summary(results, args.dicom_out))
    return 0 if (index["status"] == "ok").any() else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from medft.workflows.predict import format_summary, predict

    run = predict(
        args.input,
        args.out,
        checkpoints=args.checkpoint or (),
        study=args.study,
        tta=args.tta,
        tta_flip=args.tta_flip,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        on_bad_file=args.on_bad_file,
        include_patient_id=args.include_patient_id,
        device=args.device,
        quiet=args.quiet or None,
        argv=args.argv,
    )
    print(format_summary(run))
    if args.dicom_out is not None:
        from medft.workflows.dicom_out import format_dicom_summary, predict_dicom

        print(format_dicom_summary(predict_dicom(run, args.dicom_out), args.dicom_out))
    return 0 if len(run.predictions.table) else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from medft.workflows.export import export

    result = export(
        args.checkpoint,
        args.out,
        format=args.format,
        input_dtype=args.input_dtype,
        check=not args.no_check,
    )
    print(result.describe())
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from medft.model.backbones import hub_cache_dir, pull_weights

    pulled = pull_weights(args.names, cache_dir=args.cache_dir)
    for name, path in pulled.items():
        print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    cache = Path(args.cache_dir) if args.cache_dir else hub_cache_dir()
    print(
        f"\nTo use them on a machine without internet, copy {cache} there (same path, or set "
        "HF_HUB_CACHE to the copy); medft then loads them from the cache, offline."
    )
    return 0


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar or progress lines (results and errors still print)."""
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar or progress lines on stderr"
    )


def _cmd_send(args: argparse.Namespace) -> int:
    from medft.results.send import send_results

    report_path = args.report or Path(args.folder) / "send_report.json"
    report = send_results(
        args.folder,
        args.to,
        calling_aet=args.aet,
        retries=args.retries,
        timeout=args.timeout,
        report_path=report_path,
    )
    print(f"{report.format()}\nreport: {report_path}")
    return 0 if report.ok else 1


class _VersionAction(argparse.Action):
    """``--version``: the stack, computed only when asked (it imports torch for CUDA)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, nargs=0, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from medft.provenance import version_text

        print(version_text())
        parser.exit()


RUN_JSON_COMMANDS = ("synth", "data audit", "evaluate", "explain", "cv", "quickstart", "bench")
"""Commands that write run.json into their --out folder (fit writes its own; see lightning_cli)."""


def _record_run(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Write run.json (command line, resolved options, versions) into the command's folder."""
    name = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    out = getattr(args, "out", None)
    if name not in RUN_JSON_COMMANDS or out is None or not Path(out).is_dir():
        return
    if name == "cv" and args.words[:1] in (["aggregate"], ["compare"]):
        return  # they read a finished study; compare's --out is a JSON file
    from medft.provenance import write_run_json

    settings = {k: v for k, v in vars(args).items() if k != "handler"}
    write_run_json(out, settings=settings, argv=["medft", *argv])


def _lists_subcommands(group: argparse.ArgumentParser) -> None:
    """A command group given no subcommand (``medft data``) prints its own help, exit 2."""

    def usage(_: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return 2

    group.set_defaults(handler=usage)  # a subcommand's own handler replaces it


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every non-Lightning subcommand (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="medft",
        description="Fine-tune ImageNet-pretrained models on DICOM X-rays. "
        "`medft fit|validate|test|predict --help` shows the training options.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print medft's version and its stack (python, torch, timm, lightning, monai, "
        "pydicom, CUDA when present) and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "synth",
        help="write a synthetic chest X-ray DICOM dataset",
        epilog="Example: medft synth --out synth --n-patients 200",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n-patients", required=True, type=int)
    p.add_argument("--images-per-patient", type=int, default=1)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prevalence", type=float, default=0.5, help="fraction of abnormal images")
    p.add_argument(
        "--shortcut",
        choices=["manufacturer", "size", "photometric", "marker"],
        default=None,
        help="plant a spurious feature that correlates with the label (for audits)",
    )
    p.add_argument("--shortcut-strength", type=float, default=0.9)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--patient-info",
        action="store_true",
        help="also write fake names, birth dates and accession numbers (for leak tests)",
    )
    _add_quiet(p)
    p.set_defaults(handler=_cmd_synth)

    group = sub.add_parser("data", help="inspect datasets: check, audit, import")
    _lists_subcommands(group)
    data = group.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = data.add_parser(
        "check",
        help="read every file of a manifest and summarise",
        epilog="Example: medft data check --manifest synth/labels.csv",
    )
    p.add_argument("--manifest", required=True, help="manifest CSV or CLASS/** folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--workers", type=int, default=None)
    _add_quiet(p)
    p.set_defaults(handler=_cmd_data_check)
    p = data.add_parser(
        "audit",
        help="shortcut audit: can metadata or borders predict labels?",
        epilog="Example: medft data audit --manifest synth/labels.csv --out audit",
    )
    p.add_argument("--manifest", required=True, help="manifest CSV or CLASS/** folder")
    p.add_argument("--out", type=Path, default=None, help="write audit.json and audit.html here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--threshold", type=float, default=0.70, help="AUROC that raises a finding")
    p.add_argument("--labels", nargs="+", default=None, help="labels to audit (default: all)")
    p.add_argument("--no-probes", action="store_true", help="skip the thumbnail/border probes")
    p.add_argument("--quick", action="store_true", help="headers of <= 500 images, seconds")
    p.add_argument("--max-images", type=int, default=None, help="audit a subset of patients")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", action="append", default=[], metavar="COLUMN",
                   help="manifest column never used as a feature; repeatable")  # fmt: skip
    p.add_argument("--workers", type=int, default=None)
    _add_quiet(p)
    p.set_defaults(handler=_cmd_data_audit)
    p = data.add_parser(
        "import",
        help="turn a public dataset's files into a manifest CSV",
        epilog="Example: medft data import nih --root /data/nih --out nih.csv",
    )
    p.add_argument("format", choices=["nih", "chexpert", "mimic", "rsna", "siim", "vindr",
                                      "medmnist", "folder"])  # fmt: skip
    p.add_argument("--root", required=True, type=Path, help="the dataset's folder (or .npz)")
    p.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    p.add_argument("--frontal-only", action="store_true", help="chexpert, mimic: PA/AP only")
    p.add_argument("--blank-negative", action="store_true",
                   help="chexpert, mimic: 'not mentioned' is 0, not unknown")  # fmt: skip
    p.add_argument("--rule", choices=["majority", "any"], default=None, help="vindr readers")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="nih, chexpert: share of train moved to val, by patient")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="seed of that val carve")
    p.add_argument("--missing", choices=["error", "skip"], default=None,
                   help="listed images not on disk: fail (default) or leave out")  # fmt: skip
    p.add_argument("--images-out", type=Path, default=None, help="medmnist: PNG folder")
    p.add_argument("--label-names", nargs="+", default=None, help="medmnist: class names")
    p.add_argument("--patient-map", type=Path, default=None, help="folder: path,patient_id CSV")
    _add_quiet(p)
    p.set_defaults(handler=_cmd_data_import)

    p = sub.add_parser(
        "quickstart",
        help="synthesise data, fine-tune and test on it, offline (a few minutes)",
        epilog="Example: medft quickstart --out medft-quickstart",
    )
    p.add_argument("--out", type=Path, default=Path("medft-quickstart"))
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--n-patients", type=int, default=None, help="override the dataset size")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_quickstart)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a manifest: predictions, metrics with CIs, report.html",
        epilog="Example: medft evaluate --checkpoint best.ckpt --manifest test.csv --out eval",
    )
    p.add_argument("--checkpoint", required=True, help="a medft checkpoint (.ckpt)")
    p.add_argument("--manifest", required=True, help="manifest CSV or CLASS/** folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n-boot", type=int, default=1000, help="patient bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="subgroup column (manifest column or DICOM metadata such as view_position, "
        "manufacturer, patient_sex, age_band); repeatable",
    )
    p.add_argument(
        "--aggregate", choices=["image", "patient", "study"], default="image",
        help="unit of analysis (study needs a study_id column)",
    )  # fmt: skip
    p.add_argument("--how", choices=["max", "mean"], default="max", help="aggregation")
    p.add_argument(
        "--calibrate", action="store_true", help="apply the checkpoint's stored temperature"
    )
    p.add_argument(
        "--include-patient-id",
        action="store_true",
        help="write raw patient IDs to predictions.csv (default: salted keys only)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--on-bad-file", choices=["skip", "fail"], default="skip")
    _add_quiet(p)
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser(
        "cv",
        help="K-fold cross-validation study; also `cv aggregate DIR`, `cv compare DIR_A DIR_B`",
        usage="medft cv --config X.yaml --folds K --out DIR [--repeats R] [--fold I] "
        "[--resume] [--seed S] [--by COL] [-- LIGHTNING_OVERRIDES ...]\n"
        "       medft cv aggregate DIR [--n-boot N] [--seed S]\n"
        "       medft cv compare DIR_A DIR_B [--out FILE.json] [--n-boot N] [--seed S]",
        epilog="Example: medft cv --config configs/quickstart.yaml --folds 5 --out study",
    )
    p.add_argument("--config", help="a `medft fit` YAML config")
    p.add_argument("--folds", type=int, default=5, help="K (default 5)")
    p.add_argument("--out", help="study folder (compare: a JSON file to write)")
    p.add_argument("--repeats", type=int, default=1, help="repeated K-fold")
    p.add_argument("--fold", type=int, default=None, help="run only fold I (one job per fold)")
    p.add_argument("--repeat", type=int, default=None, help="with --fold: only this repeat")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument("--seed", type=int, default=None, help="fold assignment / bootstrap seed")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (1000)")
    p.add_argument("--by", action="append", default=[], metavar="COLUMN", help="subgroup column")
    p.add_argument(
        "words",
        nargs="*",
        metavar="...",
        help="`aggregate DIR`, `compare DIR_A DIR_B`, or after `--` LightningCLI overrides "
        "for every fold (e.g. -- --trainer.max_epochs 3)",
    )
    _add_quiet(p)
    p.set_defaults(handler=_cmd_cv)

    p = sub.add_parser(
        "explain",
        help="saliency maps of a checkpoint for a file or folder: overlays, raw maps, index.csv",
        epilog="Example: medft explain --checkpoint best.ckpt --input scans/ --out maps --check",
    )
    p.add_argument("--checkpoint", required=True, help="a medft checkpoint (.ckpt)")
    p.add_argument("--input", required=True, help="an image file or a folder (recursive)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--method", choices=["gradcam", "gradcam++", "hirescam", "occlusion"], default="gradcam"
    )
    p.add_argument("--findings", nargs="+", default=None, help="default: every finding")
    p.add_argument(
        "--norm", choices=["probability", "percentile"], default="probability",
        help="display normalisation shared by the findings of an image",
    )  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.4, help="overlay opacity at full colour")
    p.add_argument("--layer", default="auto", help="CAM layer: auto, or a module name")
    p.add_argument(
        "--check", action="store_true",
        help="also run the randomisation check and deletion/insertion scores (checks.json)",
    )  # fmt: skip
    p.add_argument("--check-max", type=int, default=20, help="images used by --check")
    p.add_argument("--dicom-out", type=Path, default=None, metavar="DIR",
                   help="also write DICOM results (SR + overlay captures, research use only) "
                   "for DICOM inputs; see docs/pacs.md")  # fmt: skip
    _add_quiet(p)
    p.set_defaults(handler=_cmd_explain)

    p = sub.add_parser(
        "predict",
        help="score new images (no labels needed): predictions.csv, skipped_files.csv, run.json",
        description="Score a manifest, a folder or a file with one checkpoint, an ensemble "
        "(--checkpoint repeated) or a cross-validation study's fold models (--study).",
        epilog="Example: medft predict --checkpoint best.ckpt --input scans/ --out preds",
    )
    p.add_argument("--checkpoint", action="append", help="a checkpoint (repeatable)")
    p.add_argument("--study", type=Path, default=None, help="a `medft cv` folder: its fold models")
    p.add_argument("--input", required=True, type=Path, help="manifest CSV, folder or image file")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--tta", action="store_true", help="average over small shifts and zooms")
    p.add_argument("--tta-flip", action="store_true", help="with --tta: add a left-right flip")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--num-workers", type=int, default=0, help="processes decoding images")
    p.add_argument("--on-bad-file", choices=("skip", "fail"), default="skip",
                   help="skip unreadable files (listed, with reasons) or stop")  # fmt: skip
    p.add_argument("--include-patient-id", action="store_true",
                   help="write raw patient IDs (default: salted keys only)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--dicom-out", type=Path, default=None, metavar="DIR",
                   help="also write a DICOM SR per DICOM input (research use only); see "
                   "docs/pacs.md")  # fmt: skip
    _add_quiet(p)
    p.set_defaults(handler=_cmd_predict)

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript (calibrated probabilities out)",
        description="The exported graph takes the cached-form batch (N, 1, S, S) uint8/uint16 "
        "and returns calibrated probabilities; a JSON sidecar says how to make its input.",
        epilog="Example: medft export --checkpoint best.ckpt --format onnx --out model.onnx",
    )
    p.add_argument("--checkpoint", required=True, help="the checkpoint to export")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", required=True, type=Path, help="output model file")
    p.add_argument("--input-dtype", choices=("auto", "uint8", "uint16"), default="auto",
                   help="input pixel type (auto: the checkpoint's cache dtype)")  # fmt: skip
    p.add_argument("--no-check", action="store_true",
                   help="skip running the export against medft (needs onnxruntime)")  # fmt: skip
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser(
        "send",
        help="store DICOM results (SR, captures) in a PACS: DICOMweb or DIMSE",
        epilog="Example: medft send results/dicom --to dicom://ORTHANC@pacs.local:4242",
    )
    p.add_argument("folder", help="folder of DICOM results (*.dcm, searched recursively)")
    p.add_argument(
        "--to", required=True,
        help="http(s)://host:port/dicom-web (STOW-RS) or dicom://AET@host:port (C-STORE)",
    )  # fmt: skip
    p.add_argument("--aet", default="MEDFT", help="our calling AE title (DIMSE)")
    p.add_argument("--retries", type=int, default=3, help="attempts per request")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per network operation")
    p.add_argument("--report", type=Path, default=None,
                   help="JSON report to write (default: FOLDER/send_report.json)")  # fmt: skip
    p.set_defaults(handler=_cmd_send)

    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test for the head-only and the unfrozen phase",
        description="Lightning's LR finder on a fit config: prints suggested rates and saves "
        "plots.",
        epilog="Example: medft lr-find --config configs/medmnist.yaml --out lr -- "
        "--data.manifest m.csv",
    )
    p.add_argument("--config", required=True, help="a `medft fit` YAML config")
    p.add_argument("--out", required=True, type=Path, help="folder for lr_find.json and plots")
    p.add_argument("--phase", choices=("head", "unfrozen", "both"), default="both")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--max-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per sweep")
    p.add_argument("--head-epochs", type=int, default=None,
                   help="unfrozen: head-only epochs first (default: unfreeze_epoch)")  # fmt: skip
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="after `--`: LightningCLI overrides (--data.manifest m.csv)")  # fmt: skip
    p.set_defaults(handler=_cmd_lr_find)

    group = sub.add_parser(
        "weights", help="pretrained weights: `weights pull NAME...` fills the local cache"
    )
    _lists_subcommands(group)
    weights = group.add_subparsers(dest="weights_command", metavar="WEIGHTS_COMMAND")
    p = weights.add_parser(
        "pull",
        help="download timm's ImageNet weights into the Hugging Face cache (to carry offline)",
        epilog="Example: medft weights pull densenet121 resnet50",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="timm model names, e.g. densenet121")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache folder (default: the hub cache, HF_HUB_CACHE)")  # fmt: skip
    p.set_defaults(handler=_cmd_weights)

    from medft.demo.settings import add_demo_arguments

    p = sub.add_parser(
        "demo",
        help="review predictions and saliency maps in a browser (Gradio)",
        epilog="Example: medft demo --checkpoint best.ckpt",
    )
    add_demo_arguments(p)
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser(
        "bench",
        help="ratio benchmarks of medft against plain PyTorch",
        epilog="Example: medft bench --out bench --quick",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for bench.json")
    p.add_argument("--quick", action="store_true", help="smoke run with tiny sizes (minutes)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--threads", type=int, help="torch threads (1 is steadier on a shared box)")
    p.add_argument(
        "--scale",
        action="store_true",
        help="instead: data-pipeline epoch time and peak RSS at growing sizes (tens of minutes)",
    )
    p.add_argument(
        "--scale-sizes",
        type=int,
        nargs="+",
        default=[1000, 4000, 16000],
        metavar="N",
        help="numbers of synthetic images for --scale (default: 1000 4000 16000)",
    )
    p.add_argument("--keep", action="store_true", help="--scale: keep the synthetic data")
    p.set_defaults(handler=_cmd_bench)

    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"{name} with a YAML config (LightningCLI; see --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medft`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from medft import signals

    if argv[:1] in (["fit"], ["cv"]):
        signals.install()  # SIGTERM/SIGINT: last.ckpt saved, exit 143/130, never DONE
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from medft.lightning_cli import run_lightning

            run_lightning(argv[0], argv[1:])
            signals.raise_if_received("after the last batch")
            return 0
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "quiet", False):
            from medft.progress import set_quiet

            set_quiet(True)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:  # no command (help, exit 0) or an incomplete one (`medft data`)
            parser.print_help(sys.stderr if argv else sys.stdout)
            return 0 if not argv else 2
        args.argv = ["medft", *argv]  # the command line run.json records
        status = handler(args)
        _record_run(args, argv)
        return status
    except MedftError as exc:
        print(f"medft: error: {exc}", file=sys.stderr)
        return 2
    except signals.Interrupted as exc:
        print(f"medft: {exc}", file=sys.stderr)
        return exc.exit_status
    except SystemExit:
        signum = signals.received()  # Lightning exits 1 on a second Ctrl-C
        if signum is None:
            raise
        print(f"medft: {signals.Interrupted(signum)}", file=sys.stderr)
        return signals.exit_status(signum)
    except KeyboardInterrupt:
        print("medft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Inference: medft's prediction path against the plain model forward (issue 8, #5).

- ``inference/predict``: what ``predict_step`` does per batch — display-space grey
  images in, :meth:`XrayClassifier.forward` (normalise, grey to RGB, channels-last as
  configured) and probabilities out — against a plain timm forward of an already
  normalised 3-channel NCHW tensor under ``inference_mode``. Target >= 0.9.
- ``inference/predictor``: :class:`medft.inference.Predictor` from decoded display
  images (fit into the square, quantise to the cache dtype, normalise, forward,
  temperature, calls) against the plain forward over the same images. Target >= 0.9
  (issue 17: ``medft predict`` is no slower than the model).
- ``inference/channels_last``: the plain model in channels-last vs contiguous NCHW.
- ``inference/bf16_autocast``: the plain model under CPU bf16 autocast vs float32.

- ``inference/torch_compile`` (full run only): the channels-last model after
  ``torch.compile`` vs the same model eager; the one-off compile time is in the note.

The last three are information rows (no target): they show which option pays on this CPU.
The quick run skips ``torch.compile``: compiling even a tiny model takes tens of seconds.

    python -m medft.benchmarks.inference [--quick] [--out DIR]
"""

from __future__ import annotations

import time

import timm
import torch

from medft.bench import (
    BenchResult,
    Target,
    rate_result,
    standalone_main,
    time_interleaved,
)
from medft.inference import Predictor
from medft.model.checkpoint import LoadedClassifier
from medft.model.module import XrayClassifier

QUICK = {"backbone": "test_efficientnet", "size": 64, "batch": 8, "repeats": 5}
FULL = {"backbone": "tf_efficientnet_lite0", "size": 224, "batch": 16, "repeats": 5}


def run(quick: bool) -> list[BenchResult]:
    cfg = QUICK if quick else FULL
    name, size, batch, repeats = cfg["backbone"], cfg["size"], cfg["batch"], cfg["repeats"]
    module = XrayClassifier(backbone=name, pretrained=False).eval()
    plain = timm.create_model(name, pretrained=False, num_classes=1).eval()
    plain_cl = timm.create_model(name, pretrained=False, num_classes=1).eval()
    plain_cl = plain_cl.to(memory_format=torch.channels_last)
    grey = torch.rand(batch, 1, size, size)
    with torch.no_grad():
        normalised = module.normalize(grey).contiguous()  # plain NCHW, ready for the model
    normalised_cl = normalised.contiguous(memory_format=torch.channels_last)

    def medft_predict() -> object:
        with torch.inference_mode():
            return module.probabilities(module(grey).float())

    predictor = Predictor(
        [
            LoadedClassifier(
                model=module,
                labels=list(module.labels),
                task=module.task,
                image_size=size,
                fit_mode="pad",
                thresholds={label: 0.5 for label in module.labels},
                temperature=1.5,
                meta={"image_size": size, "fit_mode": "pad", "cache_dtype": "uint8"},
            )
        ]
    )
    decoded = [image[0].numpy() for image in grey]

    def medft_predictor() -> object:
        probs = predictor.predict_images(decoded)
        return predictor.call(probs)

    def plain_forward() -> object:
        with torch.inference_mode():
            return plain(normalised)

    def plain_channels_last() -> object:
        with torch.inference_mode():
            return plain_cl(normalised_cl)

    def plain_bf16() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return plain(normalised)

    ops = {
        "medft": medft_predict,
        "predictor": medft_predictor,
        "plain": plain_forward,
        "channels_last": plain_channels_last,
        "bf16": plain_bf16,
    }
    compile_seconds = None
    if not quick:
        compiled = torch.compile(plain_cl)
        started = time.perf_counter()
        with torch.inference_mode():
            compiled(normalised_cl)  # the first call compiles
        compile_seconds = time.perf_counter() - started

        def plain_compiled() -> object:
            with torch.inference_mode():
                return compiled(normalised_cl)

        ops["compiled"] = plain_compiled
    t = time_interleaved(ops, repeats=repeats)
    note = f"{name} {size}px batch {batch}"
    compiled_rows = []
    if compile_seconds is not None:
        compiled_rows.append(
            rate_result("inference/torch_compile", t["compiled"], t["channels_last"], items=batch,
                        note=note + f"; channels-last, compiled vs eager; compiling took "
                        f"{compile_seconds:.0f} s")
        )  # fmt: skip
    return [
        rate_result("inference/predict", t["medft"], t["plain"], items=batch,
                    target=Target(0.90), note=note + "; medft channels_last="
                    f"{module.hparams.channels_last}"),
        rate_result("inference/predictor", t["predictor"], t["plain"], items=batch,
                    target=Target(0.90), note=note + "; Predictor from decoded images "
                    "(fit, uint8 quantise, normalise, forward, temperature, calls)"),
        rate_result("inference/channels_last", t["channels_last"], t["plain"], items=batch,
                    note=note + "; plain model, NHWC vs NCHW"),
        rate_result("inference/bf16_autocast", t["bf16"], t["plain"], items=batch,
                    note=note + "; plain model, CPU bf16 autocast vs float32"),
        *compiled_rows,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())

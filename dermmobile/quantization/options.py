"""What `--quantize int8` may do to pass its gate (no heavy imports: the CLI reads the defaults for --help)."""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT_ROUNDINGS = ("gptq", "nearest")  # Int8Options.weight_rounding


@dataclass
class Int8Options:
    """How `--quantize int8` chooses what to quantize (dermmobile/quantization/fallback.py)."""

    fallback: bool = True  # keep the most sensitive layers in float until the tuning images pass
    # The last layer (the logits) stays float in every int8 file, fallback or not: int8 logits sit on a grid
    # (0.066 on the reference Lite0) where near-ties round to equal values and argmax breaks the tie by class
    # order. Gate flips that were such ties: TFLite 2 of 7 (default file) and 2 of 12 (plain), ONNX 4 of 8
    # (default), ExecuTorch 2 of 11 (plain); the layer is 0.01 % of Lite0's MACs (results/int8-fallback).
    float_logits: bool = True
    max_float_macs: float = 0.25  # cap on the share of MACs left in float
    tune_count: int = 192  # tuning images (chose layers); disjoint from calibration and gate
    # The tuning images must pass the gate, and the agreement forecast from their logit errors
    # (fallback.forecast_agreement) must reach the 98 % gate plus this margin: a file forecast right at
    # the gate is as likely to miss it as to pass.
    tune_margin: float = 0.01
    bias_correction: bool = True  # give back in each bias the mean shift of int8 weight rounding (bias_correction.py)
    # "gptq": each layer's weights rounded so its output on the calibration images moves least (gptq.py);
    # "nearest": each weight to its nearest grid point, as the toolchains do by themselves.
    weight_rounding: str = "gptq"
    observer: str = ""  # activation calibration method; "" = each target's measured default
    explain: bool = False  # write the per-layer sensitivity report even when plain int8 passes
    sensitivity_images: int = 32  # tuning images the per-layer simulation runs on (a ranking needs few)
    # real artifacts built by the search after the plain one: up to 4 for the ranking, 3 for runs from the input end
    max_attempts: int = 7

"""Reading a published CosyVoice 2 checkpoint folder (``CosyVoice2-0.5B`` layout).

The published ``cosyvoice2.yaml`` describes inference AND training: besides ``llm``,
``flow`` and ``hift`` it names the data pipeline (``cosyvoice.dataset.processor``:
pyarrow, pyworld), the GAN discriminators (matplotlib) and the tokenizer module
(openai-whisper, tiktoken). hyperpyyaml imports every ``!name:``/``!new:`` target while
loading, so the whole file only loads with all training dependencies installed. We
load the inference subset instead: the top-level blocks ``llm``, ``flow``, ``hift``,
``get_tokenizer``, ``allowed_special``, ``feat_extractor`` and every plain scalar
(sizes, rates, ``qwen_pretrain_path``), and point the tokenizer and the mel extractor
at the local equivalents in :mod:`.cosyvoice_frontend`. Everything else in the yaml
is training-only and never read by the package's inference code.

The flow encoder's ``output_size`` must be 512: the package's
``UpsampleConformerEncoder`` builds its pre-lookahead and upsampling layers with 512
channels whatever the yaml says, so another width builds, loads strictly, and fails
only at the first ``token2wav``. :func:`load_config` refuses it with that reason.

Weights load strictly. The package's ``CosyVoiceModel.load`` retries ``llm.pt`` with
``strict=False`` on missing keys (leaving them random, with only a log line): a broken
checkpoint would then speak noise, so we load each state dict ourselves with
``strict=True`` and report the first mismatch in one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from duplexvoice.worker.adapters.base import AdapterError

WEIGHTS = ("llm.pt", "flow.pt", "hift.pt")
FRONT_END = ("campplus.onnx", "speech_tokenizer_v2.onnx")
BLANKEN = "CosyVoice-BlankEN"
CONFIG_NAMES = ("cosyvoice2.yaml", "cosyvoice.yaml")

_NEEDED = ("llm", "flow", "hift", "get_tokenizer", "allowed_special", "feat_extractor")
_LOCAL = {
    "cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer": (
        "duplexvoice.worker.adapters.cosyvoice_frontend.get_qwen_tokenizer"
    ),
    "matcha.utils.audio.mel_spectrogram": (
        "duplexvoice.worker.adapters.cosyvoice_frontend.mel_spectrogram"
    ),
}
_TOP_KEY = re.compile(r"^([A-Za-z_][\w.]*)\s*:(.*)$")
# UpsampleConformerEncoder hard-codes this width (see the module docstring).
FLOW_ENCODER_WIDTH = 512


def config_file(folder: Path) -> Path:
    for name in CONFIG_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise AdapterError(f"{folder} has no {' or '.join(CONFIG_NAMES)}")


def missing_files(folder: Path) -> list[str]:
    """The files of the published layout that ``folder`` lacks (spk2info.pt is optional)."""
    missing = [n for n in (*WEIGHTS, *FRONT_END) if not (folder / n).is_file()]
    blank = folder / BLANKEN
    if not (blank / "config.json").is_file():
        missing.append(f"{BLANKEN}/config.json")
    if not any((blank / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        missing.append(f"{BLANKEN}/model.safetensors")
    if not (blank / "tokenizer.json").is_file() and not (
        (blank / "vocab.json").is_file() and (blank / "merges.txt").is_file()
    ):
        missing.append(f"{BLANKEN}/vocab.json+merges.txt (or tokenizer.json)")
    return missing


def inference_yaml(text: str) -> str:
    """The inference subset of a CosyVoice 2 yaml (see the module docstring)."""
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        match = _TOP_KEY.match(line)
        if match and not line.startswith((" ", "\t", "#")):
            blocks.append((match.group(1), [line]))
        elif blocks and not line.lstrip().startswith("#"):
            blocks[-1][1].append(line)
    kept: list[str] = []
    names = set()
    for key, lines in blocks:
        body = "".join(lines)
        scalar = len([ln for ln in lines if ln.strip()]) == 1 and "!" not in body
        if key in _NEEDED or scalar:
            kept.append(body if body.endswith("\n") else body + "\n")
            names.add(key)
    absent = [k for k in _NEEDED if k not in names]
    if absent:
        raise AdapterError(f"the yaml has no {', '.join(absent)} (not a CosyVoice 2 config?)")
    out = "".join(kept)
    for package_name, local in _LOCAL.items():
        out = out.replace(f"!name:{package_name}", f"!name:{local}")
    return out


def load_config(path: Path, blanken: Path) -> dict[str, Any]:
    """Build the modules the yaml describes (random weights), BlankEN as the Qwen2."""
    from hyperpyyaml import load_hyperpyyaml

    try:
        text = inference_yaml(path.read_text(encoding="utf-8"))
        configs: dict[str, Any] = load_hyperpyyaml(
            text, overrides={"qwen_pretrain_path": str(blanken)}, overrides_must_match=False
        )
    except AdapterError as exc:
        raise AdapterError(f"{path.name}: {exc}") from exc
    except Exception as exc:  # hyperpyyaml, transformers and torch raise many kinds
        raise AdapterError(f"{path.name}: cannot build the model: {_one_line(exc)}") from exc
    from cosyvoice.flow.flow import CausalMaskedDiffWithXvec
    from cosyvoice.hifigan.generator import HiFTGenerator
    from cosyvoice.llm.llm import Qwen2LM

    kinds = (("llm", Qwen2LM), ("flow", CausalMaskedDiffWithXvec), ("hift", HiFTGenerator))
    for key, kind in kinds:
        if not isinstance(configs.get(key), kind):
            found = type(configs.get(key)).__name__
            raise AdapterError(
                f"{path.name}: `{key}` is a {found}, CosyVoice 2 needs {kind.__name__}"
            )
    width = int(configs["flow"].encoder.output_size())
    if width != FLOW_ENCODER_WIDTH:
        raise AdapterError(
            f"{path.name}: the flow encoder's output_size is {width}, but the cosyvoice "
            f"package's UpsampleConformerEncoder hard-codes {FLOW_ENCODER_WIDTH} channels "
            f"(its pre-lookahead and upsampling layers): it must be {FLOW_ENCODER_WIDTH}"
        )
    return configs


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    # torch's load_state_dict puts the useful part on the second line
    head = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[1]}"
    return head[:400]


def load_weights(module: torch.nn.Module, path: Path, device: torch.device, hift: bool) -> None:
    """Load a state dict strictly; one-line error naming the file on any mismatch."""
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:
        raise AdapterError(f"{path.name}: cannot read it: {_one_line(exc)}") from exc
    if not isinstance(state, dict):
        raise AdapterError(f"{path.name}: not a state dict ({type(state).__name__})")
    if hift:  # the package accepts a HiFiGan training checkpoint too
        state = {k.replace("generator.", ""): v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AdapterError(
            f"{path.name} does not match the yaml: {_one_line(exc)}"
        ) from exc
    module.to(device).eval()

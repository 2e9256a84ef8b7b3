"""The supported Hugging Face families, by model_type. To add a family: write a module with its
config and weight maps (see gpt2.py for the smallest) and list its FAMILIES here."""

from __future__ import annotations

from lmscope.zoo.errors import UnsupportedModelError
from lmscope.zoo.hf import gpt2, llama, neox, opt
from lmscope.zoo.hf.common import Family, HFConfig, get

FAMILIES: dict[str, Family] = {
    family.model_type: family for module in (gpt2, opt, llama, neox) for family in module.FAMILIES
}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


def family_of(hf_config: HFConfig) -> Family:
    """The family of a config (object or config.json dict); a clear error naming the supported
    model types otherwise."""
    model_type = get(hf_config, "model_type")
    if model_type is None:
        raise UnsupportedModelError(
            "the Hugging Face config has no model_type; is it a model's config.json? "
            f"supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"unsupported Hugging Face model type {model_type!r}; "
            f"supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return FAMILIES[model_type]

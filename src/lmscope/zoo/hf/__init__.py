"""Hugging Face checkpoints -> the canonical lmscope Transformer.

Families (one module each; `families.py` lists them): GPT-2, OPT (pre-LN), LLaMA / Mistral /
Qwen2 and GPT-NeoX (Pythia). Each family has a config map and a weight map; a conversion is
right when the canonical model's logits match the Hugging Face model's.

Works with transformers 4.x (rope_theta / rope_scaling / rotary_pct attributes) and 5.x (one
`rope_parameters` dict; GPT-NeoX's `embed_out` renamed `lm_head`).
"""

from lmscope.zoo.hf.convert import config_from_hf, state_dict_from_hf
from lmscope.zoo.hf.export import to_hf_state_dict
from lmscope.zoo.hf.families import FAMILIES, SUPPORTED_FAMILIES, family_of
from lmscope.zoo.hf.load import from_hf, load_hf_directory

__all__ = [
    "FAMILIES",
    "SUPPORTED_FAMILIES",
    "config_from_hf",
    "family_of",
    "from_hf",
    "load_hf_directory",
    "state_dict_from_hf",
    "to_hf_state_dict",
]

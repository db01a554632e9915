"""A merged Llama-architecture model written as one GGUF file with the ``gguf`` package (llama.cpp's
own Python library), for llama.cpp, Ollama, LM Studio and transformers' GGUF loader.

It does what llama.cpp's ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM``, reduced to what
our bases need:

- tensors renamed by gguf's own tensor name map (``model.layers.3.self_attn.q_proj.weight`` ->
  ``blk.3.attn_q.weight``); ``output.weight`` only when the head is not tied to the embeddings
  (transformers' loader ties them exactly when it is absent);
- the rows of ``q_proj`` and ``k_proj`` permuted within each head from Hugging Face's rotate-half
  rope layout to llama.cpp's interleaved one; transformers' loader undoes exactly this permutation
  (``LlamaTensorProcessor._reverse_permute_weights``), so the file is what both expect;
- the hyperparameters under ``llama.*``; 1-D tensors (the norms) stay F32 as llama.cpp keeps them;
- the tokenizer copied from the packaged SmolLM2 GGUF: vocabulary, merges, token types, special ids
  and chat template exactly as llama.cpp already runs them.

Concessions, refused before anything is written rather than written wrong: only the packaged
SmolLM2 tokenizer (building GGUF tokenizer metadata from an arbitrary Hugging Face tokenizer means
matching llama.cpp's pre-tokeniser by hashing test strings, which its converter does and this file
does not); no quantised types (q4/q8 are llama.cpp's ``llama-quantize``'s job on the f16 file); no
rope scaling, attention/MLP biases or activations other than SiLU.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.errors import ConfigError

if TYPE_CHECKING:
    from gguf import GGUFWriter

# export dtype -> (GGML tensor type, llama.cpp file type), by name in the gguf package
GGUF_TYPES = {"fp32": ("F32", "ALL_F32"), "fp16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16")}
_TOKENIZER_PREFIX = "tokenizer."


def rope_parameters(config: Any) -> dict[str, Any]:
    """``rope_parameters`` (transformers 5) or ``rope_scaling`` + ``rope_theta`` (4.x), as one dict."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.pop("type", "default"))
    return params


def unsupported(config: Any, tokenizer_gguf: Path | None, base: str) -> list[str]:
    """Why the model of ``config`` on ``base`` cannot be written as GGUF here (empty: it can)."""
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        return [f"GGUF export writes Llama-architecture models (model_type 'llama', like SmolLM2); the base "
                f"{base!r} is {model_type!r}"]
    reasons = []
    rope = rope_parameters(config)
    if rope["rope_type"] != "default":
        reasons.append(f"rope scaling {rope['rope_type']!r} (transformers' GGUF loader reads no scaling for llama)")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            reasons.append(f"{flag}=True (the loader builds llama without biases)")
    if getattr(config, "hidden_act", "silu") != "silu":
        reasons.append(f"hidden_act {config.hidden_act!r} (llama in GGUF is SiLU)")
    if tokenizer_gguf is None:
        reasons.append(f"the tokenizer of {base!r}: ragtune writes GGUF tokenizer metadata only for the packaged "
                       "SmolLM2 base (copied from its own GGUF)")
    return reasons


def check_supported(config: Any, tokenizer_gguf: Path | None, base: str) -> None:
    reasons = unsupported(config, tokenizer_gguf, base)
    if reasons:
        raise ConfigError("cannot export as GGUF: " + "; ".join(reasons) +
                          ". Export it with --format safetensors, or convert that folder with llama.cpp's "
                          "convert_hf_to_gguf.py")


def permute_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of q/k projection rows (``n_head`` heads of this projection): each
    head's [first half; second half] rows become interleaved pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def tokenizer_fields(source: Path) -> list[tuple[str, Any, Any, Any]]:
    """The ``tokenizer.*`` key-values of the GGUF file ``source``: (key, value, type, element type)."""
    stat = source.stat()
    return _tokenizer_fields(str(source.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)  # GGUFReader parses every one of 49k tokens in Python: seconds per read
def _tokenizer_fields(path: str, size: int, mtime_ns: int) -> list[tuple[str, Any, Any, Any]]:
    from gguf import GGUFReader, GGUFValueType

    out = []
    for key, field in GGUFReader(path).fields.items():
        if key.startswith(_TOKENIZER_PREFIX):
            main = field.types[0]
            sub = field.types[-1] if main == GGUFValueType.ARRAY else None
            out.append((key, field.contents(), main, sub))
    return out


def _tensor(writer: GGUFWriter, name: str, array: np.ndarray, dtype: str) -> None:
    from gguf import GGMLQuantizationType, quantize

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or dtype == "fp32":  # norms stay F32, as llama.cpp keeps every 1-D tensor
        writer.add_tensor(name, array)
    elif dtype == "fp16":
        writer.add_tensor(name, array.astype(np.float16))
    else:  # bf16: numpy has no such dtype; gguf packs it as bytes and records the shape in elements
        writer.add_tensor(name, quantize(array, GGMLQuantizationType.BF16), raw_dtype=GGMLQuantizationType.BF16)


def write_gguf(model: Any, path: Path, *, dtype: str, tokenizer_gguf: Path | None, base: str,
               name: str, description: str) -> None:
    """Write the (merged, fp32) transformers Llama ``model`` to the GGUF file ``path`` in ``dtype``."""
    import gguf

    if dtype not in GGUF_TYPES:
        raise ConfigError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(GGUF_TYPES)}")
    config = model.config
    check_supported(config, tokenizer_gguf, base)
    assert tokenizer_gguf is not None  # check_supported refused otherwise
    tokenizer = tokenizer_fields(tokenizer_gguf)
    vocab = next((len(v) for k, v, *_ in tokenizer if k == "tokenizer.ggml.tokens"), None)
    if vocab != config.vocab_size:
        raise ConfigError(f"cannot export as GGUF: {tokenizer_gguf.name} has {vocab} tokens but the model's "
                          f"vocabulary is {config.vocab_size}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]

    writer = gguf.GGUFWriter(str(path), arch)
    try:
        # general.name is the base's: transformers' loader reads "mistral" in it as another architecture
        writer.add_type("model")
        writer.add_name(base)
        writer.add_finetune(name)
        writer.add_description(description)
        writer.add_file_type(int(gguf.LlamaFileType[GGUF_TYPES[dtype][1]]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)  # the loader reads it as head_dim
        writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(config.vocab_size)
        for key, value, vtype, sub in tokenizer:
            writer.add_key_value(key, value, vtype, sub_type=sub)

        for hf_name, weight in model.state_dict().items():
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # tied: no output.weight, which is how the loader knows
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ConfigError(f"cannot export as GGUF: no GGUF tensor name for {hf_name}")
            array = weight.detach().float().cpu().numpy()
            if hf_name.endswith("self_attn.q_proj.weight"):
                array = permute_rope(array, heads)
            elif hf_name.endswith("self_attn.k_proj.weight"):
                array = permute_rope(array, kv_heads)
            _tensor(writer, gguf_name, array, dtype)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()

"""Foreign models: ONNX graphs (published parameter counts, every tensor's shape), Keras files
made here, Hugging Face configs of BERT/T5/ViT against transformers, PyTorch modules by factory,
and bad inputs answered with one clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lmscope.document.errors import DocError, MissingExtraError
from lmscope.document.sources import collect_facts
from test_doc_support import (
    KERAS_LAYERS,
    KERAS_RNN_LAYERS,
    ONNX_PUBLISHED,
    keras_file,
    onnx_light_dir,
)

onnx = pytest.importorskip("onnx")


def test_onnx_parameter_counts_match_the_published_ones() -> None:
    for name, published in ONNX_PUBLISHED.items():
        facts = collect_facts(str(onnx_light_dir() / name))
        assert facts["overview"]["parameters"]["total"] == published, name
        assert sum(r["parameters"] for r in facts["layers"]["rows"]) == published, name


def test_onnx_every_tensor_shape_is_resolved() -> None:
    models = sorted(onnx_light_dir().glob("*.onnx"))
    assert len(models) >= 9
    for path in models:
        facts = collect_facts(str(path))
        inference = facts["architecture"]["shape_inference"]
        assert inference["resolved"] == inference["tensors"] > 0, path.name
        assert all(r["output_shape"] is not None for r in facts["layers"]["rows"]), path.name


def test_onnx_resnet50_macs_and_batchnorm_statistics() -> None:
    facts = collect_facts(str(onnx_light_dir() / "light_resnet50.onnx"))
    macs = sum(r["macs_per_position"] for r in facts["layers"]["rows"])
    assert 4.0e9 < macs < 4.2e9  # ResNet-50 is about 4.1 GMACs at 224x224
    # running mean and variance: 2 per channel of each of the 53 BatchNorm layers
    assert facts["overview"]["parameters"]["buffers"] == 53_120
    assert facts["architecture"]["op_types"]["Conv"] == 53


def test_onnx_graph_built_here_counts_and_macs(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(torch.zeros(8, 3, 3, 3).numpy(), "w")
    b = numpy_helper.from_array(torch.zeros(8).numpy(), "b")
    fc = numpy_helper.from_array(torch.zeros(8 * 30 * 30, 10).numpy(), "fc")
    unused = numpy_helper.from_array(torch.zeros(5).numpy(), "unused")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
         helper.make_node("Flatten", ["c"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w, b, fc, unused],
    )  # fmt: skip
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    facts = collect_facts(str(path))
    assert facts["overview"]["parameters"]["total"] == 8 * 27 + 8 + 7200 * 10  # unused not counted
    rows = {r["type"]: r for r in facts["layers"]["rows"]}
    assert rows["Conv"]["output_shape"] == [2, 8, 30, 30]
    assert rows["Conv"]["macs_per_position"] == 8 * 30 * 30 * 27  # per example (batch of 2)
    assert rows["MatMul"]["macs_per_position"] == 7200 * 10


def test_corrupt_onnx_and_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf model" * 3)
    with pytest.raises(DocError, match="not a readable ONNX model"):
        collect_facts(str(bad))
    vgg = onnx_light_dir() / "light_vgg19.onnx"
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match="pip install onnx"):
        collect_facts(str(vgg))


def test_keras_file_layers_and_compile_settings(tmp_path: Path) -> None:
    expected = keras_file(tmp_path / "cnn.keras")
    facts = collect_facts(str(tmp_path / "cnn.keras"))
    assert facts["model"]["kind"] == "keras"
    assert facts["overview"]["parameters"]["total"] == expected
    rows = facts["layers"]["rows"]
    assert [r["parameters"] for r in rows] == [n for layer, n in KERAS_LAYERS[1:]]
    assert rows[0]["output_shape"] == [None, 26, 26, 8] and rows[2]["output_shape"] == [None, 5408]
    assert facts["overview"]["parameters"]["non_trainable"] == 16  # BatchNorm's moving stats
    arch = facts["architecture"]
    assert arch["optimizer"] == "Adam" and arch["learning_rate"] == 0.001
    assert arch["loss"] == "sparse_categorical_crossentropy" and arch["metrics"] == ["accuracy"]


def test_keras_recurrent_model(tmp_path: Path) -> None:
    expected = keras_file(tmp_path / "rnn.keras", KERAS_RNN_LAYERS)
    facts = collect_facts(str(tmp_path / "rnn.keras"))
    assert facts["overview"]["parameters"]["total"] == expected
    rows = {r["type"]: r for r in facts["layers"]["rows"]}
    assert rows["LSTM"]["output_shape"] == [None, 20, 32] and rows["GRU"]["output_shape"] == [
        None,
        8,
    ]


def test_corrupt_keras_zip(tmp_path: Path) -> None:
    (tmp_path / "bad.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DocError, match=r"not a readable \.keras file"):
        collect_facts(str(tmp_path / "bad.keras"))


def test_hf_configs_of_other_families_match_transformers(tmp_path: Path) -> None:
    import transformers as tf

    cases = [
        (tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, vocab_size=101), [tf.BertModel, tf.BertForMaskedLM]),
        (tf.T5Config(d_model=32, d_ff=48, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=3,
                     vocab_size=99), [tf.T5Model, tf.T5ForConditionalGeneration]),
        (tf.T5Config(d_model=32, d_ff=48, d_kv=8, num_heads=4, num_layers=2, vocab_size=99,
                     feed_forward_proj="gated-gelu", tie_word_embeddings=False),
         [tf.T5ForConditionalGeneration]),
        (tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=40, image_size=32, patch_size=8),
         [tf.ViTModel, tf.ViTForImageClassification]),
    ]  # fmt: skip
    for config, classes in cases:
        for cls in classes:
            model = cls(config)
            model.config.architectures = [cls.__name__]
            directory = tmp_path / f"{cls.__name__}-{id(config)}"
            model.config.save_pretrained(directory)
            facts = collect_facts(str(directory / "config.json"))
            assert facts["overview"]["parameters"]["total"] == model.num_parameters(), cls.__name__
            assert facts["model"]["runnable"] is False


class SmallNet(nn.Module):
    """A CNN front end and an LSTM: the module tree documents both kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.lstm = nn.LSTM(4 * 6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))  # [b, 4, 6, 6]
        seq = h.permute(0, 2, 1, 3).flatten(2)  # [b, 6, 24]
        out, _ = self.lstm(seq)
        return self.head(out[:, -1])


def make_small_net() -> nn.Module:
    return SmallNet()


def test_torch_module_needs_opt_in_and_counts_exactly() -> None:
    spec = "test_doc_foreign:make_small_net"
    with pytest.raises(DocError, match="--allow-code"):
        collect_facts(spec)
    facts = collect_facts(spec, allow_code=True, input_shape=[2, 1, 8, 8])
    net = SmallNet()
    assert facts["overview"]["parameters"]["total"] == sum(p.numel() for p in net.parameters())
    rows = {r["path"]: r for r in facts["layers"]["rows"]}
    assert rows["conv"]["output_shape"] == [2, 4, 6, 6]
    assert rows["conv"]["macs_per_position"] == 4 * 6 * 6 * 9  # per example
    assert rows["lstm"]["parameters"] == 4 * (8 * 24 + 8 * 8 + 2 * 8)
    assert facts["architecture"]["imports_user_code"] is True
    with pytest.raises(DocError, match="no callable"):
        collect_facts("test_doc_foreign:nothing_here", allow_code=True)


def test_files_that_are_not_models(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(DocError, match="neither a model nor a known config"):
        collect_facts(str(tmp_path / "notes.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DocError, match="not a readable JSON config"):
        collect_facts(str(tmp_path / "broken.json"))

from slmflow import tags


def test_a_variant_model_is_named_by_its_variant_and_the_single_one_as_always():
    assert tags.onnx_model_name("") == "onnx-chat"
    assert tags.onnx_model_name("int4-b32") == "onnx-chat-int4-b32"
    assert [tags.flavor_of(name) for name in ("onnx-chat", "onnx-chat-fp32", "transformers-chat")] == [
        "onnx-chat",
        "onnx-chat",
        "transformers-chat",
    ]


def test_the_two_flavors_keep_their_pair_name_and_other_pairs_are_spelled_out():
    assert tags.versus("onnx-chat", "transformers-chat") == "onnx_vs_transformers"
    assert tags.versus("onnx-chat-int4-b16", "transformers-chat") == "onnx-chat-int4-b16_vs_transformers-chat"

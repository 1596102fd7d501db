#!/usr/bin/env python3
"""Builds the tiny stand-ins for Wonder3D's exported components (deterministic, onnx.helper).

They carry the real components' input/output names, ranks and dtypes (see models/README.md and
models/export_wonder3d.py) so the Rust pipeline runs end to end through real ONNX Runtime without
the 3.5 GB of weights. The weights are random but fixed (numpy seed), and the UNet is built so the
tests can see every input matter: the timestep, the CLIP embedding, the camera/domain
`class_labels`, a mean over the 6 views of each block (the multi-view attention's reach) and a
mean across the two halves of the batch (the cross-domain attention pairs item i of the first half
with item i of the second).

    target/pyenv/bin/python scripts/make_tiny_models.py testdata/models/tiny

writes the .onnx files and model.toml (with their sha256) into the directory. step.onnx, the
denoising step that keeps the latents on the device, is not a stand-in: it is the graph
models/step_graph.py builds for the real model too (same bytes at 256 px).
"""
import hashlib
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))
import step_graph  # noqa: E402  (models/step_graph.py: the same step.onnx the export writes)

OPSET = 18
RES = 256
LATENT = RES // 8
CLIP_RES = 224
EMBED = 768

rng = np.random.default_rng(20231123)


def weight(name, shape, scale, gen=None):
    gen = rng if gen is None else gen
    return numpy_helper.from_array((gen.standard_normal(shape) * scale).astype(np.float32), name)


def const(name, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def save(model, path):
    model.ir_version = 8
    model.producer_name = "m3dnode make_tiny_models.py"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def image_encoder(path):
    # pixel_values [B,3,224,224] -> 4x4 average pooling -> linear -> tanh -> image_embeds [B,768]
    nodes = [
        helper.make_node("AveragePool", ["pixel_values"], ["pooled"], kernel_shape=[56, 56], strides=[56, 56]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["proj"]),
        helper.make_node("Tanh", ["proj"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_image_encoder",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, CLIP_RES, CLIP_RES])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", EMBED])],
        [weight("w", (48, EMBED), 0.3)],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def vae_encoder(path):
    # sample [B,3,256,256] in [-1,1] -> 8x8 average pooling -> 1x1 conv -> latent_mean [B,4,32,32]
    nodes = [
        helper.make_node("AveragePool", ["sample"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Conv", ["pooled", "w", "b"], ["latent_mean"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_vae_encoder",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 3, RES, RES])],
        [helper.make_tensor_value_info("latent_mean", TensorProto.FLOAT, ["batch", 4, LATENT, LATENT])],
        [weight("w", (4, 3, 1, 1), 0.8), weight("b", (4,), 0.1)],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def unet(path, n):
    # sample [N,8,32,32], timestep int64 [1], encoder_hidden_states [N,1,768], class_labels [N,10]
    # -> out_sample [N,4,32,32] = 0.8 * noisy latents + 0.2 * tanh(mixture of everything)
    views = 6
    # One network at two static batch sizes, as the export does: the same weights in both.
    unet_rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("Slice", ["sample", "s0", "s4", "s_axis"], ["noisy"]),
        helper.make_node("Conv", ["sample", "w_in", "b_in"], ["h"]),
        # multi-view reach: the mean over each block of 6 consecutive items
        helper.make_node("Reshape", ["h", "shape_views"], ["h_v"]),
        helper.make_node("ReduceMean", ["h_v", "axis1"], ["h_vm"], keepdims=1),
        helper.make_node("Expand", ["h_vm", "shape_views"], ["h_vme"]),
        helper.make_node("Reshape", ["h_vme", "shape_out"], ["view_mix"]),
        # cross-domain reach: item i of the first half with item i of the second
        helper.make_node("Reshape", ["h", "shape_halves"], ["h_h"]),
        helper.make_node("ReduceMean", ["h_h", "axis0"], ["h_hm"], keepdims=1),
        helper.make_node("Expand", ["h_hm", "shape_halves"], ["h_hme"]),
        helper.make_node("Reshape", ["h_hme", "shape_out"], ["domain_mix"]),
        # timestep embedding: sin(t / 1000 * freq) per channel
        helper.make_node("Cast", ["timestep"], ["t_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["t_f", "t_freq"], ["t_s"]),
        helper.make_node("Sin", ["t_s"], ["t_sin"]),
        helper.make_node("Reshape", ["t_sin", "shape_bcast1"], ["temb"]),
        # CLIP conditioning
        helper.make_node("Reshape", ["encoder_hidden_states", "shape_flat_ehs"], ["ehs"]),
        helper.make_node("MatMul", ["ehs", "w_ehs"], ["c_e"]),
        helper.make_node("Reshape", ["c_e", "shape_bcastn"], ["cemb"]),
        # camera + domain
        helper.make_node("MatMul", ["class_labels", "w_cls"], ["c_l"]),
        helper.make_node("Reshape", ["c_l", "shape_bcastn"], ["lemb"]),
        helper.make_node("Mul", ["view_mix", "k_view"], ["vm_s"]),
        helper.make_node("Mul", ["domain_mix", "k_dom"], ["dm_s"]),
        helper.make_node("Sum", ["h", "vm_s", "dm_s", "temb", "cemb", "lemb"], ["mix"]),
        helper.make_node("Tanh", ["mix"], ["mix_t"]),
        helper.make_node("Mul", ["mix_t", "k_mix"], ["mix_s"]),
        helper.make_node("Mul", ["noisy", "k_noisy"], ["noisy_s"]),
        helper.make_node("Add", ["noisy_s", "mix_s"], ["out_sample"]),
    ]
    inits = [
        const("s0", [0], np.int64),
        const("s4", [4], np.int64),
        const("s_axis", [1], np.int64),
        weight("w_in", (4, 8, 1, 1), 0.5, unet_rng),
        weight("b_in", (4,), 0.1, unet_rng),
        const("shape_views", [n // views, views, 4, LATENT, LATENT], np.int64),
        const("shape_halves", [2, n // 2, 4, LATENT, LATENT], np.int64),
        const("shape_out", [n, 4, LATENT, LATENT], np.int64),
        const("axis0", [0], np.int64),
        const("axis1", [1], np.int64),
        const("t_freq", np.linspace(0.5, 3.0, 4) / 1000.0),
        const("shape_bcast1", [1, 4, 1, 1], np.int64),
        const("shape_flat_ehs", [n, EMBED], np.int64),
        weight("w_ehs", (EMBED, 4), 0.1, unet_rng),
        const("shape_bcastn", [n, 4, 1, 1], np.int64),
        weight("w_cls", (10, 4), 0.5, unet_rng),
        const("k_view", [0.5]),
        const("k_dom", [0.3]),
        const("k_mix", [0.2]),
        const("k_noisy", [0.8]),
    ]
    graph = helper.make_graph(
        nodes,
        f"tiny_unet_mv2d_b{n}",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, [n, 8, LATENT, LATENT]),
            helper.make_tensor_value_info("timestep", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [n, 1, EMBED]),
            helper.make_tensor_value_info("class_labels", TensorProto.FLOAT, [n, 10]),
        ],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, [n, 4, LATENT, LATENT])],
        inits,
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def vae_decoder(path):
    # latent_sample [B,4,32,32] -> 1x1 conv -> nearest x8 -> tanh-ish -> sample [B,3,256,256]
    nodes = [
        helper.make_node("Conv", ["latent_sample", "w", "b"], ["h"]),
        helper.make_node("Resize", ["h", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Tanh", ["up"], ["t"]),
        helper.make_node("Mul", ["t", "k"], ["sample"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_vae_decoder",
        [helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, ["batch", 4, LATENT, LATENT])],
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 3, RES, RES])],
        [
            weight("w", (3, 4, 1, 1), 0.3),
            weight("b", (3,), 0.2),
            const("scales", [1.0, 1.0, 8.0, 8.0]),
            const("k", [1.2]),
        ],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def vae_decoder_variant(path, rank3=False, half=False):
    """A VAE decoder whose input disagrees with the manifest (for the validation tests)."""
    if rank3:
        inp = helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, ["batch", 4, LATENT * LATENT])
        nodes = [helper.make_node("Reshape", ["latent_sample", "shape"], ["x"])]
    else:
        inp = helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT16, ["batch", 4, LATENT, LATENT])
        nodes = [helper.make_node("Cast", ["latent_sample"], ["x"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest"))
    nodes.append(helper.make_node("Slice", ["up", "s0", "s3", "s_axis"], ["sample"]))
    graph = helper.make_graph(
        nodes,
        "broken_vae_decoder",
        [inp],
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 3, RES, RES])],
        [
            const("shape", [-1, 4, LATENT, LATENT], np.int64),
            const("scales", [1.0, 1.0, 8.0, 8.0]),
            const("s0", [0], np.int64),
            const("s3", [3], np.int64),
            const("s_axis", [1], np.int64),
        ],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def io_toml(role, kind, name, dtype, shape):
    dims = ", ".join(str(d) for d in shape)
    return f'[[components.{role}.{kind}]]\nname = "{name}"\ndtype = "{dtype}"\nshape = [{dims}]\n'


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "testdata/models/tiny"
    os.makedirs(out, exist_ok=True)
    files = {
        "image_encoder": "image_encoder.onnx",
        "vae_encoder": "vae_encoder.onnx",
        "unet_b12": "unet_b12.onnx",
        "unet_b24": "unet_b24.onnx",
        "vae_decoder": "vae_decoder.onnx",
        "step": "step.onnx",
    }
    image_encoder(os.path.join(out, files["image_encoder"]))
    vae_encoder(os.path.join(out, files["vae_encoder"]))
    unet(os.path.join(out, files["unet_b12"]), 12)
    unet(os.path.join(out, files["unet_b24"]), 24)
    vae_decoder(os.path.join(out, files["vae_decoder"]))
    step_graph.save(os.path.join(out, files["step"]), LATENT)

    io = {
        "image_encoder": (
            [("pixel_values", "float32", [-1, 3, CLIP_RES, CLIP_RES])],
            [("image_embeds", "float32", [-1, EMBED])],
        ),
        "vae_encoder": (
            [("sample", "float32", [-1, 3, RES, RES])],
            [("latent_mean", "float32", [-1, 4, LATENT, LATENT])],
        ),
        "vae_decoder": (
            [("latent_sample", "float32", [-1, 4, LATENT, LATENT])],
            [("sample", "float32", [-1, 3, RES, RES])],
        ),
    }
    io["step"] = step_graph.io(LATENT)
    for n in (12, 24):
        io[f"unet_b{n}"] = (
            [
                ("sample", "float32", [n, 8, LATENT, LATENT]),
                ("timestep", "int64", [1]),
                ("encoder_hidden_states", "float32", [n, 1, EMBED]),
                ("class_labels", "float32", [n, 10]),
            ],
            [("out_sample", "float32", [n, 4, LATENT, LATENT])],
        )

    broken = os.path.join(out, "broken")
    os.makedirs(broken, exist_ok=True)
    vae_decoder_variant(os.path.join(broken, "vae_decoder_rank3.onnx"), rank3=True)
    vae_decoder_variant(os.path.join(broken, "vae_decoder_float16.onnx"), half=True)

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "manifest_head.toml")) as f:
        head = f.read()
    text = head.replace('name = "wonder3d-v1.0-joint-ortho-6views"', 'name = "tiny-test-model"')
    text = text.replace("steps = 50", "steps = 10")
    for role in ("image_encoder", "vae_encoder", "unet_b12", "unet_b24", "vae_decoder", "step"):
        path = os.path.join(out, files[role])
        text += f'\n[components.{role}]\nfile = "{files[role]}"\nsha256 = "{sha256(path)}"\n'
        ins, outs = io[role]
        for name, dtype, shape in ins:
            text += io_toml(role, "inputs", name, dtype, shape)
        for name, dtype, shape in outs:
            text += io_toml(role, "outputs", name, dtype, shape)
    with open(os.path.join(out, "model.toml"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

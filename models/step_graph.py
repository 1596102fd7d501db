#!/usr/bin/env python3
"""The denoising step as a small ONNX graph (`step.onnx`), so the latents stay on the device.

Built with onnx.helper, deterministically (no weights, no randomness): the same bytes for the
same latent size. Both models/export_wonder3d.py and scripts/make_tiny_models.py write it with
this module, and model.toml lists it as `[components.step]` with its sha256.

One step of m3dnode's mvdiffusion loop (src/recon/mvdiffusion/mod.rs, scheduler.rs), in f32 in
the same order of operations as the host code:

  inputs   noise_pred     [N,4,h,w]  the UNet's out_sample, N = 12 (no guidance) or 24
           latents        [12,4,h,w] x_t, normals then colours
           image_latents  [N,4,h,w]  the UNet's fixed image-latent channels, in batch order
           noise          [12,4,h,w] this step's Gaussian noise (eta > 0; zeros otherwise)
           coefficients   [6]        guidance g, sqrt(a_t), sqrt(1-a_t), sqrt(a_prev),
                                     sqrt(1-a_prev-s^2), s (DDIM eta = 1: s = sigma_t)
  outputs  next_latents   [12,4,h,w] x_{t-1}
           next_sample    [N,8,h,w]  the next UNet `sample`: x_{t-1} per batch item ++ image_latents

Batch layout (Wonder3D's reshape_to_cd_input): noise_pred reshaped to [2 domains, N/12 branches,
6 views, ...]; with guidance the branches are (uncond, cond), without it there is one branch and
uncond = cond, so `uncond + g*(cond - uncond)` is exactly the prediction. Then DDIM (epsilon
prediction, no clipping): x0 = (x - sqrt(1-a_t) eps) / sqrt(a_t),
x_{t-1} = sqrt(a_prev) x0 + sqrt(1-a_prev-s^2) eps + s z.

    python models/step_graph.py OUT.onnx [--latent 32]
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 8
INT64_MAX = np.iinfo(np.int64).max


def build(latent):
    """The step graph for latents of side `latent` (resolution / 8)."""
    L = latent

    def i64(name, values):
        return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)

    inits = [
        i64("shape_branches", [2, -1, 6, 4, L, L]),
        i64("shape_latents", [12, 4, L, L]),
        i64("shape_one_branch", [2, 1, 6, 4, L, L]),
        i64("first", [0]),
        i64("one", [1]),
        i64("last", [-1]),
        i64("end", [INT64_MAX]),
        i64("branch_axis", [1]),
    ]
    nodes = []
    for i, name in enumerate(["g", "sqrt_alpha_t", "sqrt_beta_t", "sqrt_alpha_prev", "direction", "std_dev"]):
        inits.append(numpy_helper.from_array(np.asarray(i, dtype=np.int64), f"index_{name}"))
        nodes.append(helper.make_node("Gather", ["coefficients", f"index_{name}"], [name], axis=0))
    nodes += [
        # guidance: uncond + g * (cond - uncond), per domain and view
        helper.make_node("Reshape", ["noise_pred", "shape_branches"], ["pred_b"]),
        helper.make_node("Slice", ["pred_b", "first", "one", "branch_axis"], ["uncond"]),
        helper.make_node("Slice", ["pred_b", "last", "end", "branch_axis"], ["cond"]),
        helper.make_node("Sub", ["cond", "uncond"], ["delta"]),
        helper.make_node("Mul", ["g", "delta"], ["g_delta"]),
        helper.make_node("Add", ["uncond", "g_delta"], ["guided"]),
        helper.make_node("Reshape", ["guided", "shape_latents"], ["eps"]),
        # DDIM step
        helper.make_node("Mul", ["sqrt_beta_t", "eps"], ["beta_eps"]),
        helper.make_node("Sub", ["latents", "beta_eps"], ["x_minus"]),
        helper.make_node("Div", ["x_minus", "sqrt_alpha_t"], ["x0"]),
        helper.make_node("Mul", ["sqrt_alpha_prev", "x0"], ["alpha_x0"]),
        helper.make_node("Mul", ["direction", "eps"], ["dir_eps"]),
        helper.make_node("Add", ["alpha_x0", "dir_eps"], ["prev"]),
        helper.make_node("Mul", ["std_dev", "noise"], ["std_noise"]),
        helper.make_node("Add", ["prev", "std_noise"], ["next_latents"]),
        # the next UNet sample: x_{t-1} for every branch, then the image latents
        helper.make_node("Reshape", ["next_latents", "shape_one_branch"], ["next_b"]),
        helper.make_node("Reshape", ["image_latents", "shape_branches"], ["image_b"]),
        helper.make_node("Shape", ["image_b"], ["shape_image_b"]),
        helper.make_node("Expand", ["next_b", "shape_image_b"], ["next_e"]),
        helper.make_node("Shape", ["image_latents"], ["shape_image"]),
        helper.make_node("Reshape", ["next_e", "shape_image"], ["next_n"]),
        helper.make_node("Concat", ["next_n", "image_latents"], ["next_sample"], axis=1),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "mvdiffusion_ddim_step",
        [
            helper.make_tensor_value_info("noise_pred", f, ["batch", 4, L, L]),
            helper.make_tensor_value_info("latents", f, [12, 4, L, L]),
            helper.make_tensor_value_info("image_latents", f, ["batch", 4, L, L]),
            helper.make_tensor_value_info("noise", f, [12, 4, L, L]),
            helper.make_tensor_value_info("coefficients", f, [6]),
        ],
        [
            helper.make_tensor_value_info("next_latents", f, [12, 4, L, L]),
            helper.make_tensor_value_info("next_sample", f, ["batch", 8, L, L]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.producer_name = "m3dnode step_graph.py"
    onnx.checker.check_model(model)
    return model


def io(latent):
    """The [components.step] inputs and outputs for model.toml: (name, dtype, shape)."""
    L = latent
    return (
        [
            ("noise_pred", "float32", [-1, 4, L, L]),
            ("latents", "float32", [12, 4, L, L]),
            ("image_latents", "float32", [-1, 4, L, L]),
            ("noise", "float32", [12, 4, L, L]),
            ("coefficients", "float32", [6]),
        ],
        [
            ("next_latents", "float32", [12, 4, L, L]),
            ("next_sample", "float32", [-1, 8, L, L]),
        ],
    )


def save(path, latent):
    onnx.save(build(latent), path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--latent", type=int, default=32)
    args = ap.parse_args()
    save(args.out, args.latent)


if __name__ == "__main__":
    main()

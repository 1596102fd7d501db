#!/usr/bin/env python3
"""Builds a model directory whose UNet has Wonder3D's architecture and tensor shapes, with random
but fixed weights (issue 18: "a generated model with Wonder3D's UNet shapes and a comparable
parameter count, so time per step means something without the weights").

    target/pyenv/bin/python scripts/make_wonder3d_shaped_model.py target/wonder3d-shaped
    # options: --batches 12,24 (default; which static-batch UNets to write), --seed N,
    # --reduced (tests: the same graph at channels 32,64,64,64 and 1 head, 19 MB, seconds)

onnx.helper + numpy only, deterministic (the same bytes for the same arguments), about a minute
and 3.6 GB of disk. Never commit the output: write it under target/.

The UNet is Wonder3D's UNetMV2DConditionModel as configs/mvdiffusion-joint-ortho-6views.yaml
builds it from lambdalabs/sd-image-variations-diffusers (the SD 1.x UNet with a 768-wide CLIP
image embedding): 8 input channels (noisy latents ++ image latents) and 4 output channels at
32x32 latents, block_out_channels [320, 640, 1280, 1280], 2 layers per block, 8 attention
heads, GroupNorm(32)/SiLU ResNet blocks with the time embedding added, three
CrossAttnDownBlockMV2D + DownBlock2D, UNetMidBlockMV2DCrossAttn, UpBlock2D + three
CrossAttnUpBlockMV2D; the sinusoidal timestep embedding (320 -> 1280 -> 1280) plus the class
embedding (`projection`: the 10-dim camera/domain label -> 1280 -> 1280). Each transformer block
(BasicMVTransformerBlock) has Wonder3D's multi-view self-attention (every view's queries attend
to the keys and values of all six views of its block of the batch), the cross-domain attention
of cd_attention_mid (item i of the first half of the batch, the normals, attends jointly with
item i of the second half, the colours, and vice versa), the cross-attention to the CLIP
embedding and the GEGLU feed-forward. Operators are those torch.onnx.export writes at opset 17
(GroupNorm as Reshape + InstanceNormalization + Reshape + Mul + Add, attention as MatMul +
Softmax + MatMul, GELU through Erf), so ONNX Runtime sees the graph the real export would give
it, minus the weights' values.

Weights: std 1/sqrt(fan_in) normal (norm scales around 1), so activations stay O(1) and the
output is finite; they are written once to `unet_weights.bin` as ONNX external data that both
unet_b12.onnx and unet_b24.onnx point at (one 3.6 GB file for both). model.toml's sha256 of a
UNet covers its .onnx file (graph, shapes, and the external-data table: file name, offset and
length of every weight), not the data file; a truncated or missing data file fails at session
creation. The data file's sha256 is printed and written to model.toml as a comment.

The other components (CLIP image encoder, VAE encoder and decoder) are the tiny stand-ins of
scripts/make_tiny_models.py, and step.onnx is models/step_graph.py's real step graph: a time per
case extrapolated from this directory counts the encoders and the decoder at tiny cost (they run
once per case, the UNet once per step).

Prints the UNet's parameter count (summed over the initializers written) next to the real
model's, computed analytically from the configuration (`real_parameter_count`; the same formula
gives 859,520,964 for the plain SD 1.x UNet, the known figure, which the script asserts:
CompVis/stable-diffusion's v1 loader logs "DiffusionWrapper has 859.52 M params."), and
checks that the graph's count equals that formula at the sizes it built.
"""
import argparse
import hashlib
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tiny_models as tiny  # noqa: E402  (the tiny encoders/decoder, the manifest helpers)

OPSET = 17  # models/export_wonder3d.py's default
LATENT = 32
EMBED = 768
DATA_FILE = "unet_weights.bin"
# Weights smaller than this (element count) stay inside the .onnx files: norms and biases.
EXTERNAL_MIN = 4096
ALIGN = 4096  # offsets of external weights (page size, so ONNX Runtime can map them)

# Wonder3D's UNet (unet_mv2d_condition.py from_pretrained_2d over sd-image-variations' config).
CONFIG = {
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_heads": 8,
    "cross_attention_dim": EMBED,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "class_embed_input_dim": 10,
    "num_views": 6,
    "cd_attention_mid": True,
}
REAL_CONFIG = dict(CONFIG)


def real_parameter_count(cfg, wonder3d=True):
    """Parameters of the real UNet, from its configuration (diffusers' layer sizes).

    With wonder3d=False: the plain SD 1.x UNet2DConditionModel (4 input channels, no class
    embedding, no cross-domain attention), whose known count is 859,520,964.
    """
    ch = cfg["block_out_channels"]
    x = cfg["cross_attention_dim"]
    temb = ch[0] * 4

    def linear(i, o, bias=True):
        return i * o + (o if bias else 0)

    def conv(i, o, k):
        return i * o * k * k + o

    def norm(c):
        return 2 * c

    def resnet(i, o):
        n = norm(i) + conv(i, o, 3) + linear(temb, o) + norm(o) + conv(o, o, 3)
        return n + (conv(i, o, 1) if i != o else 0)

    def attention(c, kv):
        return linear(c, c, False) + 2 * linear(kv, c, False) + linear(c, c)

    def transformer(c):
        block = norm(c) + attention(c, c) + norm(c) + attention(c, x) + norm(c)
        block += linear(c, 8 * c) + linear(4 * c, c)  # GEGLU feed-forward
        if wonder3d and cfg["cd_attention_mid"]:
            block += norm(c) + attention(c, c)  # norm_joint_mid + attn_joint_mid
        return norm(c) + conv(c, c, 1) + block + conv(c, c, 1)

    n = conv(cfg["in_channels"] if wonder3d else 4, ch[0], 3)
    n += linear(ch[0], temb) + linear(temb, temb)  # time_embedding
    if wonder3d:
        n += linear(cfg["class_embed_input_dim"], temb) + linear(temb, temb)  # class_embedding
    prev = ch[0]
    for i, c in enumerate(ch):
        for j in range(cfg["layers_per_block"]):
            n += resnet(prev if j == 0 else c, c)
            if i < len(ch) - 1:
                n += transformer(c)
        if i < len(ch) - 1:
            n += conv(c, c, 3)  # Downsample2D
        prev = c
    n += 2 * resnet(ch[-1], ch[-1]) + transformer(ch[-1])  # mid block
    rev = list(reversed(ch))
    prev_out = rev[0]
    for i, out in enumerate(rev):
        inp = rev[min(i + 1, len(ch) - 1)]
        for j in range(cfg["layers_per_block"] + 1):
            skip = inp if j == cfg["layers_per_block"] else out
            n += resnet((prev_out if j == 0 else out) + skip, out)
            if i > 0:
                n += transformer(out)
        if i < len(ch) - 1:
            n += conv(out, out, 3)  # Upsample2D's conv
        prev_out = out
    n += norm(ch[0]) + conv(ch[0], cfg["out_channels"], 3)
    return n


class Weights:
    """The UNet's weights: generated once, in a fixed order, and written to the data file.

    Both static-batch graphs ask for the same names in the same order; the second gets the
    offsets the first wrote. Small tensors stay inline in the graph.
    """

    def __init__(self, path, seed):
        self.path = path
        self.file = open(path, "wb")
        self.rng = np.random.default_rng(seed)
        self.table = {}  # name -> ("inline", array) | ("external", offset, length, shape)
        self.count = 0
        self.sha = hashlib.sha256()
        self.offset = 0

    def get(self, name, shape, std, mean=0.0):
        """The TensorProto for weight `name` (generated and written on first use)."""
        if name not in self.table:
            a = self.rng.standard_normal(shape, dtype=np.float32)
            a *= np.float32(std)
            if mean:
                a += np.float32(mean)
            self.count += a.size
            if a.size < EXTERNAL_MIN:
                self.table[name] = ("inline", a)
            else:
                pad = -self.offset % ALIGN
                if pad:
                    self._write(b"\0" * pad)
                data = a.tobytes()
                self.table[name] = ("external", self.offset, len(data), shape)
                self._write(data)
        entry = self.table[name]
        if entry[0] == "inline":
            return numpy_helper.from_array(entry[1], name)
        _, offset, length, shape = entry
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key = key
            e.value = value
        return t

    def _write(self, data):
        self.file.write(data)
        self.sha.update(data)
        self.offset += len(data)

    def close(self):
        self.file.close()


class Unet:
    """One static-batch graph of the UNet (n = 12: no guidance, 24: guidance)."""

    def __init__(self, n, weights):
        self.n = n
        self.w = weights
        self.nodes = []
        self.inits = []
        self.consts = {}
        self.names = set()
        self.seq = 0

    # ---- graph plumbing ---------------------------------------------------------------------
    def tmp(self, hint):
        self.seq += 1
        return f"{hint}_{self.seq}"

    def node(self, op, inputs, hint, **attrs):
        out = self.tmp(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(self, values, dtype=np.int64):
        key = (tuple(np.asarray(values).ravel().tolist()), np.dtype(dtype).name, np.asarray(values).shape)
        if key not in self.consts:
            name = f"const_{len(self.consts)}"
            self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
            self.consts[key] = name
        return self.consts[key]

    def scalar(self, value):
        return self.const(np.float32(value), np.float32)

    def param(self, name, shape, std, mean=0.0):
        if name not in self.names:
            self.names.add(name)
            self.inits.append(self.w.get(name, shape, std, mean))
        return name

    def reshape(self, x, shape):
        return self.node("Reshape", [x, self.const(shape)], "reshape")

    def transpose(self, x, perm):
        return self.node("Transpose", [x], "transpose", perm=perm)

    # ---- layers (torch.onnx.export's operators at opset 17) ---------------------------------
    def silu(self, x):
        return self.node("Mul", [x, self.node("Sigmoid", [x], "sigmoid")], "silu")

    def linear(self, x, name, i, o, bias=True):
        y = self.node("MatMul", [x, self.param(f"{name}.weight", [i, o], 1.0 / np.sqrt(i))], "matmul")
        if bias:
            y = self.node("Add", [y, self.param(f"{name}.bias", [o], 0.02)], "add")
        return y

    def conv(self, x, name, i, o, k, stride=1):
        p = (k - 1) // 2
        return self.node(
            "Conv",
            [
                x,
                self.param(f"{name}.weight", [o, i, k, k], 1.0 / np.sqrt(i * k * k)),
                self.param(f"{name}.bias", [o], 0.02),
            ],
            "conv",
            pads=[p, p, p, p],
            strides=[stride, stride],
        )

    def group_norm(self, x, name, c, hw, eps):
        g = CONFIG["norm_num_groups"]
        y = self.reshape(x, [self.n, g, -1])
        y = self.node(
            "InstanceNormalization",
            [y, self.const(np.ones(g), np.float32), self.const(np.zeros(g), np.float32)],
            "instnorm",
            epsilon=eps,
        )
        y = self.reshape(y, [self.n, c, hw, hw])
        y = self.node("Mul", [y, self.param(f"{name}.weight", [c, 1, 1], 0.1, 1.0)], "gn_scale")
        return self.node("Add", [y, self.param(f"{name}.bias", [c, 1, 1], 0.1)], "gn_shift")

    def layer_norm(self, x, name, c):
        return self.node(
            "LayerNormalization",
            [x, self.param(f"{name}.weight", [c], 0.1, 1.0), self.param(f"{name}.bias", [c], 0.1)],
            "layernorm",
            axis=-1,
            epsilon=1e-5,
        )

    def heads(self, x, seq, c, keys=False):
        """[B, seq, c] -> [B, heads, seq, d] (or [B, heads, d, seq] for keys)."""
        h = CONFIG["attention_heads"]
        y = self.reshape(x, [-1, seq, h, c // h])
        return self.transpose(y, [0, 2, 3, 1] if keys else [0, 2, 1, 3])

    def attend(self, q, k, v, c, tokens, kv_tokens):
        """Scaled dot-product attention, materialised as the export writes it."""
        d = c // CONFIG["attention_heads"]
        scores = self.node("MatMul", [self.heads(q, tokens, c), self.heads(k, kv_tokens, c, keys=True)], "scores")
        scores = self.node("Mul", [scores, self.scalar(1.0 / np.sqrt(d))], "scaled")
        probs = self.node("Softmax", [scores], "softmax", axis=-1)
        y = self.node("MatMul", [probs, self.heads(v, kv_tokens, c)], "attended")
        return self.reshape(self.transpose(y, [0, 2, 1, 3]), [self.n, tokens, c])

    def attention(self, x, name, c, tokens, kind, context=None):
        """kind: "multiview" (attn1), "joint" (attn_joint_mid) or "cross" (attn2)."""
        n, views = self.n, CONFIG["num_views"]
        q = self.linear(x, f"{name}.to_q", c, c, bias=False)
        src, width = (context, CONFIG["cross_attention_dim"]) if kind == "cross" else (x, c)
        k = self.linear(src, f"{name}.to_k", width, c, bias=False)
        v = self.linear(src, f"{name}.to_v", width, c, bias=False)
        if kind == "multiview":
            # keys/values of the 6 views of each block, repeated for each of its views:
            # "(b t) d c -> b (t d) c" then repeat_interleave(t) in MVAttnProcessor
            kv_tokens = views * tokens

            def gather(t):
                t = self.reshape(t, [n // views, 1, kv_tokens, c])
                t = self.node("Expand", [t, self.const([n // views, views, kv_tokens, c])], "mv_expand")
                return self.reshape(t, [n, kv_tokens, c])

        elif kind == "joint":
            # item i of each half with item i of the other: chunk(2), cat(dim=1), cat([.]*2)
            kv_tokens = 2 * tokens

            def gather(t):
                t = self.transpose(self.reshape(t, [2, n // 2, tokens, c]), [1, 0, 2, 3])
                t = self.reshape(t, [1, n // 2, kv_tokens, c])
                t = self.node("Expand", [t, self.const([2, n // 2, kv_tokens, c])], "cd_expand")
                return self.reshape(t, [n, kv_tokens, c])

        else:
            kv_tokens = 1

            def gather(t):
                return t

        y = self.attend(q, gather(k), gather(v), c, tokens, kv_tokens)
        return self.linear(y, f"{name}.to_out.0", c, c)

    def feed_forward(self, x, name, c):
        h = self.linear(x, f"{name}.net.0.proj", c, 8 * c)
        a, gate = self.tmp("geglu_a"), self.tmp("geglu_gate")
        self.nodes.append(helper.make_node("Split", [h, self.const([4 * c, 4 * c])], [a, gate], axis=-1))
        # exact GELU as exported: 0.5 * g * (1 + erf(g / sqrt(2)))
        e = self.node("Div", [gate, self.scalar(np.sqrt(2.0))], "div")
        e = self.node("Add", [self.node("Erf", [e], "erf"), self.scalar(1.0)], "add")
        g = self.node("Mul", [self.node("Mul", [gate, e], "mul"), self.scalar(0.5)], "gelu")
        return self.linear(self.node("Mul", [a, g], "geglu"), f"{name}.net.2", 4 * c, c)

    def transformer(self, x, name, c, hw, context):
        """TransformerMV2DModel: GroupNorm, proj_in, one BasicMVTransformerBlock, proj_out."""
        tokens = hw * hw
        h = self.group_norm(x, f"{name}.norm", c, hw, 1e-6)
        h = self.conv(h, f"{name}.proj_in", c, c, 1)
        h = self.reshape(self.transpose(h, [0, 2, 3, 1]), [self.n, tokens, c])
        b = f"{name}.transformer_blocks.0"

        def attend(h, norm, attn, kind):
            y = self.attention(self.layer_norm(h, f"{b}.{norm}", c), f"{b}.{attn}", c, tokens, kind, context)
            return self.node("Add", [y, h], "res")

        h = attend(h, "norm1", "attn1", "multiview")
        if CONFIG["cd_attention_mid"]:
            h = attend(h, "norm_joint_mid", "attn_joint_mid", "joint")
        h = attend(h, "norm2", "attn2", "cross")
        h = self.node("Add", [self.feed_forward(self.layer_norm(h, f"{b}.norm3", c), f"{b}.ff", c), h], "res")
        h = self.transpose(self.reshape(h, [self.n, hw, hw, c]), [0, 3, 1, 2])
        h = self.conv(h, f"{name}.proj_out", c, c, 1)
        return self.node("Add", [h, x], "res")

    def resnet(self, x, name, i, o, hw, temb_act):
        eps = CONFIG["norm_eps"]
        h = self.conv(self.silu(self.group_norm(x, f"{name}.norm1", i, hw, eps)), f"{name}.conv1", i, o, 3)
        t = self.linear(temb_act, f"{name}.time_emb_proj", 4 * CONFIG["block_out_channels"][0], o)
        h = self.node("Add", [h, self.reshape(t, [self.n, o, 1, 1])], "temb")
        h = self.conv(self.silu(self.group_norm(h, f"{name}.norm2", o, hw, eps)), f"{name}.conv2", o, o, 3)
        if i != o:
            x = self.conv(x, f"{name}.conv_shortcut", i, o, 1)
        return self.node("Add", [x, h], "res")

    def build(self):
        n, ch = self.n, CONFIG["block_out_channels"]
        temb_dim = 4 * ch[0]
        half = ch[0] // 2
        # 1. time (Timesteps(320, flip_sin_to_cos=True, freq_shift=0)) + class embeddings
        t = self.node("Cast", ["timestep"], "t", to=TensorProto.FLOAT)
        t = self.node("Expand", [t, self.const([n])], "t_batch")
        t = self.node("Unsqueeze", [t, self.const([1])], "t_col")
        freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(np.float32)[None, :]
        arg = self.node("Mul", [t, self.const(freqs, np.float32)], "t_arg")
        t_emb = self.node("Concat", [self.node("Cos", [arg], "cos"), self.node("Sin", [arg], "sin")], "t_proj", axis=-1)

        def embedding(x, name, i):  # TimestepEmbedding: linear_1, SiLU, linear_2
            h = self.silu(self.linear(x, f"{name}.linear_1", i, temb_dim))
            return self.linear(h, f"{name}.linear_2", temb_dim, temb_dim)

        emb = embedding(t_emb, "time_embedding", ch[0])
        cls = embedding("class_labels", "class_embedding", CONFIG["class_embed_input_dim"])
        emb = self.node("Add", [emb, cls], "emb")
        temb_act = self.silu(emb)  # every ResnetBlock2D applies SiLU to temb first
        context = "encoder_hidden_states"

        # 2. conv_in, 3. down
        hw = LATENT
        h = self.conv("sample", "conv_in", CONFIG["in_channels"], ch[0], 3)
        skips = [(h, ch[0])]
        prev = ch[0]
        for i, c in enumerate(ch):
            last = i == len(ch) - 1
            for j in range(CONFIG["layers_per_block"]):
                h = self.resnet(h, f"down_blocks.{i}.resnets.{j}", prev if j == 0 else c, c, hw, temb_act)
                if not last:
                    h = self.transformer(h, f"down_blocks.{i}.attentions.{j}", c, hw, context)
                skips.append((h, c))
            if not last:
                h = self.conv(h, f"down_blocks.{i}.downsamplers.0.conv", c, c, 3, stride=2)
                hw //= 2
                skips.append((h, c))
            prev = c

        # 4. mid
        h = self.resnet(h, "mid_block.resnets.0", ch[-1], ch[-1], hw, temb_act)
        h = self.transformer(h, "mid_block.attentions.0", ch[-1], hw, context)
        h = self.resnet(h, "mid_block.resnets.1", ch[-1], ch[-1], hw, temb_act)

        # 5. up
        rev = list(reversed(ch))
        prev_out = rev[0]
        for i, out in enumerate(rev):
            for j in range(CONFIG["layers_per_block"] + 1):
                skip, skip_c = skips.pop()
                h = self.node("Concat", [h, skip], "cat", axis=1)
                c_in = (prev_out if j == 0 else out) + skip_c
                h = self.resnet(h, f"up_blocks.{i}.resnets.{j}", c_in, out, hw, temb_act)
                if i > 0:
                    h = self.transformer(h, f"up_blocks.{i}.attentions.{j}", out, hw, context)
            if i < len(ch) - 1:
                scales = self.const([1.0, 1.0, 2.0, 2.0], np.float32)
                h = self.node("Resize", [h, "", scales], "up", mode="nearest")
                h = self.conv(h, f"up_blocks.{i}.upsamplers.0.conv", out, out, 3)
                hw *= 2
            prev_out = out
        assert not skips and hw == LATENT

        # 6. out
        h = self.silu(self.group_norm(h, "conv_norm_out", ch[0], hw, CONFIG["norm_eps"]))
        h = self.conv(h, "conv_out", ch[0], CONFIG["out_channels"], 3)
        self.nodes.append(helper.make_node("Identity", [h], ["out_sample"]))

        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        graph = helper.make_graph(
            self.nodes,
            f"wonder3d_shaped_unet_b{n}",
            [
                helper.make_tensor_value_info("sample", f32, [n, CONFIG["in_channels"], LATENT, LATENT]),
                helper.make_tensor_value_info("timestep", i64, [1]),
                helper.make_tensor_value_info("encoder_hidden_states", f32, [n, 1, EMBED]),
                helper.make_tensor_value_info("class_labels", f32, [n, CONFIG["class_embed_input_dim"]]),
            ],
            [helper.make_tensor_value_info("out_sample", f32, [n, CONFIG["out_channels"], LATENT, LATENT])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        model.producer_name = "m3dnode make_wonder3d_shaped_model.py"
        return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="model directory to write (under target/)")
    ap.add_argument("--batches", default="12,24", help="static UNet batches to write: 12, 24 or 12,24")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument(
        "--reduced",
        action="store_true",
        help="for tests: the same graph with channels 32,64,64,64 and 1 attention head (5 M "
        "parameters, 19 MB, seconds to run)",
    )
    args = ap.parse_args()
    reduced = args.reduced
    if reduced:
        CONFIG["block_out_channels"] = [32, 64, 64, 64]
        CONFIG["attention_heads"] = 1
    try:
        batches = sorted({int(b) for b in args.batches.split(",")})
    except ValueError:
        ap.error(f"--batches: expected 12, 24 or 12,24, not {args.batches!r}")
    if not batches or any(b not in (12, 24) for b in batches):
        ap.error(f"--batches: expected 12, 24 or 12,24, not {args.batches!r}")

    real_sd = real_parameter_count(REAL_CONFIG, wonder3d=False)
    assert real_sd == 859_520_964, f"SD 1.x UNet count {real_sd}: the formula drifted"
    real = real_parameter_count(REAL_CONFIG)
    # the formula at the configuration built: equal to the graph's count when the graph has
    # exactly the real layer sizes (checked at any width)
    formula = real_parameter_count(CONFIG)

    start = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    weights = Weights(os.path.join(args.out, DATA_FILE), args.seed)
    for n in batches:
        model = Unet(n, weights).build()
        path = os.path.join(args.out, f"unet_b{n}.onnx")
        onnx.save(model, path)  # external tensors stay references; the graph file is small
        onnx.checker.check_model(path)
    weights.close()
    data_sha = weights.sha.hexdigest()
    gen_s = time.monotonic() - start

    files = {
        "image_encoder": "image_encoder.onnx",
        "vae_encoder": "vae_encoder.onnx",
        "vae_decoder": "vae_decoder.onnx",
        "step": "step.onnx",
    }
    tiny.image_encoder(os.path.join(args.out, files["image_encoder"]))
    tiny.vae_encoder(os.path.join(args.out, files["vae_encoder"]))
    tiny.vae_decoder(os.path.join(args.out, files["vae_decoder"]))
    tiny.step_graph.save(os.path.join(args.out, files["step"]), LATENT)
    io = {
        "image_encoder": (
            [("pixel_values", "float32", [-1, 3, tiny.CLIP_RES, tiny.CLIP_RES])],
            [("image_embeds", "float32", [-1, EMBED])],
        ),
        "vae_encoder": (
            [("sample", "float32", [-1, 3, tiny.RES, tiny.RES])],
            [("latent_mean", "float32", [-1, 4, LATENT, LATENT])],
        ),
        "vae_decoder": (
            [("latent_sample", "float32", [-1, 4, LATENT, LATENT])],
            [("sample", "float32", [-1, 3, tiny.RES, tiny.RES])],
        ),
        "step": tiny.step_graph.io(LATENT),
    }
    for n in batches:
        files[f"unet_b{n}"] = f"unet_b{n}.onnx"
        io[f"unet_b{n}"] = (
            [
                ("sample", "float32", [n, 8, LATENT, LATENT]),
                ("timestep", "int64", [1]),
                ("encoder_hidden_states", "float32", [n, 1, EMBED]),
                ("class_labels", "float32", [n, 10]),
            ],
            [("out_sample", "float32", [n, 4, LATENT, LATENT])],
        )

    with open(os.path.join(HERE, "..", "models", "manifest_head.toml")) as f:
        head = f.read()
    name = "wonder3d-shaped-reduced-test" if reduced else "wonder3d-shaped-random-weights"
    text = head.replace('name = "wonder3d-v1.0-joint-ortho-6views"', f'name = "{name}"')
    text += (
        f"\n# Generated by scripts/make_wonder3d_shaped_model.py (--seed {args.seed}): Wonder3D's UNet\n"
        f"# shapes with random weights ({weights.count:,} parameters), tiny encoders and decoder.\n"
        f"# The UNets' weights are external data in {DATA_FILE}, which the sha256 below do not\n"
        f"# cover (they cover the .onnx graphs); its sha256, for reference only: {data_sha}\n"
    )
    for role in ("image_encoder", "vae_encoder", *[f"unet_b{n}" for n in batches], "vae_decoder", "step"):
        path = os.path.join(args.out, files[role])
        text += f'\n[components.{role}]\nfile = "{files[role]}"\nsha256 = "{tiny.sha256(path)}"\n'
        ins, outs = io[role]
        for name, dtype, shape in ins:
            text += tiny.io_toml(role, "inputs", name, dtype, shape)
        for name, dtype, shape in outs:
            text += tiny.io_toml(role, "outputs", name, dtype, shape)
    with open(os.path.join(args.out, "model.toml"), "w") as f:
        f.write(text)

    ratio = weights.count / real
    print(f"unet parameters: {weights.count}")
    print(f"formula parameters: {formula} (at channels {','.join(map(str, CONFIG['block_out_channels']))})")
    print(f"real parameters: {real} (Wonder3D UNetMV2DConditionModel, from its configuration; SD 1.x UNet {real_sd})")
    print(f"ratio: {ratio:.4f}")
    print(f"batches: {','.join(str(n) for n in batches)}")
    print(f"weights: {DATA_FILE} {weights.offset} bytes, sha256 {data_sha}")
    print(f"generated in {gen_s:.1f} s: {args.out}")
    if weights.count != formula:
        sys.exit(f"the graph has {weights.count} parameters, the formula {formula}: they disagree")
    if reduced:
        print("reduced (--reduced): a test model, not comparable with the real one")
    elif abs(ratio - 1.0) > 0.10:
        sys.exit(f"parameter count {weights.count} is not within 10% of the real model's {real}")


if __name__ == "__main__":
    main()

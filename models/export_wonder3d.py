#!/usr/bin/env python3
"""Exports Wonder3D (flamehaze1115/wonder3d-v1.0) to the ONNX files m3dnode's mvdiffusion
pipeline runs, and writes model.toml with their sha256.

NOT RUN IN THIS PROJECT: it needs the Wonder3D weights (~3.5 GB from Hugging Face), PyTorch,
diffusers 0.19, transformers and the Wonder3D source tree, none of which the build machines
have. Nothing in the Rust code depends on it having been run: the Rust side checks every file
against model.toml (names, dtypes, ranks, shapes, sha256) when it loads, and the tests use the
tiny models of scripts/make_tiny_models.py, which have the same interface.

    # in a checkout of https://github.com/xxlong0/Wonder3D with its requirements installed
    python /path/to/m3dnode/models/export_wonder3d.py --out models/wonder3d-v1.0 [--fp16]

--fp16 (for CUDA hosts) stores weights in float16 but keeps float32 inputs and outputs, so the
manifest and the Rust code are the same for both.

Interface (the pipeline binds by these names; see src/recon/mvdiffusion/manifest.rs, Role):
  image_encoder.onnx  pixel_values [B,3,224,224] f32 -> image_embeds [B,768] f32
                      (CLIPVisionModelWithProjection.image_embeds)
  vae_encoder.onnx    sample [B,3,256,256] f32 in [-1,1] -> latent_mean [B,4,32,32] f32
                      (AutoencoderKL.encode(x).latent_dist.mode(), unscaled)
  unet_b12.onnx       sample [12,8,32,32], timestep [1] int64, encoder_hidden_states [12,1,768],
  unet_b24.onnx       class_labels [12,10] -> out_sample [12,4,32,32]  (and the same with 24)
                      UNetMV2DConditionModel; static batch because the multi-view and
                      cross-domain attention reshape across the batch
  vae_decoder.onnx    latent_sample [B,4,32,32] f32 -> sample [B,3,256,256] f32
  step.onnx           the denoising step (guidance + DDIM) that keeps the latents on the device;
                      no weights, built by models/step_graph.py (the same file the tiny models
                      have): noise_pred [N,4,32,32], latents [12,4,32,32], image_latents
                      [N,4,32,32], noise [12,4,32,32], coefficients [6] -> next_latents
                      [12,4,32,32], next_sample [N,8,32,32]
"""
import argparse
import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HEAD = os.path.join(HERE, "manifest_head.toml")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default="flamehaze1115/wonder3d-v1.0")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()

    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

    sys.path.insert(0, HERE)
    import step_graph

    sys.path.insert(0, os.getcwd())
    from mvdiffusion.models.unet_mv2d_condition import UNetMV2DConditionModel

    os.makedirs(args.out, exist_ok=True)
    dtype = torch.float16 if args.fp16 else torch.float32
    device = "cuda" if args.fp16 else "cpu"

    class ImageEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values.to(dtype)).image_embeds.float()

    class VaeEncoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, sample):
            return self.vae.encode(sample.to(dtype)).latent_dist.mode().float()

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample.to(dtype)).sample.float()

    class Unet(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, class_labels):
            return self.unet(
                sample.to(dtype), timestep[0], encoder_hidden_states=encoder_hidden_states.to(dtype),
                class_labels=class_labels.to(dtype)
            ).sample.float()

    clip = CLIPVisionModelWithProjection.from_pretrained(args.weights, subfolder="image_encoder").to(device, dtype).eval()
    vae = AutoencoderKL.from_pretrained(args.weights, subfolder="vae").to(device, dtype).eval()
    unet = UNetMV2DConditionModel.from_pretrained_2d(
        args.weights, subfolder="unet", camera_embedding_type="e_de_da_sincos",
        projection_class_embeddings_input_dim=10, num_views=6, sample_size=32,
        cd_attention_mid=True, zero_init_conv_in=False, zero_init_camera_projection=False,
    ).to(device, dtype).eval()
    # xformers attention does not export; the plain attention processor does
    if hasattr(unet, "set_default_attn_processor"):
        unet.set_default_attn_processor()

    def export(module, inputs, names_in, names_out, dynamic, file):
        path = os.path.join(args.out, file)
        torch.onnx.export(
            module, inputs, path, input_names=names_in, output_names=names_out,
            dynamic_axes=dynamic, opset_version=args.opset, do_constant_folding=True,
        )
        return path

    f32 = dict(device=device, dtype=torch.float32)
    with torch.no_grad():
        export(ImageEncoder(clip), (torch.zeros(1, 3, 224, 224, **f32),), ["pixel_values"], ["image_embeds"],
               {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, "image_encoder.onnx")
        export(VaeEncoder(vae), (torch.zeros(1, 3, 256, 256, **f32),), ["sample"], ["latent_mean"],
               {"sample": {0: "batch"}, "latent_mean": {0: "batch"}}, "vae_encoder.onnx")
        export(VaeDecoder(vae), (torch.zeros(1, 4, 32, 32, **f32),), ["latent_sample"], ["sample"],
               {"latent_sample": {0: "batch"}, "sample": {0: "batch"}}, "vae_decoder.onnx")
        for n in (12, 24):
            export(Unet(unet), (
                torch.zeros(n, 8, 32, 32, **f32), torch.tensor([981], device=device, dtype=torch.int64),
                torch.zeros(n, 1, 768, **f32), torch.zeros(n, 10, **f32),
            ), ["sample", "timestep", "encoder_hidden_states", "class_labels"], ["out_sample"], None,
                f"unet_b{n}.onnx")

    step_graph.save(os.path.join(args.out, "step.onnx"), 32)

    io = {
        "image_encoder": ([("pixel_values", "float32", [-1, 3, 224, 224])], [("image_embeds", "float32", [-1, 768])]),
        "vae_encoder": ([("sample", "float32", [-1, 3, 256, 256])], [("latent_mean", "float32", [-1, 4, 32, 32])]),
        "vae_decoder": ([("latent_sample", "float32", [-1, 4, 32, 32])], [("sample", "float32", [-1, 3, 256, 256])]),
    }
    for n in (12, 24):
        io[f"unet_b{n}"] = (
            [("sample", "float32", [n, 8, 32, 32]), ("timestep", "int64", [1]),
             ("encoder_hidden_states", "float32", [n, 1, 768]), ("class_labels", "float32", [n, 10])],
            [("out_sample", "float32", [n, 4, 32, 32])],
        )
    io["step"] = step_graph.io(32)
    with open(HEAD) as f:
        text = f.read()
    for role, (ins, outs) in io.items():
        path = os.path.join(args.out, f"{role}.onnx")
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        text += f'\n[components.{role}]\nfile = "{role}.onnx"\nsha256 = "{sha}"\n'
        for kind, specs in (("inputs", ins), ("outputs", outs)):
            for name, dt, shape in specs:
                text += f'[[components.{role}.{kind}]]\nname = "{name}"\ndtype = "{dt}"\nshape = {shape}\n'
    with open(os.path.join(args.out, "model.toml"), "w") as f:
        f.write(text)
    print(f"wrote {args.out}/model.toml")


if __name__ == "__main__":
    main()

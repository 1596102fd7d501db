#!/usr/bin/env python3
"""Runs the mvdiffusion loop in Python onnxruntime and compares it with a recorded Rust run.

The Rust pipeline (RunOptions::record / `m3dnode views --record DIR`) writes what it fed the
models and the random numbers it drew: clip_input.npy, vae_input.npy, initial_noise.npy,
step_noise.npy [steps,12,4,h,w], and its results final_latents.npy and images.npy. This script
uses the same inputs and noise but does everything else itself, written from Wonder3D's
pipeline_mvdiffusion_image.py rather than from the Rust code: CLIP and VAE encoding, the camera
table from model.toml (sin/cos, normals first), the guidance batch built Wonder3D's way
(cat([uncond, cond]) then reshape_to_cd_input), the DDIM schedule and step (as
scripts/ddim_reference.py), guidance, VAE decoding. It prints the largest differences and
exits 1 when one exceeds --tol (1e-4).

    python scripts/mvdiffusion_reference.py MODEL_DIR RECORD_DIR --steps 10 --guidance 3.0
"""
import argparse
import os
import sys
import tomllib

import numpy as np
import onnxruntime as ort


def load(dir_, name):
    return np.load(os.path.join(dir_, name))


def session(model_dir, manifest, role):
    path = os.path.join(model_dir, manifest["components"][role]["file"])
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def ddim(manifest, steps):
    s = manifest["scheduler"]
    T = s["num_train_timesteps"]
    betas = np.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, T).astype(np.float32) ** 2
    ac = np.cumprod((1.0 - betas).astype(np.float32), dtype=np.float32)
    final = 1.0 if s["set_alpha_to_one"] else float(ac[0])
    ratio = T // steps
    timesteps = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + s["steps_offset"]

    def step(eps, t, x, noise):
        prev_t = t - ratio
        a_t = float(ac[t])
        a_prev = float(ac[prev_t]) if prev_t >= 0 else final
        b_t = 1 - a_t
        x0 = (x - b_t**0.5 * eps) / a_t**0.5
        var = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
        std = s["eta"] * var**0.5
        prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if s["eta"] > 0:
            prev = prev + std * noise
        return prev.astype(np.float32)

    return timesteps, step


def reshape_to_cd_input(x):
    norm_uc, rgb_uc, norm_c, rgb_c = np.split(x, 4, axis=0)
    return np.concatenate([norm_uc, norm_c, rgb_uc, rgb_c], axis=0)


def reshape_to_cfg_output(x):
    norm_uc, norm_c, rgb_uc, rgb_c = np.split(x, 4, axis=0)
    return np.concatenate([norm_uc, rgb_uc, norm_c, rgb_c], axis=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("record_dir")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--guidance", type=float, required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    with open(os.path.join(args.model_dir, "model.toml"), "rb") as f:
        m = tomllib.load(f)
    rec = args.record_dir
    scale = np.float32(m["latent_scale"])
    g = args.guidance
    cfg = g != 1.0

    # _encode_image: CLIP embedding [1,1,E] and VAE latent mode * scale, repeated for 12 images
    embeds = session(args.model_dir, m, "image_encoder").run(["image_embeds"], {"pixel_values": load(rec, "clip_input.npy")})[0]
    image_embeddings = np.repeat(embeds[:, None, :], 12, axis=0)
    lat = session(args.model_dir, m, "vae_encoder").run(["latent_mean"], {"sample": load(rec, "vae_input.npy")})[0] * scale
    image_latents = np.repeat(lat, 12, axis=0)
    if cfg:
        image_embeddings = np.concatenate([np.zeros_like(image_embeddings), image_embeddings])
        image_latents = np.concatenate([np.zeros_like(image_latents), image_latents])

    # camera embedding: the fixed table, normals then colours, sin and cos
    table = []
    for task in ([1.0, 0.0], [0.0, 1.0]):
        for v in m["views"]:
            table.append([v["elevation_cond"], v["elevation"], v["azimuth"]] + task)
    cam = np.asarray(table, dtype=np.float32)
    cam = np.concatenate([np.sin(cam), np.cos(cam)], axis=-1)
    if cfg:
        cam = np.concatenate([cam, cam])
        image_embeddings = reshape_to_cd_input(image_embeddings)
        cam = reshape_to_cd_input(cam)
        image_latents = reshape_to_cd_input(image_latents)

    unet = session(args.model_dir, m, "unet_b24" if cfg else "unet_b12")
    timesteps, step = ddim(m, args.steps)
    latents = load(rec, "initial_noise.npy")
    step_noise = load(rec, "step_noise.npy")
    for i, t in enumerate(timesteps):
        x = np.concatenate([latents] * 2) if cfg else latents
        if cfg:
            x = reshape_to_cd_input(x)
        x = np.concatenate([x, image_latents], axis=1).astype(np.float32)
        out = unet.run(["out_sample"], {
            "sample": x,
            "timestep": np.asarray([t], dtype=np.int64),
            "encoder_hidden_states": image_embeddings.astype(np.float32),
            "class_labels": cam.astype(np.float32),
        })[0]
        if cfg:
            out = reshape_to_cfg_output(out)
            uncond, cond = np.split(out, 2)
            out = uncond + g * (cond - uncond)
        latents = step(out, int(t), latents, step_noise[i])

    images = session(args.model_dir, m, "vae_decoder").run(["sample"], {"latent_sample": (latents / scale).astype(np.float32)})[0]
    images = np.clip(images / 2 + 0.5, 0, 1)

    worst = 0.0
    for name, mine in (("final_latents.npy", latents), ("images.npy", images)):
        theirs = load(rec, name)
        if theirs.shape != mine.shape:
            print(f"{name}: shape {theirs.shape} (Rust) vs {mine.shape} (Python)")
            return 1
        d = float(np.max(np.abs(theirs.astype(np.float64) - mine.astype(np.float64))))
        print(f"{name}: max |Rust - Python| = {d:.3g}")
        worst = max(worst, d)
    if worst > args.tol:
        print(f"FAIL: {worst:.3g} > {args.tol}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

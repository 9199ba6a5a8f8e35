"""A real diffusers pipeline loaded from a lazily prepared directory gives the outputs of a local load.

A tiny ``UNet2DConditionModel`` and ``AutoencoderKL`` are built from configs with seeded random weights
and saved as safetensors (``save_pretrained``) with a ``DDIMScheduler`` config; ``localoss`` serves them.
The weights stay unfetched until ``from_pretrained`` opens them; a short denoising loop (UNet +
scheduler) and the VAE decode run on both loads and must agree bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
from localoss_harness import LocalOss

from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

PREFIX = "sd/tiny-pipeline/"
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors")


def _save_tiny_pipeline(root: Path) -> None:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    )
    unet.save_pretrained(root / "unet", safe_serialization=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    diffusers.DDIMScheduler(num_train_timesteps=100).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "TinyPipeline"}))


def _generate(root: Path) -> torch.Tensor:
    unet = diffusers.UNet2DConditionModel.from_pretrained(root / "unet").eval()
    vae = diffusers.AutoencoderKL.from_pretrained(root / "vae").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(root / "scheduler")
    scheduler.set_timesteps(3)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn((1, 4, 16, 16), generator=generator)
    prompt = torch.randn((1, 5, 32), generator=generator)
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            noise = unet(latents, timestep, encoder_hidden_states=prompt).sample
            latents = scheduler.step(noise, timestep, latents).prev_sample
        image: torch.Tensor = vae.decode(latents / vae.config.scaling_factor).sample
    return image


def test_a_tiny_diffusers_pipeline_from_a_lazy_directory_matches_a_local_load(
    localoss: LocalOss, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    _save_tiny_pipeline(source)
    for path in source.rglob("*"):
        if path.is_file():
            localoss.put_file(bucket, PREFIX + path.relative_to(source).as_posix(), path.read_bytes())
    expected = _generate(source)

    creds = Credentials(localoss.access_key_id, localoss.access_key_secret)
    with OssModelConnector(
        localoss.endpoint, cred_provider=creds, small_file_mb=1, chunk_size_mb=1, memory_limit_mb=16
    ) as connector:
        model_dir = tmp_path / "pipeline"
        connector.prepare_directory(f"oss://{bucket}/{PREFIX}", model_dir, lazy=True)
        assert [connector.status(model_dir / name)["state"] for name in WEIGHTS] == ["not fetched"] * 2
        assert connector.stats()["bytes"] < 64 * 1024  # the small files (configs) only

        image = _generate(model_dir)

        assert torch.equal(image, expected)
        assert [connector.status(model_dir / name)["state"] for name in WEIGHTS] == ["cached"] * 2
        for name in WEIGHTS:
            assert (model_dir / name).read_bytes() == (source / name).read_bytes()

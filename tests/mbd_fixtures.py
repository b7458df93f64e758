"""Tiny MultiBand Diffusion checkpoints for tests: release-layout pickles, and their converted folders.

`write_release_pickle` writes what audiocraft's `load_diffusion_models` reads (the layout of the Hub file
facebook/multiband-diffusion / mbd_musicgen_32khz.th), with real OmegaConf configs shaped like audiocraft's
diffusion solver config (interpolations left unresolved, as hydra saves them) and random tensors under
audiocraft's names. `make_tiny_mbd` converts one into a folder, for tests that only need a tiny MBD that
decodes the tiny MusicGen's codec (`musicgen.tiny`: a 16-dim latent at 32 kHz).

omegaconf is a test-only dependency (requirements-dev.txt): the converter never imports it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import julius
import torch

from musicgen.diffusion_unet import DiffusionUnet, UNetConfig

TINY_MBD_CODEC_DIM = 16
SAMPLE_RATE = 32_000
PROCESSOR_BANDS = 2  # sub-bands of a band's processor (the release uses 8; 2 keeps julius' filters small)

# a tiny U-Net: 4 then 8 channels (the bottleneck Transformer's 8 heads get one channel each)
TINY_UNET = {
    "hidden": 4,
    "depth": 3,  # bottleneck at 1/64 of the sample rate: fast enough for end-to-end tests
    "res_blocks": 1,
    "norm_groups": 4,
    "kernel": 8,
    "stride": 4,
    "growth": 2,
    "max_channels": 10_000,
    "dropout": 0.0,
    "emb_all_layers": True,
    "bilstm": False,
    "cross_attention": False,
}


def _solver_cfg(band: int, codec_dim: int, transformer: bool, processor: bool) -> dict:
    """A band's config as hydra composes audiocraft's `solver=diffusion/default` (abridged), with the
    interpolations it keeps unresolved: the converter must resolve those it reads."""
    return {
        "solver": "diffusion",
        "device": "cuda",
        "dtype": "float32",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
        "n_q": 4,
        "codec_dim": codec_dim,
        "num_diffusion_steps": 1000,
        # never read: an interpolation of a resolver the converter does not know must not stop it
        "dora": {"dir": "/checkpoint/${oc.env:USER}/experiments/diffusion", "exclude": ["device"]},
        "dataset": {
            "batch_size": 128,
            "segment_duration": 1,
            "generate": {"audio": {"sample_rate": "${sample_rate}"}},
        },
        "optim": {"lr": 2e-4, "ema": {"use": True, "device": "${device}", "decay": 0.99}},
        "filter": {"use": True, "n_bands": 4, "idx_band": band, "cutoffs": None},
        "diffusion_unet": {**TINY_UNET, "transformer": transformer, "codec_dim": "${codec_dim}"},
        "schedule": {
            "repartition": "power",
            "variable_step_batch": True,
            "beta_t0": 1.0e-5,
            "beta_t1": 2.9e-2 + 1e-3 * band,  # each band its own, so a mix-up between bands shows
            "beta_exp": 7.5,
            "num_steps": "${num_diffusion_steps}",
            "variance": "beta",
            "clip": 5.0,
            "rescale": 1.0,
            "n_bands": None,
            "noise_scale": 1.0,
        },
        "processor": {
            "name": "multi_band_processor",
            "use": processor,
            "n_bands": PROCESSOR_BANDS,
            "num_samples": 10_000,
            # a list (one power per sub-band) for the first processed band, one number for the others
            "power_std": [0.4, 0.75] if processor and band % 2 else 0.4,
        },
    }


def tiny_unet_config(codec_dim: int = TINY_MBD_CODEC_DIM, transformer: bool = True) -> UNetConfig:
    """The UNetConfig the converter should read from `_solver_cfg`."""
    known = {k: v for k, v in TINY_UNET.items() if k != "dropout"}
    return UNetConfig(chin=1, num_steps=1000, transformer=transformer, codec_dim=codec_dim, **known)


def _to_audiocraft(name: str) -> str:
    # audiocraft keeps torch's nn.MultiheadAttention under `.mha` (our names fold it away)
    for attn in ("self_attn", "cross_attention"):
        name = name.replace(f".{attn}.in_proj_weight", f".{attn}.mha.in_proj_weight")
        name = name.replace(f".{attn}.out_proj.", f".{attn}.mha.out_proj.")
    return name


def write_release_pickle(
    path: Path,
    *,
    bands: int = 2,
    codec_dim: int = TINY_MBD_CODEC_DIM,
    seed: int = 0,
    transformer: bool = True,
    processor_bands: tuple[int, ...] = (1,),
    mha_prefix: bool = True,
    extra: dict | None = None,
    edit: Callable[[dict], None] | None = None,
) -> dict:
    """Writes a tiny random MultiBand Diffusion checkpoint in the release layout to `path` (torch.save).

    `processor_bands`: the bands whose processor is used (their processor_state holds the statistics and
    julius' filters, as audiocraft's MultiBandProcessor saves them; the others hold an empty dict).
    `mha_prefix`: attention weights under audiocraft's `.mha.` names (else already folded). `extra`: entries
    added to the top-level dict; `edit`: called with the dict (OmegaConf configs and all) before saving.

    Returns what it wrote, in the converter's terms: {'sample_rate', 'bands': [{'unet': UNetConfig,
    'model_state': {our name: tensor}, 'schedule': dict, 'processor': dict, 'processor_state': {stat:
    tensor}} per band], 'pkg': the dict saved}.
    """
    from omegaconf import OmegaConf

    generator = torch.Generator().manual_seed(seed)
    pkg: dict = {"sample_rate": SAMPLE_RATE, "n_bands": bands}
    written = []
    for band in range(bands):
        processor = band in processor_bands
        cfg = OmegaConf.create(_solver_cfg(band, codec_dim, transformer, processor))
        OmegaConf.set_struct(cfg, True)  # as hydra hands it over
        unet = DiffusionUnet(tiny_unet_config(codec_dim, transformer))
        state = {k: torch.randn(v.shape, generator=generator) for k, v in unet.state_dict().items()}
        model_state = {(_to_audiocraft(k) if mha_prefix else k): v for k, v in state.items()}
        processor_state: dict[str, torch.Tensor] = {}
        if processor:
            counts = torch.tensor([10_000.0])
            sum_x = torch.randn(PROCESSOR_BANDS, generator=generator) * 10
            sum_x2 = (torch.rand(PROCESSOR_BANDS, generator=generator) + 0.5) * counts
            sum_target_x2 = (torch.rand(PROCESSOR_BANDS, generator=generator) + 0.5) * counts
            processor_state = {
                "counts": counts,
                "sum_x": sum_x,
                "sum_x2": sum_x2,
                "sum_target_x2": sum_target_x2,
            }
            split = julius.SplitBands(SAMPLE_RATE, n_bands=PROCESSOR_BANDS)
            processor_state.update({f"split_bands.{k}": v for k, v in split.state_dict().items()})
        pkg[band] = {"cfg": cfg, "model_state": model_state, "processor_state": processor_state}
        plain = OmegaConf.to_container(cfg, resolve=False)
        schedule = {k: plain["schedule"][k] for k in ("beta_t0", "beta_t1", "beta_exp", "clip", "rescale")}
        written.append(
            {
                "unet": tiny_unet_config(codec_dim, transformer),
                "model_state": state,
                "schedule": {**schedule, "num_steps": 1000, "noise_scale": 1.0, "repartition": "power"},
                "processor": {
                    "use": processor,
                    "n_bands": PROCESSOR_BANDS,
                    "power_std": plain["processor"]["power_std"],
                },
                "processor_state": {k: v for k, v in processor_state.items() if not k.startswith("split_")},
            }
        )
    pkg.update(extra or {})
    if edit is not None:
        edit(pkg)
    torch.save(pkg, path)
    return {"sample_rate": SAMPLE_RATE, "bands": written, "pkg": pkg}


def make_tiny_mbd(folder: Path, **options) -> Path:
    """A converted tiny MultiBand Diffusion in `folder` (config.json + model.safetensors) that decodes the
    tiny MusicGen's 16-dim codec latent at 32 kHz; `options` as for `write_release_pickle`. Returns
    `folder`."""
    from musicgen.checkpoints.mbd_release import convert_mbd_release

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mbd_musicgen_32khz.th"
        write_release_pickle(src, **options)
        return convert_mbd_release(src, Path(folder), source="tiny random MultiBand Diffusion")

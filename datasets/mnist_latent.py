"""A latent MNIST diffusion model in the way Stable Diffusion is built: a small autoencoder and a denoiser in its space.

- `Autoencoder`: a conv autoencoder 28x28 (in [-1, 1]) -> latent 4x7x7 -> 28x28. The encoder's output is
  standardised per channel (`shift`, `scale`, measured on the training digits after training), so the
  diffusion model sees latents of unit scale. `encode` gives standardised latents, `decode` takes them.
- `LatentDenoiser`: a class-conditional noise predictor on the standardised latents with a null label
  (`NULL_LABEL`, label dropout during training), so `uncond` and `neg` predictions both come from one
  network. Two bodies: `mlp` (residual MLP with adaptive layer norm on the flattened 196-dim latent, the
  cheapest per forward) and `conv` (residual conv blocks at 7x7). The network's raw output may be an eps-
  or a v-prediction (`prediction`); `eps(z, t, y)` always returns eps for the project's linear-beta DDPM
  schedule (T = 1000), so every sampler and guidance method sees the same predictions as for a pixel model.

Trained by `python -m negguide.datasets.train_mnist_latent` (see that module). Nothing here runs at import.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NULL_LABEL = 10
N_LABELS = 11  # ten digits and the null label
AE_WEIGHTS = "autoencoder.safetensors"
DENOISER_WEIGHTS = "ema.safetensors"
CONFIG_FILE = "config.json"


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass `cls` from a dict, ignoring unknown keys and turning lists into tuples."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k in known:
            kwargs[k] = tuple(v) if isinstance(v, list) and "tuple" in str(known[k].type) else v
    return cls(**kwargs)


class _Config:
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Inverse of `to_dict` (unknown keys ignored)."""
        return _from_dict(cls, data)


# ----------------------------------------------------------------------------- autoencoder


@dataclass
class AutoencoderConfig(_Config):
    """Architecture and training settings of the MNIST autoencoder."""

    channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    latent_noise: float = 0.1  # Gaussian noise (in standardised units) added to latents while training the decoder
    latent_l2: float = 1e-4  # keeps the raw latents bounded
    seed: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    min_lr_factor: float = 0.05
    warmup_steps: int = 100
    max_steps: int | None = None
    max_minutes: float | None = None
    save_every: int = 250
    # filled in during training
    steps_done: int = 0
    param_count: int = 0
    wall_time_s: float = 0.0


class Autoencoder(nn.Module):
    """Conv autoencoder [N,1,28,28] in [-1,1] <-> standardised latents [N, latent_channels, 7, 7]."""

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AutoencoderConfig()
        c1, c2 = config.channels
        lc = config.latent_channels
        act = nn.SiLU
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), act(),
            nn.Conv2d(c1, c1, 4, stride=2, padding=1), act(),  # 14
            nn.Conv2d(c1, c2, 3, padding=1), act(),
            nn.Conv2d(c2, c2, 4, stride=2, padding=1), act(),  # 7
            nn.Conv2d(c2, c2, 3, padding=1), act(),
            nn.Conv2d(c2, lc, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(lc, c2, 3, padding=1), act(),
            nn.Conv2d(c2, c2, 3, padding=1), act(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), act(),  # 14
            nn.Conv2d(c1, c1, 3, padding=1), act(),
            nn.ConvTranspose2d(c1, c1, 4, stride=2, padding=1), act(),  # 28
            nn.Conv2d(c1, 1, 3, padding=1),  # logits of the pixel intensity in [0, 1]
        )
        self.register_buffer("shift", torch.zeros(1, lc, 1, 1))
        self.register_buffer("scale", torch.ones(1, lc, 1, 1))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.latent_channels, 7, 7)

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised latents of images in [-1, 1]."""
        return (self.encoder(x) - self.shift) / self.scale

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z * self.scale + self.shift)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from standardised latents."""
        return torch.sigmoid(self.decode_logits(z)) * 2 - 1

    @torch.no_grad()
    def standardise(self, x: torch.Tensor, batch: int = 1000) -> None:
        """Set `shift` and `scale` to the per-channel mean and std of the raw latents of `x`."""
        raw = torch.cat([self.encoder(x[i:i + batch]) for i in range(0, len(x), batch)])
        self.shift.copy_(raw.mean(dim=(0, 2, 3), keepdim=True))
        self.scale.copy_(raw.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))


def autoencoder_loss(ae: Autoencoder, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Pixel BCE of the reconstruction (decoder fed noised latents) plus a small L2 on the raw latents."""
    raw = ae.encode_raw(x)
    noise = torch.randn(raw.shape, generator=gen).to(raw.device) if gen is not None else torch.randn_like(raw)
    noisy = raw + ae.config.latent_noise * ae.scale * noise
    logits = ae.decoder(noisy)
    target = (x + 1) / 2
    return F.binary_cross_entropy_with_logits(logits, target) + ae.config.latent_l2 * raw.pow(2).mean()


# ----------------------------------------------------------------------------- denoiser


@dataclass
class DenoiserConfig(_Config):
    """Architecture, diffusion and training settings of the latent denoiser."""

    arch: str = "mlp"  # "mlp", "conv" or "unet"
    width: int = 512  # mlp: hidden width; conv and unet: channels at 7x7 (unet: twice that at 4x4)
    depth: int = 6  # residual blocks (unet: at each of 7x7 down, 4x4, 7x7 up)
    mlp_ratio: int = 2  # mlp: hidden = width * mlp_ratio inside each block
    emb_dim: int = 128
    latent_shape: tuple[int, ...] = (4, 7, 7)
    num_labels: int = N_LABELS
    null_label: int = NULL_LABEL
    prediction: str = "eps"  # what the network outputs: "eps" or "v"
    loss_weighting: str = "none"  # "none" (plain MSE of the prediction) or "min_snr" (gamma below, on eps-loss)
    min_snr_gamma: float = 5.0
    # diffusion (the project's schedule)
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # training
    seed: int = 0
    batch_size: int = 256
    lr: float = 1e-3
    min_lr_factor: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    p_uncond: float = 0.2
    ema_decay: float = 0.999
    max_steps: int | None = None
    max_minutes: float | None = None
    save_every: int = 500
    # filled in during training
    steps_done: int = 0
    param_count: int = 0
    wall_time_s: float = 0.0


def timestep_embedding(t: torch.Tensor, dim: int, period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of integer timesteps t [N]."""
    half = dim // 2
    freqs = torch.exp(-math.log(period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class _MlpBlock(nn.Module):
    def __init__(self, width: int, hidden: int, cond: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(cond, 3 * width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.mod(c).chunk(3, dim=1)
        y = self.norm(h) * (1 + scale) + shift
        return h + (1 + gate) * self.fc2(F.silu(self.fc1(y)))


class _ConvBlock(nn.Module):
    def __init__(self, channels: int, cond: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.mod = nn.Linear(cond, 2 * channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mod(c)[:, :, None, None].chunk(2, dim=1)
        y = self.conv1(F.silu(self.norm1(h)))
        y = self.norm2(y) * (1 + scale) + shift
        return h + self.conv2(F.silu(y))


class _Attention(nn.Module):
    """Self-attention over the positions of a small feature map (4x4: 16 tokens)."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.heads = heads
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = h.shape
        x = self.norm(h).flatten(2).transpose(1, 2)  # [N, L, C]
        q, k, v = self.qkv(x).view(n, hh * ww, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, hh * ww, c)
        return h + self.proj(y).transpose(1, 2).view(n, c, hh, ww)


class _UNetBody(nn.Module):
    """7x7 (w channels) -> 4x4 (2w channels, with attention) -> 7x7, one skip per resolution."""

    def __init__(self, w: int, depth: int, cond: int) -> None:
        super().__init__()
        self.down = nn.ModuleList(_ConvBlock(w, cond) for _ in range(depth))
        self.to_low = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)  # 7 -> 4
        self.mid = nn.ModuleList(_ConvBlock(2 * w, cond) for _ in range(depth))
        self.attn = _Attention(2 * w)
        self.to_high = nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1)  # 4 -> 7
        self.merge = nn.Conv2d(2 * w, w, 1)
        self.up = nn.ModuleList(_ConvBlock(w, cond) for _ in range(depth))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in self.down:
            h = block(h, c)
        skip = h
        low = self.to_low(h)
        for i, block in enumerate(self.mid):
            low = block(low, c)
            if i == 0:
                low = self.attn(low)
        h = self.merge(torch.cat([skip, self.to_high(low)], dim=1))
        for block in self.up:
            h = block(h, c)
        return h


class LatentDenoiser(nn.Module):
    """Class-conditional (null label = unconditional) noise predictor on standardised MNIST latents."""

    def __init__(self, config: DenoiserConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DenoiserConfig()
        if config.arch not in ("mlp", "conv", "unet"):
            raise ValueError(f"arch must be 'mlp', 'conv' or 'unet', got {config.arch!r}")
        if config.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {config.prediction!r}")
        w, e = config.width, config.emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, w), nn.SiLU(), nn.Linear(w, w))
        self.label_emb = nn.Embedding(config.num_labels, w)
        dim = int(math.prod(config.latent_shape))
        if config.arch == "mlp":
            self.inp = nn.Linear(dim, w)
            self.blocks = nn.ModuleList(_MlpBlock(w, w * config.mlp_ratio, w) for _ in range(config.depth))
            self.out_norm = nn.LayerNorm(w)
            self.out = nn.Linear(w, dim)
        else:
            c = config.latent_shape[0]
            self.inp = nn.Conv2d(c, w, 3, padding=1)
            if config.arch == "conv":
                self.blocks = nn.ModuleList(_ConvBlock(w, w) for _ in range(config.depth))
            else:
                self.blocks = nn.ModuleList([_UNetBody(w, config.depth, w)])
            self.out_norm = nn.GroupNorm(8, w)
            self.out = nn.Conv2d(w, c, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        abar = _alpha_bars(config)
        self.register_buffer("sqrt_ab", abar.sqrt(), persistent=False)
        self.register_buffer("sqrt_1mab", (1 - abar).sqrt(), persistent=False)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network's raw output (eps or v, per `config.prediction`) for latents z [N,C,7,7]."""
        t = torch.as_tensor(t, device=z.device).expand(z.shape[0]) if torch.as_tensor(t).ndim == 0 else t.to(z.device)
        c = F.silu(self.time_mlp(timestep_embedding(t, self.config.emb_dim)) + self.label_emb(y.to(z.device)))
        if self.config.arch == "mlp":
            h = self.inp(z.flatten(1))
            for block in self.blocks:
                h = block(h, c)
            return self.out(F.silu(self.out_norm(h))).view_as(z)
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, c)
        return self.out(F.silu(self.out_norm(h)))

    def eps(self, z: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor) -> torch.Tensor:
        """Noise prediction at integer training timesteps t (scalar or [N]) and labels y [N]."""
        t = torch.as_tensor(t, device=z.device, dtype=torch.long)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        out = self(z, t, y)
        if self.config.prediction == "eps":
            return out
        a, s = self.sqrt_ab[t].view(-1, 1, 1, 1), self.sqrt_1mab[t].view(-1, 1, 1, 1)
        return a * out + s * z  # eps = sqrt(abar) v + sqrt(1 - abar) z_t


def _alpha_bars(config: DenoiserConfig) -> torch.Tensor:
    betas = torch.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def denoiser_loss(model: LatentDenoiser, z0: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Diffusion loss at uniform timesteps, labels dropped to the null label with p_uncond.

    The target is the network's own parameterisation (eps or v); `min_snr` weights each sample's loss so that,
    expressed as an eps-loss, its weight is min(SNR, gamma) / SNR (Hang et al. 2023)."""
    cfg, n, device = model.config, z0.shape[0], z0.device
    t = torch.randint(0, cfg.num_train_timesteps, (n,), generator=gen)
    eps = torch.randn(z0.shape, generator=gen)
    drop = torch.rand(n, generator=gen) < cfg.p_uncond
    t, eps, drop = t.to(device), eps.to(device), drop.to(device)
    y = torch.where(drop, torch.full_like(labels, cfg.null_label), labels)
    a, s = model.sqrt_ab[t].view(-1, 1, 1, 1), model.sqrt_1mab[t].view(-1, 1, 1, 1)
    zt = a * z0 + s * eps
    target = eps if cfg.prediction == "eps" else a * eps - s * z0
    per_sample = (model(zt, t, y) - target).pow(2).flatten(1).mean(1)
    if cfg.loss_weighting == "min_snr":
        snr = (a / s).pow(2).flatten()
        # eps-loss weight min(snr, gamma) / snr; a v-error is an eps-error / sqrt(abar), so the v-loss weight is min(snr, gamma) / (snr + 1)
        clamped = snr.clamp(max=cfg.min_snr_gamma)
        per_sample = per_sample * (clamped / snr if cfg.prediction == "eps" else clamped / (snr + 1))
    elif cfg.loss_weighting != "none":
        raise ValueError(f"loss_weighting must be 'none' or 'min_snr', got {cfg.loss_weighting!r}")
    return per_sample.mean()


# ----------------------------------------------------------------------------- sampling (for measurement)


@torch.no_grad()
def sample_latents(model: LatentDenoiser, labels: torch.Tensor, steps: int = 50, seed: int = 0, variance: str = "beta_tilde") -> torch.Tensor:
    """Ancestral DDPM samples (respaced linear-beta chain, as the project's sampler) of standardised latents."""
    from negguide.methods.schedule import Schedule

    cfg = model.config
    chain = Schedule(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end).steps(steps)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    z = torch.randn((len(labels), *cfg.latent_shape), generator=gen).to(device)
    y = labels.to(device)
    for step in chain:
        eps = model.eps(z, step.t, y)
        z_prev = step.mean(z, eps)
        sigma2 = step.beta_tilde if variance == "beta_tilde" else step.beta
        if step.t_prev >= 0 and sigma2 > 0:
            z_prev = z_prev + sigma2 ** 0.5 * torch.randn(z.shape, generator=gen).to(device)
        z = z_prev
    return z


# ----------------------------------------------------------------------------- files


def _save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def save_autoencoder(directory: str | Path, ae: Autoencoder, extra: dict[str, Any] | None = None) -> None:
    """Write autoencoder.safetensors (shift and scale included) and config.json."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _save_safetensors(d / AE_WEIGHTS, ae.state_dict())
    _write_json(d / CONFIG_FILE, ae.config.to_dict() | (extra or {}))


def load_autoencoder(directory: str | Path) -> Autoencoder:
    """Load a saved autoencoder (eval mode, fp32)."""
    from safetensors.torch import load_file

    d = Path(directory)
    ae = Autoencoder(AutoencoderConfig.from_dict(json.loads((d / CONFIG_FILE).read_text())))
    ae.load_state_dict(load_file(str(d / AE_WEIGHTS)), strict=True)
    return ae.eval().requires_grad_(False)


def save_denoiser(directory: str | Path, model: LatentDenoiser, extra: dict[str, Any] | None = None) -> None:
    """Write the (EMA) denoiser weights and config.json."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _save_safetensors(d / DENOISER_WEIGHTS, model.state_dict())
    _write_json(d / CONFIG_FILE, model.config.to_dict() | (extra or {}))


def load_denoiser(directory: str | Path) -> LatentDenoiser:
    """Load a saved denoiser (eval mode, fp32)."""
    from safetensors.torch import load_file

    d = Path(directory)
    model = LatentDenoiser(DenoiserConfig.from_dict(json.loads((d / CONFIG_FILE).read_text())))
    model.load_state_dict(load_file(str(d / DENOISER_WEIGHTS)), strict=True)
    return model.eval().requires_grad_(False)

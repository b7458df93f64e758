"""MusicGen-Style on a tiny random style model (audiocraft's layout, a tiny MERT bundled in mert/).

The style conditioner is checked against a reference written here from the formulas and read straight from
the audiocraft tensors in state_dict.bin: julius' 32 -> 24 kHz resampling written out by hand, MERT as a
plain transformers HubertModel, torch's own TransformerEncoderLayer with sinusoidal positions, BatchNorm1d,
and audiocraft's residual quantizer run over every frame before every ds_factor-th frame is kept. Double
guidance is checked against its formula on logits of rows run one at a time; then the checkpoint layout,
seeded excerpts, every bad input, long clips and continuation.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import musicgen.generation as generation
from musicgen import InvalidInputError, SamplingParams
from musicgen.errors import CheckpointError
from musicgen.loading import build_model, read_checkpoint
from musicgen.sampling import mix_guidance
from musicgen.style import build_mert, excerpt_starts, hubert_config, read_mert_folder, token_count

SR = 32000
STYLE = "condition_provider.conditioners.self_wav."
DESCRIPTION = "condition_provider.conditioners.description.output_proj."
HEADS = 8  # audiocraft's style transformer has 8 heads at every scale but 'large'
PROMPT = "jazz trio with upright bass"


def noise(seconds: float, seed: int, channels: int = 1) -> torch.Tensor:
    """Random audio [channels, samples] at 32 kHz."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(channels, int(seconds * SR), generator=g)


# ---- the reference, from the formulas ---------------------------------------------------------------


def resample_by_hand(x: torch.Tensor, old: int = 32000, new: int = 24000) -> torch.Tensor:
    """julius.resample_frac(x [B, T], old, new) written out: the rates divided by their gcd (32k -> 24k is
    4 -> 3), one windowed-sinc kernel per output phase (zeros 24, rolloff 0.945, cos^2 window, each
    normalised to sum 1), the input padded by repeating its edge samples, one output per phase every `old`
    input samples, floor(new T / old) samples kept."""
    g = math.gcd(old, new)
    old, new = old // g, new // g
    zeros, rolloff = 24, 0.945
    cutoff = min(old, new) * rolloff
    width = math.ceil(zeros * old / cutoff)
    taps = torch.arange(-width, width + old, dtype=torch.float64)
    kernels = []
    for phase in range(new):
        t = ((-phase / new + taps / old) * cutoff).clamp(-zeros, zeros) * math.pi
        sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
        kernel = sinc * torch.cos(t / zeros / 2) ** 2
        kernels.append(kernel / kernel.sum())
    kernels = torch.stack(kernels)  # [new, 2 width + old]
    x = x.double()
    padded = torch.cat([x[:, :1].expand(-1, width), x, x[:, -1:].expand(-1, width + old)], dim=1)
    frames = padded.unfold(1, kernels.shape[1], old)  # [B, N, taps], hop `old`
    y = torch.einsum("bnj,pj->bnp", frames, kernels).reshape(x.shape[0], -1)  # phases interleaved
    return y[:, : new * x.shape[1] // old].float()


def sin_positions(length: int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """audiocraft's create_sin_embedding: phase = pos / max_period ** (i / (half - 1)), [cos, sin]."""
    half = dim // 2
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    phase = pos / max_period ** (torch.arange(half, dtype=torch.float64) / (half - 1))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1).float()


def plain_mert(folder) -> nn.Module:
    """The bundled MERT as transformers' HubertModel, from mert/config.json and mert/model.safetensors."""
    from safetensors.torch import load_file
    from transformers import HubertConfig, HubertModel

    raw = json.loads((folder / "mert" / "config.json").read_text())
    model = HubertModel(HubertConfig(**{k: v for k, v in raw.items() if k != "model_type"}))
    model.load_state_dict(load_file(str(folder / "mert" / "model.safetensors")), strict=True)
    return model.eval()


class ReferenceStyle:
    """audiocraft's StyleConditioner at inference, built from state_dict.bin under audiocraft's names."""

    def __init__(self, folder):
        import yaml

        pkg = torch.load(folder / "state_dict.bin", map_location="cpu", weights_only=True)
        best = {k: v.float() for k, v in pkg["best_state"].items() if v.is_floating_point()}
        self.xp = yaml.safe_load(pkg["xp.cfg"])["conditioners"]["self_wav"]["style"]
        s = {k[len(STYLE) :]: v for k, v in best.items() if k.startswith(STYLE)}
        self.dim = s["embed.weight"].shape[0]
        self.embed = (s["embed.weight"], s["embed.bias"])
        count = len({k.split(".")[2] for k in s if k.startswith("transformer.layers.")})
        self.layers = [self._layer(s, f"transformer.layers.{i}.") for i in range(count)]
        self.batch_norm = nn.BatchNorm1d(self.dim, affine=False).eval()
        self.batch_norm.running_mean.copy_(s["batch_norm.running_mean"])
        self.batch_norm.running_var.copy_(s["batch_norm.running_var"])
        n_q = len([k for k in s if k.endswith("._codebook.embed")])
        self.codebooks = [s[f"rvq.vq.layers.{j}._codebook.embed"] for j in range(n_q)]
        self.output_proj = (s["output_proj.weight"], s["output_proj.bias"])
        self.text_proj = (best[DESCRIPTION + "weight"], best[DESCRIPTION + "bias"])
        self.ds_factor = int(self.xp["ds_factor"])
        self.mert = plain_mert(folder)

    def _layer(self, s, a: str) -> nn.Module:
        """torch's pre-norm encoder layer with audiocraft's weights. audiocraft's Linear layers have no
        bias but its LayerNorms do; bias=False would drop both, so the Linear biases are zeros here."""
        d, ffn = self.dim, s[a + "linear1.weight"].shape[0]
        layer = nn.TransformerEncoderLayer(
            d, HEADS, ffn, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        layer.load_state_dict(
            {
                "self_attn.in_proj_weight": s[a + "self_attn.in_proj_weight"],
                "self_attn.in_proj_bias": torch.zeros(3 * d),
                "self_attn.out_proj.weight": s[a + "self_attn.out_proj.weight"],
                "self_attn.out_proj.bias": torch.zeros(d),
                "linear1.weight": s[a + "linear1.weight"],
                "linear1.bias": torch.zeros(ffn),
                "linear2.weight": s[a + "linear2.weight"],
                "linear2.bias": torch.zeros(d),
                **{f"norm{n}.{p}": s[f"{a}norm{n}.{p}"] for n in (1, 2) for p in ("weight", "bias")},
            },
            strict=True,
        )
        return layer.eval()

    @torch.no_grad()
    def features(self, excerpts: torch.Tensor) -> torch.Tensor:
        """[B, S] at 32 kHz -> MERT's last hidden state on the raw 24 kHz audio (no normalisation)."""
        return self.mert(resample_by_hand(excerpts)).last_hidden_state

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """MERT features -> embed, sin positions, the transformer (no final norm), BatchNorm (eval)."""
        x = F.linear(features, *self.embed)
        x = x + sin_positions(x.shape[1], self.dim)
        for layer in self.layers:
            x = layer(x)
        return self.batch_norm(x.transpose(1, 2)).transpose(1, 2)

    def quantize(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """audiocraft's eval RVQ on every frame: per codebook, the entry of largest negative distance,
        taken off the residual; the output is the sum of the chosen entries."""
        residual, out = x, torch.zeros_like(x)
        for table in self.codebooks[:n_q]:
            dist = -(residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ table.t() + table.pow(2).sum(-1))
            chosen = table[dist.argmax(dim=-1)]
            residual = residual - chosen
            out = out + chosen
        return out

    def tokens(self, excerpts: torch.Tensor, n_q: int) -> torch.Tensor:
        """Quantized at 75 Hz, then every ds_factor-th frame: [B, T_s, dim]."""
        return self.quantize(self.encode(self.features(excerpts)), n_q)[:, :: self.ds_factor]

    def project(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """output_proj, then the mask (zero vectors where masked)."""
        return F.linear(tokens, *self.output_proj) * mask[..., None]


@pytest.fixture(scope="module")
def reference(tiny_style):
    return ReferenceStyle(tiny_style[0])


# ---- spies --------------------------------------------------------------------------------------------


class StyleSpy:
    """Stands in for the engine's style conditioner, recording each call (excerpts, eval_q)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, excerpts, eval_q):
        self.calls.append((excerpts.clone(), eval_q))
        return self.inner(excerpts, eval_q)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def spy_style(monkeypatch, engine) -> StyleSpy:
    spy = StyleSpy(engine.style)
    monkeypatch.setattr(engine, "style", spy)
    return spy


def spy_prefill(monkeypatch) -> list:
    """Records (WindowConditions, known columns) of every window's prefill."""
    seen, original = [], generation.prefill

    def prefill(lm, cache, cond, known):
        seen.append((cond, known.clone()))
        return original(lm, cache, cond, known)

    monkeypatch.setattr(generation, "prefill", prefill)
    return seen


def spy_guidance(monkeypatch) -> tuple[list, list]:
    """Records the logits that go into guidance (every row) and those that come out of it into sampling."""
    raw, mixed = [], []
    mix, sample = generation.mix_guidance, generation.sample

    def mix_spy(logits, *args):
        raw.append(logits.clone())
        return mix(logits, *args)

    def sample_spy(logits, *args):
        mixed.append(logits.clone())
        return sample(logits, *args)

    monkeypatch.setattr(generation, "mix_guidance", mix_spy)
    monkeypatch.setattr(generation, "sample", sample_spy)
    return raw, mixed


def boom(*args, **kwargs):
    raise AssertionError("heavy work ran before the inputs were checked")


# ---- 1. the conditioner against the reference ---------------------------------------------------------


def test_resampling_by_hand_matches_julius_and_the_facts():
    import julius

    x = noise(0.5, 1)
    ours = resample_by_hand(x)
    assert ours.shape == (1, 12000)  # floor(3 T / 4)
    assert torch.allclose(ours, julius.resample_frac(x, 32000, 24000), atol=1e-5)
    assert not torch.allclose(ours, x[:, ::4].repeat_interleave(3, dim=1)[:, :12000], atol=1e-2)
    # normalised kernels and edge replication: a constant stays that constant to its last sample
    assert torch.allclose(resample_by_hand(torch.full((1, 4000), 0.25)), torch.tensor(0.25), atol=1e-6)


def test_style_conditioner_equals_the_reference(tiny_style, reference):
    _, engine = tiny_style
    excerpts = torch.cat([noise(3.0, 2), noise(3.0, 3)])  # [2, 96000]: two clips, 3 s each
    features = reference.features(excerpts)
    assert features.shape == (2, 224, 768)  # floor((72000 - 400) / 320) + 1 frames of 768
    assert torch.allclose(engine.style.features(excerpts), features, atol=1e-4)
    x = reference.encode(features)
    assert torch.allclose(engine.style.encoder.encode(features), x, atol=1e-4)
    wanted = {}
    for eval_q in (1, 3, 6):
        wanted[eval_q] = reference.quantize(x, eval_q)[:, :: reference.ds_factor]
        got = engine.style(excerpts, eval_q)
        assert got.shape == (2, 15, 256)
        assert torch.allclose(got, wanted[eval_q], atol=1e-4), f"eval_q {eval_q}"
    # each codebook adds detail: the three comparisons were of three different answers
    assert not torch.allclose(wanted[1], wanted[3]) and not torch.allclose(wanted[3], wanted[6])
    # the LM's style_proj is audiocraft's output_proj, and a masked row is zero vectors
    tokens, mask = wanted[3], torch.tensor([[1.0] * 15, [0.0] * 15])
    projected = engine.lm.project_style(tokens, mask)
    assert torch.allclose(projected, reference.project(tokens, mask), atol=1e-5)
    assert projected[0].abs().amin() > 0 and torch.equal(projected[1], torch.zeros_like(projected[1]))


def test_token_counts():
    from musicgen.config import StyleConfig

    cfg = StyleConfig()
    # MERT frames floor((T24 - 400) / 320) + 1 at 75 Hz, one in every 15 kept (facts: 8, 15, 23)
    assert [token_count(cfg, int(s * SR)) for s in (1.5, 3.0, 4.5)] == [8, 15, 23]


def test_explicit_excerpt_start_gives_the_lm_the_reference_prefix(tiny_style, reference, monkeypatch):
    _, engine = tiny_style
    wav = noise(5.0, 4)
    spy, seen = spy_style(monkeypatch, engine), spy_prefill(monkeypatch)
    engine.generate(PROMPT, duration=0.06, style=wav, style_excerpt_start=1.25, style_eval_q=6, seed=0)
    start, n = int(1.25 * SR), 3 * SR
    [(excerpt, eval_q)] = spy.calls
    assert eval_q == 6 and torch.equal(excerpt, wav[:, start : start + n])
    tokens = reference.tokens(wav[:, start : start + n], 6)
    assert not torch.allclose(tokens, reference.tokens(wav[:, :n], 6))  # the start matters
    style = reference.project(tokens, torch.ones(1, 15))
    states, mask = engine.text.encode([PROMPT])  # T5 itself is checked elsewhere
    text = F.linear(states, *reference.text_proj) * mask[..., None]
    prefix = seen[0][0].prefix  # [conditional row; null row] of [style, text]
    assert prefix.shape == (2, 15 + text.shape[1], 32)
    assert torch.allclose(prefix[0], torch.cat([style[0], text[0]]), atol=1e-4)
    assert torch.equal(prefix[1], torch.zeros_like(prefix[1]))


# ---- 2. guidance and the rows ------------------------------------------------------------------------


def test_mix_guidance_is_the_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 16, generator=g)
    cond, style, null = logits[:2], logits[2:4], logits[4:]
    a, b = 3.0, 5.0
    assert torch.allclose(mix_guidance(logits, a, 2, b), null + a * (style + b * (cond - style) - null))
    # beta 1 is ordinary guidance between the conditional and null rows
    assert torch.allclose(mix_guidance(logits, a, 2, 1.0), null + a * (cond - null), atol=1e-5)
    two = logits[:4]
    assert torch.allclose(mix_guidance(two, a, 2), two[2:] + a * (two[:2] - two[2:]))


@pytest.mark.parametrize("beta", [5.0, None])
def test_guidance_equals_the_formula_on_rows_run_alone(tiny_style, monkeypatch, beta):
    _, engine = tiny_style
    prompts = [PROMPT, "ambient pads"]
    wav = noise(4.0, 5)
    seen = spy_prefill(monkeypatch)
    raw, mixed = spy_guidance(monkeypatch)
    sampling = SamplingParams(top_k=1, cfg_coef=3.0, cfg_beta=beta)
    engine.generate(prompts, duration=0.04, style=wav, style_excerpt_start=0.5, sampling=sampling, seed=0)
    B, copies = 2, 3 if beta is not None else 2
    cond, known = seen[0]
    assert cond.prefix.shape[0] == copies * B and raw[0].shape[0] == copies * B
    assert cond.copies == copies and cond.double == (beta is not None)

    # every row rebuilt from its conditions and run alone through the LM's teacher-forced pass
    lm = engine.lm
    a = int(0.5 * SR)
    tokens = engine.style(wav[:, a : a + 3 * SR], 3)  # [1, 15, 256], the reference's (test above)
    states, text_mask = engine.text.encode(prompts)

    def run(i, style_on: float, text_on: float, style_tokens=tokens):
        with torch.no_grad():
            logits = lm(
                known[i : i + 1],
                states[i : i + 1],
                text_mask[i : i + 1] * text_on,
                style=style_tokens,
                style_mask=torch.full(style_tokens.shape[:2], style_on),
            )
        return logits[0, :, -1]  # [K, card]: the prediction after the start token

    for i in range(B):
        full, null = run(i, 1.0, 1.0), run(i, 0.0, 0.0)
        assert torch.allclose(raw[0][i], full, atol=1e-4)
        assert torch.allclose(raw[0][(copies - 1) * B + i], null, atol=1e-4)
        if beta is None:
            want = null + 3.0 * (full - null)
        else:
            style_only = run(i, 1.0, 0.0)
            assert torch.allclose(raw[0][B + i], style_only, atol=1e-4)
            want = null + 3.0 * (style_only + beta * (full - style_only) - null)
        assert torch.allclose(mixed[0][i], want, atol=1e-4)
    # the null style's zero vectors take their 15 positions: one zero token instead gives other logits
    short = run(0, 0.0, 0.0, style_tokens=tokens[:, :1])
    assert not torch.allclose(short, raw[0][(copies - 1) * B], atol=1e-3)


def test_style_condition_rows(tiny_style, reference):
    _, engine = tiny_style
    g = torch.Generator().manual_seed(1)
    text = torch.randn(2, 5, 32, generator=g)  # projected text of two clips
    tokens, mask = torch.randn(2, 4, 256, generator=g), torch.ones(2, 4)
    styled = reference.project(tokens, mask)
    zeros = torch.zeros(2, 9, 32)

    three = engine._style_conditions(text, (tokens, mask), SamplingParams(cfg_beta=4.0))
    assert three.guided and three.double and three.copies == 3
    p = three.prefix
    assert p.shape == (6, 9, 32)
    assert torch.allclose(p[:2], torch.cat([styled, text], dim=1), atol=1e-5)  # [style, text]
    assert torch.allclose(p[2:4], torch.cat([styled, torch.zeros_like(text)], dim=1), atol=1e-5)
    assert torch.equal(p[4:], zeros)  # [zeros, zeros]

    two = engine._style_conditions(text, (tokens, mask), SamplingParams())
    assert two.guided and not two.double and two.copies == 2
    assert torch.allclose(two.prefix[:2], p[:2]) and torch.equal(two.prefix[2:], zeros)

    # no clip has a style: one zero style token (T_s = 1) before the text
    one = engine._style_conditions(text, None, SamplingParams())
    assert one.prefix.shape == (4, 6, 32)
    assert torch.equal(one.prefix[:2, :1], torch.zeros(2, 1, 32)) and torch.equal(one.prefix[:2, 1:], text)
    assert torch.equal(one.prefix[2:], torch.zeros(2, 6, 32))

    plain = engine._style_conditions(text, (tokens, mask), SamplingParams(cfg_coef=1.0))
    assert not plain.guided and plain.copies == 1 and plain.prefix.shape == (2, 9, 32)


def test_double_guidance_at_cfg_coef_one_still_weighs_text_against_style(tiny_style):
    _, engine = tiny_style
    g = torch.Generator().manual_seed(2)
    text, tokens = torch.randn(1, 5, 32, generator=g), torch.randn(1, 4, 256, generator=g)
    cond = engine._style_conditions(
        text, (tokens, torch.ones(1, 4)), SamplingParams(cfg_coef=1.0, cfg_beta=5.0)
    )
    # audiocraft always splits three ways when beta is set: null + 1 * (style + 5 (cond - style) - null)
    # = style + 5 (cond - style), which is not the conditional row alone
    assert cond.double and cond.prefix.shape[0] == 3
    logits = torch.randn(3, 4, 16, generator=g)
    want = logits[1] + 5.0 * (logits[0] - logits[1])
    assert torch.allclose(mix_guidance(logits, 1.0, 1, 5.0)[0], want, atol=1e-5)


def test_text_only_and_a_style_less_clip(tiny_style, monkeypatch):
    _, engine = tiny_style
    spy, seen = spy_style(monkeypatch, engine), spy_prefill(monkeypatch)
    engine.generate("ambient pads", duration=0.04, seed=0)
    prefix = seen[-1][0].prefix
    td = engine.text.encode(["ambient pads"])[0].shape[1]
    assert spy.calls == []  # no style: the conditioner does not run
    assert prefix.shape == (2, 1 + td, 32)  # one zero style token, then the text
    assert torch.equal(prefix[:, 0], torch.zeros(2, 32)) and prefix[0, 1:].abs().amax() > 0

    engine.generate(["ambient pads", PROMPT], duration=0.04, style=[noise(3.5, 6), None], seed=0)
    prefix = seen[-1][0].prefix  # [4, 15 + Td, D]
    td = engine.text.encode(["ambient pads", PROMPT])[0].shape[1]
    [(excerpts, _)] = spy.calls
    assert excerpts.shape == (1, 3 * SR)  # only the clip with a style is run
    assert prefix.shape == (4, 15 + td, 32)
    assert prefix[0, :15].abs().amax(dim=-1).amin() > 0  # clip 1: 15 real style tokens
    assert torch.equal(prefix[1, :15], torch.zeros(15, 32))  # clip 2: 15 zero tokens in their place
    assert prefix[1, 15:].abs().amax() > 0  # ... and its text after them
    assert torch.equal(prefix[2:], torch.zeros(2, 15 + td, 32))


# ---- 3. float16 checkpoints --------------------------------------------------------------------------


def test_float16_checkpoint_is_the_rounded_float32_one_and_generates(tiny_style, tmp_path):
    from musicgen.tiny import save_tiny_style_model

    folder, _ = tiny_style
    half = save_tiny_style_model(tmp_path / "fp16", dtype=torch.float16)
    best = torch.load(half / "state_dict.bin", weights_only=True)["best_state"]
    # as the release: every floating-point tensor of state_dict.bin in float16
    assert {v.dtype for v in best.values() if v.is_floating_point()} == {torch.float16}
    full, small = read_checkpoint(folder), read_checkpoint(half)
    for part in ("lm_state", "style_state"):
        a, b = getattr(full, part), getattr(small, part)
        assert a.keys() == b.keys()
        for k in a:
            assert b[k].dtype == torch.float16 and torch.equal(b[k], a[k].to(torch.float16)), (part, k)
    engine = build_model(small, "cpu")
    result = engine.generate(PROMPT, duration=0.1, style=noise(3.0, 7), sampling=SamplingParams(cfg_beta=3.0))
    assert result.codes.shape == (1, 4, 5) and bool(torch.isfinite(result.audio).all())


# ---- 4. excerpts -------------------------------------------------------------------------------------


def test_excerpt_starts_follow_the_seed():
    lengths, n = [200_000, 150_000], 96_000
    first = excerpt_starts(lengths, n, seed=1)
    assert first == excerpt_starts(lengths, n, seed=1)
    assert first != excerpt_starts(lengths, n, seed=2)
    assert all(0 <= s <= length - n for s, length in zip(first, lengths, strict=True))
    assert excerpt_starts([n], n, seed=5) == [0]  # an excerpt as long as its audio starts at 0


def test_seeded_excerpts_in_generate(tiny_style, monkeypatch):
    _, engine = tiny_style
    wav = noise(6.0, 8, channels=2)  # stereo: audiocraft takes the mean of the channels
    mono = wav.mean(dim=0)
    spy = spy_style(monkeypatch, engine)
    sampling = SamplingParams(top_k=50)
    a = engine.generate("folk", duration=0.1, style=wav, sampling=sampling, seed=11)
    b = engine.generate("folk", duration=0.1, style=wav, sampling=sampling, seed=11)
    engine.generate("folk", duration=0.1, style=wav, sampling=sampling, seed=12)
    assert torch.equal(a.codes, b.codes)
    (ea, _), (eb, _), (ec, _) = spy.calls
    assert torch.equal(ea, eb) and not torch.equal(ea, ec)
    n = 3 * SR
    for excerpt, seed in ((ea, 11), (ec, 12)):
        [start] = excerpt_starts([mono.shape[-1]], n, seed)
        assert torch.allclose(excerpt[0], mono[start : start + n])


# ---- 5. the audiocraft layout ------------------------------------------------------------------------


def test_audiocraft_layout_round_trip_keeps_every_tensor(tiny_style, tmp_path):
    from musicgen.checkpoints.audiocraft_layout import write_audiocraft

    folder, _ = tiny_style
    first = read_checkpoint(folder)
    write_audiocraft(first, tmp_path / "again")
    second = read_checkpoint(tmp_path / "again")
    assert second.config == first.config
    for part in ("lm_state", "style_state", "mert_state", "text_encoder_state", "codec_state"):
        a, b = getattr(first, part), getattr(second, part)
        assert a.keys() == b.keys(), part
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (part, k)
    was = torch.load(folder / "state_dict.bin", weights_only=True)["best_state"]
    now = torch.load(tmp_path / "again" / "state_dict.bin", weights_only=True)["best_state"]
    assert was.keys() == now.keys() and all(torch.equal(was[k], now[k]) for k in was)
    # the style conditioner under audiocraft's names, its projection included
    for name in (
        "embed.weight",
        "transformer.layers.3.self_attn.in_proj_weight",
        "batch_norm.running_var",
        "rvq.vq.layers.5._codebook.embed",
        "output_proj.weight",
    ):
        assert STYLE + name in was


def test_uninitialised_codebook_is_refused(tiny_style, tmp_path):
    folder, _ = tiny_style
    bad = shutil.copytree(folder, tmp_path / "bad")
    pkg = torch.load(bad / "state_dict.bin", weights_only=True)
    pkg["best_state"][STYLE + "rvq.vq.layers.2._codebook.inited"] = torch.zeros(1)
    torch.save(pkg, bad / "state_dict.bin")
    with pytest.raises(CheckpointError, match=r"codebook 2 was never initialised \(inited = 0\)"):
        read_checkpoint(bad)


def test_mert_with_legacy_weight_norm_names_loads_identically(tiny_style, tmp_path):
    from safetensors.torch import load_file

    folder, _ = tiny_style
    state = load_file(str(folder / "mert" / "model.safetensors"))
    conv = "encoder.pos_conv_embed.conv."
    g = state.pop(conv + "parametrizations.weight.original0")
    v = state.pop(conv + "parametrizations.weight.original1")
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy, ignore=shutil.ignore_patterns("model.safetensors"))
    shutil.copy(folder / "text_encoder" / "model.safetensors", legacy / "text_encoder")
    torch.save({**state, conv + "weight_g": g, conv + "weight_v": v}, legacy / "mert" / "pytorch_model.bin")
    assert sorted(p.name for p in (legacy / "mert").iterdir()) == ["config.json", "pytorch_model.bin"]

    loaded = build_model(read_checkpoint(legacy), "cpu").style.mert
    reference = plain_mert(folder)
    ours, theirs = loaded.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # weight norm over the kernel axis: w[:, :, k] = g[k] v[:, :, k] / |v[:, :, k]|
    w = g * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    assert torch.allclose(loaded.encoder.pos_conv_embed.conv.weight, w, atol=1e-6)
    x = noise(0.5, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x).last_hidden_state, reference(x).last_hidden_state)
    # read_mert_folder + build_mert alone say the same
    cfg, tensors = read_mert_folder(legacy / "mert")
    assert torch.equal(
        build_mert(cfg, tensors, "legacy").encoder.pos_conv_embed.conv.weight,
        loaded.encoder.pos_conv_embed.conv.weight,
    )


def test_mert_with_cqt_is_refused(tiny_style, tmp_path):
    folder, _ = tiny_style
    bad = shutil.copytree(folder, tmp_path / "cqt")
    cfg = json.loads((bad / "mert" / "config.json").read_text())
    cfg["feature_extractor_cqt"] = True
    (bad / "mert" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="feature_extractor_cqt"):
        build_model(read_checkpoint(bad), "cpu")
    with pytest.raises(CheckpointError, match="deepnorm"):
        hubert_config({**cfg, "feature_extractor_cqt": False, "deepnorm": True}, "mert")


def test_convert_of_the_style_model_to_transformers_is_refused(tiny_style, tmp_path, capsys, monkeypatch):
    import os

    from musicgen.cli import main

    folder, _ = tiny_style
    # the CLI sets transformers' verbosity for its process; put it back after this test
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", os.environ.get("TRANSFORMERS_VERBOSITY", "warning"))
    dest = tmp_path / "out"
    assert main(["convert", str(folder), str(dest), "--to", "transformers"]) == 2
    err = capsys.readouterr().err
    assert "MusicGen-Style" in err and "--to audiocraft" in err
    assert not dest.exists() or not any(dest.iterdir())


# ---- 6. bad inputs -----------------------------------------------------------------------------------


NAN = float("nan")
BAD_INPUTS = [
    ({"sampling": SamplingParams(cfg_beta=NAN)}, "cfg_beta"),
    ({"sampling": SamplingParams(cfg_beta=-1.0)}, "cfg_beta"),
    ({"sampling": SamplingParams(cfg_beta=20.5)}, "cfg_beta"),
    ({"style": noise(2.0, 0)}, r"style audio lasts 2\.00 s, shorter than the style excerpt"),
    ({"style_excerpt_length": 1.4}, "style_excerpt_length"),
    ({"style_excerpt_length": 4.6}, "style_excerpt_length"),
    ({"style_excerpt_length": NAN}, "style_excerpt_length"),
    ({"style_eval_q": 0}, "style_eval_q"),
    ({"style_eval_q": 7}, "style_eval_q"),
    ({"style_eval_q": 2.5}, "style_eval_q"),
    ({"style_eval_q": True}, "style_eval_q"),
    (
        {"style_excerpt_start": 3.0},
        "style_excerpt_start 3.0 s: the excerpt from 3.0 s .* runs past the end of the style audio",
    ),
    ({"style_excerpt_start": -1.0}, "style_excerpt_start"),
    ({"style_excerpt_start": NAN}, "style_excerpt_start"),
    ({"style": noise(5.0, 0).index_fill(1, torch.tensor([100]), NAN)}, "style audio holds NaN"),
    ({"style": [noise(5.0, 0), noise(5.0, 1)]}, "2 style excerpts for 1 clips"),
    ({"style": torch.zeros(5 * SR)}, "style audio must be a non-empty waveform"),
]


@pytest.mark.parametrize("kwargs, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_style_inputs_are_refused_before_any_work(tiny_style, monkeypatch, kwargs, message):
    _, engine = tiny_style
    monkeypatch.setattr(engine, "style", boom)
    monkeypatch.setattr(engine.text, "encode", boom)
    args = {"duration": 1.0, "style": noise(5.0, 0), **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        engine.generate("folk", **args)


def test_style_inputs_on_a_model_without_style_are_refused(tiny, monkeypatch):
    engine = tiny.engine("mono")
    monkeypatch.setattr(engine.text, "encode", boom)
    with pytest.raises(InvalidInputError, match="no style conditioner"):
        engine.generate("folk", duration=1.0, style=noise(3.0, 0))
    with pytest.raises(InvalidInputError, match="cfg_beta"):
        engine.generate("folk", duration=1.0, sampling=SamplingParams(cfg_beta=5.0))


# ---- 7. and 8. long clips and continuation -----------------------------------------------------------


def test_long_clip_runs_the_style_conditioner_once(tiny_style, monkeypatch):
    """A 31 s clip that continues 29 s of audio: two windows (0..30 s, 18..31 s), ~100 decode steps
    instead of the 1,550 of a clip generated from nothing."""
    _, engine = tiny_style
    spy, seen = spy_style(monkeypatch, engine), spy_prefill(monkeypatch)
    sampling = SamplingParams(top_k=1, cfg_beta=4.0)
    result = engine.generate(
        "ambient pads",
        duration=31,
        continuation=noise(29.0, 13),
        style=noise(3.5, 10),
        sampling=sampling,
        seed=0,
    )
    assert result.codes.shape == (1, 4, 31 * 50)
    assert result.audio.shape == (1, 1, 31 * SR)
    assert len(spy.calls) == 1  # once per request, not once per window
    assert len(seen) == 2  # two windows, both with the same style prefix
    assert seen[0][1].shape[-1] == 1 + 29 * 50  # the first is prompted with the 29 s continued
    assert seen[1][1].shape[-1] == 1 + 12 * 50  # the second with the first's last 12 s
    assert seen[0][0].prefix.shape[:2] == (3, 15 + engine.text.encode(["ambient pads"])[0].shape[1])
    assert seen[0][0].prefix[0, :15].abs().amax(dim=-1).amin() > 0
    assert torch.equal(seen[0][0].prefix, seen[1][0].prefix)


def test_continuation_with_a_style(tiny_style, monkeypatch):
    _, engine = tiny_style
    prompt = noise(0.5, 11)
    prompt_codes = engine.codec.encode(prompt[None])
    spy, seen = spy_style(monkeypatch, engine), spy_prefill(monkeypatch)
    sampling = SamplingParams(cfg_beta=3.0)
    result = engine.generate(
        PROMPT, duration=0.8, continuation=prompt, style=noise(3.0, 12), sampling=sampling, seed=0
    )
    tp = prompt_codes.shape[-1]
    assert result.codes.shape == (1, 4, 40)
    assert torch.equal(result.codes[..., :tp], prompt_codes)
    assert len(spy.calls) == 1
    cond, known = seen[0]
    assert cond.prefix.shape[0] == 3 and known.shape[-1] == 1 + tp
    assert cond.prefix[0, :15].abs().amax(dim=-1).amin() > 0  # the style prefix precedes the prompt


def test_peek_model_reads_what_an_audiocraft_folder_accepts(tiny_style, tiny, tmp_path):
    """The CLI checks style options before loading: an audiocraft-layout folder says what it takes."""
    from musicgen.checkpoints.audiocraft_layout import write_audiocraft
    from musicgen.loading import ModelTraits, peek_model

    folder, _ = tiny_style
    assert peek_model(str(folder)) == ModelTraits(melody=False, stereo=False, style=True)
    for kind, traits in [
        ("melody", ModelTraits(True, False, False)),
        ("stereo", ModelTraits(False, True, False)),
    ]:
        out = tmp_path / kind
        write_audiocraft(read_checkpoint(tiny.get(kind)[0]), out)
        assert peek_model(str(out)) == traits
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state_dict.bin").write_bytes(b"not a torch file")
    assert peek_model(str(tmp_path / "broken")) is None

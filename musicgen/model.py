"""`MusicGen`: a loaded model with one `generate` method that every entry point calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .audio import convert_channels
from .checkpoints import Checkpoint
from .codec import Codec
from .conditioning import TextEncoder
from .config import ModelConfig
from .errors import InvalidInputError, WeightsNotFoundError
from .generation import LongFormPlan, WindowConditions, generate_long, steps_for
from .inputs import check_finite_audio, check_generation_args, check_prompts
from .inputs import seed as resolve_seed
from .lm import LanguageModel
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .diffusion import MultiBandDiffusion
    from .style import StyleConditioner

MELODY_STEMS_MODES = ("auto", "on", "off")
# what turns codes into audio: EnCodec's decoder, or MultiBand Diffusion (musicgen.diffusion)
DECODERS = ("encodec", "mbd")
MAX_WINDOW_SECONDS = 30.0  # sinusoidal positions were trained on 30 s windows
DEFAULT_STRIDE_SECONDS = 18.0  # audiocraft's extend_stride: windows overlap by 12 s


@dataclass
class GenerationResult:
    """What `generate` returns.

    audio: [B, C, S] float32 at `sample_rate`; codes: [B, K, T] int64 in the model's codebook order,
    delays undone, the continued prompt included; seed: the seed actually used.
    """

    audio: torch.Tensor
    codes: torch.Tensor
    sample_rate: int
    seed: int


@dataclass
class PreparedJob:
    """A generate call with its inputs checked and encoded, ready for the decode loop (`MusicGen.prepare`).

    conditions_at(offset_frames) gives each window's conditioning (CFG rows included); prompt: codes
    [B, K, Tp] to continue, or None; steps: decode steps in all.
    """

    batch: int
    conditions_at: Callable[[int], WindowConditions]
    plan: LongFormPlan
    prompt: torch.Tensor | None
    sampling: SamplingParams
    seed: int
    steps: int
    device: torch.device

    def generator(self) -> torch.Generator:
        """The sampling generator, seeded: the only one the decode draws from."""
        return torch.Generator(self.device).manual_seed(self.seed)


class MusicGen:
    """A MusicGen model ready to generate: language model, T5 text encoder, EnCodec (and, for
    MusicGen-Style, the style conditioner)."""

    def __init__(
        self,
        config: ModelConfig,
        lm: LanguageModel,
        text: TextEncoder,
        codec: Codec,
        style: StyleConditioner | None = None,
    ):
        self.config = config
        self.lm = lm
        self.text = text
        self.codec = codec
        self.style = style
        # decode with the static-shape step (the one to compile or capture); eager slicing otherwise
        self.static_decode = False
        self._stems = None  # Demucs, loaded on the first melody that asks for it
        self._mbd = None  # MultiBand Diffusion, loaded on the first generate(decoder="mbd")

    @classmethod
    def load(
        cls, name_or_path: str | Path, device: str | None = None, download: bool = True, int8: bool = False
    ) -> MusicGen:
        """Loads a variant name (`small`, `stereo-melody-large`...), a Hub id, or a checkpoint folder.

        int8: opt-in int8 weights for the language model's Linear layers on CPU (faster, slightly different).
        """
        from .loading import build_model, load_checkpoint

        ckpt: Checkpoint = load_checkpoint(str(name_or_path), download=download)
        return build_model(ckpt, device, int8=int8)

    @property
    def device(self) -> torch.device:
        return self.lm.embed.weight.device

    @property
    def accepts_melody(self) -> bool:
        return self.config.is_melody

    @property
    def accepts_style(self) -> bool:
        return self.config.is_style

    @property
    def channels(self) -> int:
        return self.config.lm.audio_channels

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str | None] | str | None = None,
        *,
        progress: bool = False,
        decoder: str | MultiBandDiffusion = "encodec",
        **options,
    ) -> GenerationResult:
        """Generates audio: `prepare(prompts, **options)` (every argument is `prepare`'s), the decode loop,
        then the decoder. progress: progress bars over the decode steps (and the diffusion's).

        decoder: "encodec" (EnCodec's decoder), "mbd" (MultiBand Diffusion: fuller highs, fewer artefacts,
        far slower; its weights are loaded on first use) or a loaded `MultiBandDiffusion`. Stereo clips are
        decoded channel by channel, each channel as a mono clip.
        """
        mbd = self.diffusion_decoder(decoder)  # loaded and checked before any other work
        job = self.prepare(prompts, **options)
        with tqdm(total=job.steps, disable=not progress, unit="step", desc="generating") as bar:
            codes = generate_long(
                self.lm,
                job.conditions_at,
                job.batch,
                job.plan,
                job.sampling,
                job.generator(),
                job.prompt,
                on_step=lambda: bar.update(),
                static=self.static_decode,
            )
        return self.finish(codes, job.seed, mbd=mbd, progress=progress)

    def diffusion_decoder(
        self, decoder: str | MultiBandDiffusion, download: bool = True
    ) -> MultiBandDiffusion | None:
        """The MultiBand Diffusion decoder that `decoder` asks for (None for EnCodec), loaded on first use
        and checked against this model's codec."""
        from .diffusion import MultiBandDiffusion

        if isinstance(decoder, MultiBandDiffusion):
            mbd = decoder
        elif decoder == "encodec":
            return None
        elif decoder == "mbd":
            if self._mbd is None:
                self._mbd = MultiBandDiffusion.from_weights(self.device, download=download)
            mbd = self._mbd
        else:
            raise InvalidInputError(f"decoder must be one of {DECODERS}, got {decoder!r}.")
        mbd.check_codec(self.codec.latent_dim, self.config.sample_rate)
        return mbd

    @torch.inference_mode()
    def prepare(
        self,
        prompts: list[str | None] | str | None = None,
        *,
        duration: float = 8.0,
        melody: torch.Tensor | None = None,
        continuation: torch.Tensor | None = None,
        sampling: SamplingParams = SamplingParams(),
        seed: int | None = None,
        batch_size: int | None = None,
        extend_stride: float = DEFAULT_STRIDE_SECONDS,
        melody_stems: str = "auto",
        style: torch.Tensor | list[torch.Tensor | None] | None = None,
        style_excerpt_length: float | None = None,
        style_excerpt_start: float | None = None,
        style_eval_q: int | None = None,
    ) -> PreparedJob:
        """Everything generation does before its first decode step: every input checked, the text, melody,
        style and audio prompt encoded. The decode loop (`generate`'s, or the batcher's in
        musicgen.batching) then only steps the language model.

        Args:
            prompts: one text per clip; None or "" for a clip without text. A string means one clip.
            duration: seconds of each clip, the continued audio included; past 30 s, windows of 30 s
                overlap by 30 - extend_stride seconds.
            melody: reference waveform [C, S] at the model's sample rate (melody models only), shared by
                every clip; its chroma conditions the generation and is looped over long clips.
            continuation: waveform [C, S] at the model's sample rate to continue; it starts every clip.
            sampling: top_k, top_p, temperature, cfg_coef.
            seed: 0 to 2**63 - 1; the same seed and inputs give the same codes on the same device; None
                (or -1) draws one.
            batch_size: number of clips when `prompts` is None (unconditional); defaults to 1.
            melody_stems: remove drums and bass from the melody with Demucs first, as audiocraft does:
                "auto" when Demucs' weights are in the weights folder, "on" (required), or "off".
            style: audio [C, S] at the model's sample rate whose style the music takes (style models
                only): one waveform for every clip, or a list with one per clip (None for a clip without).
                An excerpt of it conditions every window of the clip.
            style_excerpt_length: seconds of the excerpt (default: the model's, 3 s; 1.5 to 4.5).
            style_excerpt_start: where the excerpt starts, in seconds; default drawn from the seed.
            style_eval_q: style codebooks used, 1 to 6 (default 3): more follows the excerpt more closely.
            sampling.cfg_beta: double guidance (style models), weighing the text against the style.
        """
        if isinstance(prompts, str) or prompts is None:
            prompts = [prompts] * (batch_size or 1)
        B = len(prompts)
        if B == 0:
            raise InvalidInputError("prompts is an empty list: give at least one prompt, or None.")
        check_prompts(prompts)
        if not 0 < extend_stride < MAX_WINDOW_SECONDS:
            raise InvalidInputError(f"extend_stride must be between 0 and {MAX_WINDOW_SECONDS} s.")
        if melody_stems not in MELODY_STEMS_MODES:
            raise InvalidInputError(
                f"melody_stems must be one of {MELODY_STEMS_MODES}, got {melody_stems!r}."
            )
        check_generation_args(
            duration=duration,
            sampling=sampling,
            melody_given=melody is not None,
            model_accepts_melody=self.accepts_melody,
        )
        if sampling.cfg_beta is not None and not self.accepts_style:
            raise InvalidInputError(
                "cfg_beta (double guidance) weighs text against style: only the style model takes it."
            )
        seed = resolve_seed("seed", seed)
        styles = self._style_inputs(style, B, style_excerpt_length, style_excerpt_start, style_eval_q)
        # the audio inputs are checked (shape, finite samples) and brought to the model's channels once,
        # before any work
        if melody is not None:
            melody = self._as_channels(melody, "melody")
        if continuation is not None:
            continuation = self._as_channels(continuation, "continuation audio")
        rate = self.config.frame_rate
        total = int(duration * rate)
        if total < 1:
            raise InvalidInputError(f"duration {duration} s is shorter than one frame (1/{rate} s).")
        prompt_codes = None
        if continuation is not None:
            prompt_codes = (
                self.codec.encode(continuation[None]).to(self.device).expand(B, -1, -1)
            )  # [B, K, Tp]
            if prompt_codes.shape[-1] >= total:
                raise InvalidInputError(
                    f"the audio to continue lasts {continuation.shape[-1] / self.config.sample_rate:.2f} s, "
                    f"not shorter than the requested duration of {duration} s (duration counts the "
                    "continued audio): ask for a longer duration or cut the audio."
                )
        stems = self._stem_remover(melody_stems) if melody is not None else None

        window = int(MAX_WINDOW_SECONDS * rate)
        plan = LongFormPlan(total=total, window=window, stride=int(extend_stride * rate))
        if stems is not None:  # the whole melody once; windows then slide along the stemmed audio
            melody = stems.remove_drums_and_bass(melody[None], self.config.sample_rate, seed)[0]
        style_tokens = None if styles is None else self._style_tokens(styles, seed)
        conditions_at = self._conditioner(
            prompts, melody, sampling, single_window=total <= window, style=style_tokens
        )
        tp = 0 if prompt_codes is None else prompt_codes.shape[-1]
        steps = sum(steps_for(f, p, self.config.lm.delays) for _, f, p in plan.windows(tp))
        return PreparedJob(
            batch=B, conditions_at=conditions_at, plan=plan, prompt=prompt_codes, sampling=sampling,
            seed=seed, steps=steps, device=self.device,
        )  # fmt: skip

    def finish(
        self,
        codes: torch.Tensor,
        seed: int,
        mbd: MultiBandDiffusion | None = None,
        progress: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ) -> GenerationResult:
        """codes [B, K, T] -> the result: audio decoded by EnCodec, or by `mbd` (MultiBand Diffusion, seeded
        from `seed`; EnCodec's decode is still made: the diffusion's bands are equalised against it).
        progress: a progress bar over the diffusion's steps; on_step(done, total) after each of them."""
        audio = self.codec.decode(codes)  # [B, C, S]
        if mbd is not None:
            hop = self.config.sample_rate // self.config.frame_rate
            total = mbd.reverse_steps(codes.shape[-1], codes.shape[0] * self.channels, hop)
            with tqdm(total=total, disable=not progress, unit="step", desc="diffusion") as bar:
                done = 0

                def step() -> None:
                    nonlocal done
                    done += 1
                    bar.update()
                    if on_step is not None:
                        on_step(done, total)

                audio = mbd.decode(self.codec.latent(codes), audio, seed, hop, on_step=step)
        return GenerationResult(
            audio=audio.cpu(), codes=codes.cpu(), sample_rate=self.config.sample_rate, seed=seed
        )

    # ---- conditioning -------------------------------------------------------------------------
    def _conditioner(self, prompts, melody, sampling: SamplingParams, single_window: bool, style=None):
        """Returns offset_frames -> WindowConditions; text is encoded once, the melody per window."""
        lm = self.lm
        states, mask = self.text.encode(prompts)
        text = lm.project_text(states, mask)  # [B, S, D], zero where masked
        if self.config.is_style:
            cond = self._style_conditions(text, style, sampling)
            return lambda offset: cond
        unconditional = melody is None and not bool(mask.any())
        guided = sampling.cfg_coef != 1.0 and not unconditional
        if guided:
            text = torch.cat([text, torch.zeros_like(text)])
            mask = torch.cat([mask, torch.zeros_like(mask)])
        if not self.config.is_melody:
            cond = WindowConditions(guided=guided, text=text, text_mask=mask)
            return lambda offset: cond

        from .chroma import extract_chroma, fit_chroma, null_chroma

        B = len(prompts)
        L = self.config.lm.chroma_length
        none = lm.project_chroma(null_chroma(B, L).to(self.device))
        wav = None if melody is None else self._as_channels(melody, "melody")

        def at(offset_frames: int) -> WindowConditions:
            if wav is None:
                chroma = none
            else:
                piece = wav if single_window else self._melody_window(wav, offset_frames)
                c = extract_chroma(piece[None], self.config.sample_rate, self.config.chroma)
                chroma = lm.project_chroma(fit_chroma(c, L).to(self.device)).expand(B, -1, -1)
            rows = torch.cat([chroma, none]) if guided else chroma
            return WindowConditions(guided=guided, prefix=torch.cat([rows, text], dim=1))

        return at

    def _style_conditions(self, text: torch.Tensor, style, sampling: SamplingParams) -> WindowConditions:
        """The prefix [style, text] of every row, CFG rows laid out as audiocraft lays them out.

        text: [B, S, D] projected (zero for a clip without text); style: (tokens [B, Ts, style_dim], mask
        [B, Ts]) or None. A clip without style gets Ts zero tokens, as long as its batch-mates' styles;
        one zero token when no clip has a style. Guidance rows: [text+style; neither], or with cfg_beta
        [text+style; style only; neither]; every null condition is zero vectors in the same positions.
        """
        B = text.shape[0]
        if style is None:
            tokens = text.new_zeros(B, 1, self.config.lm.style_dim)
            smask = text.new_zeros(B, 1)
        else:
            tokens, smask = style
        styled = self.lm.project_style(tokens, smask)  # [B, Ts, D]
        cond = torch.cat([styled, text], dim=1)
        unconditional = not bool(smask.any()) and not bool(text.any())
        # guidance at 1.0 gives the conditional logits back; double guidance does not (beta still weighs
        # text against style), so only ordinary guidance is skipped there
        if unconditional or (sampling.cfg_coef == 1.0 and sampling.cfg_beta is None):
            return WindowConditions(guided=False, prefix=cond)
        null = torch.zeros_like(cond)
        if sampling.cfg_beta is None:
            return WindowConditions(guided=True, prefix=torch.cat([cond, null]))
        style_only = torch.cat([styled, torch.zeros_like(text)], dim=1)
        return WindowConditions(guided=True, double=True, prefix=torch.cat([cond, style_only, null]))

    def _style_inputs(self, style, batch: int, length, start, eval_q):
        """Checks the style arguments; returns (per-clip mono waveforms or None, excerpt samples, starts in
        samples or None, eval_q), or None when no clip has a style."""
        from .style import check_style_args, excerpt_samples

        if style is None:
            return None
        cfg = self.config.style
        if cfg is not None:  # without a style conditioner, check_style_args refuses the style itself
            length = cfg.excerpt_length if length is None else length
            eval_q = cfg.eval_q if eval_q is None else eval_q
        check_style_args(cfg, length, eval_q)
        per_clip = list(style) if isinstance(style, (list, tuple)) else [style] * batch
        if len(per_clip) != batch:
            raise InvalidInputError(
                f"{len(per_clip)} style excerpts for {batch} clips: give one per prompt (None for a clip "
                "without), or a single waveform for all."
            )
        n = excerpt_samples(cfg, length)
        sr = self.config.sample_rate
        wavs: list[torch.Tensor | None] = []
        for i, wav in enumerate(per_clip):
            if wav is None:
                wavs.append(None)
                continue
            what = "style audio" if batch == 1 else f"style audio of clip {i + 1}"
            wav = self._as_channels(wav, what).mean(dim=0)  # [S] mono, as audiocraft averages channels
            if wav.shape[-1] < n:
                raise InvalidInputError(
                    f"the {what} lasts {wav.shape[-1] / sr:.2f} s, shorter than the style excerpt of "
                    f"{length} s: give a longer clip, or a shorter style_excerpt_length."
                )
            wavs.append(wav)
        if all(w is None for w in wavs):
            return None
        starts = None
        if start is not None:
            if isinstance(start, bool) or not isinstance(start, int | float) or not 0 <= start < float("inf"):
                raise InvalidInputError(
                    f"style_excerpt_start must be a number of seconds >= 0, got {start!r}."
                )
            at = int(start * sr)
            for i, wav in enumerate(wavs):
                if wav is not None and at + n > wav.shape[-1]:
                    raise InvalidInputError(
                        f"style_excerpt_start {start} s: the excerpt from {start} s to {start + length} s runs "
                        "past the end of the style "
                        f"audio{'' if batch == 1 else f' of clip {i + 1}'} ({wav.shape[-1] / sr:.2f} s): start "
                        "it earlier or shorten it."
                    )
            starts = [at] * batch
        return wavs, n, starts, eval_q

    def _style_tokens(self, styles, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the style conditioner once for the clips with a style: (tokens [B, Ts, style_dim],
        mask [B, Ts]), zero rows for clips without."""
        from .style import excerpt_starts

        wavs, n, starts, eval_q = styles
        present = [i for i, w in enumerate(wavs) if w is not None]
        if starts is None:
            drawn = excerpt_starts([wavs[i].shape[-1] for i in present], n, seed)
            starts = dict(zip(present, drawn, strict=True))
        excerpts = torch.stack([wavs[i][starts[i] : starts[i] + n] for i in present])  # [B', n]
        got = self.style(excerpts, eval_q)  # [B', Ts, style_dim]
        tokens = got.new_zeros(len(wavs), *got.shape[1:])
        tokens[present] = got
        mask = got.new_zeros(len(wavs), got.shape[1])
        mask[present] = 1.0
        return tokens.to(self.device), mask.to(self.device)

    def _stem_remover(self, mode: str):
        """The Demucs stem remover for `mode` ("auto", "on", "off"), loaded once; None when not used."""
        if mode == "off":
            return None
        if self._stems is None:
            from .stems import StemRemover, find_demucs_weights
            from .weights import weights_dir

            folder = find_demucs_weights(weights_dir())
            if folder is None:
                if mode == "on":
                    raise WeightsNotFoundError(
                        f"melody_stems='on' needs Demucs' htdemucs weights (its Hugging Face export: "
                        f"htdemucs.yaml + *.safetensors) in {weights_dir() / 'demucs' / 'htdemucs'}; "
                        "put them there, or use melody_stems='auto' or 'off'."
                    )
                return None
            self._stems = StemRemover(folder, self.device)
        return self._stems

    def _melody_window(self, wav: torch.Tensor, offset_frames: int) -> torch.Tensor:
        """The 30 s of melody under a window starting at offset_frames, looping the melody (audiocraft)."""
        sr = self.config.sample_rate
        start = offset_frames * sr // self.config.frame_rate
        idx = torch.arange(start, start + int(MAX_WINDOW_SECONDS * sr)) % wav.shape[-1]
        return wav[:, idx]

    def _as_channels(self, wav: torch.Tensor, what: str) -> torch.Tensor:
        """[C, S] -> [model channels, S] float32, refused when not finite."""
        if not isinstance(wav, torch.Tensor) or wav.dim() != 2 or wav.shape[-1] == 0:
            raise InvalidInputError(f"the {what} must be a non-empty waveform tensor [channels, samples].")
        check_finite_audio(f"the {what}", wav)
        return convert_channels(wav.float(), self.channels, name=f"the {what}")

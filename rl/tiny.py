"""A tiny Stable Diffusion 3 pipeline with random weights, built in-process without any hub access,
and the locally built tokenizers that every family's tiny model shares.

It has SD3.5-Medium's architecture in miniature: an MM-DiT transformer with RMS qk-norm and one
dual-attention (MMDiT-X) block, 16 latent channels, patch size 2, the SD3 VAE shift/scaling factors,
two CLIP text encoders with projection plus a T5 encoder, and the flow-matching Euler scheduler with
shift 3.0. The tokenizers are built locally from a small word list (a BPE vocabulary for CLIP, a
Unigram vocabulary for T5), so tests and the offline demo run the real diffusers/transformers code
paths at toy sizes. Weights are float32 on the CPU and depend only on ``seed``.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

# Words that get whole-word tokens; anything else falls back to characters (CLIP) or <unk> pieces
# (T5). Enough for the prompts used by the demo, the tests and the synthetic benchmarks.
WORDS = sorted(
    set(
        """a an the of with and in on at to is are one two three four five six seven eight nine ten
        red orange yellow green blue purple pink brown black white gray grey gold silver
        bright dark light colorful pale vivid dim shiny glowing high low contrast
        cat dog bird horse cow sheep fish car bus truck bicycle boat train airplane
        apple banana orange cake pizza cup bottle book clock chair table bed sofa lamp vase
        tree flower house building city street mountain river lake ocean sea beach sky sun moon
        star cloud snow rain forest field garden road bridge person man woman child people
        photo photograph painting drawing sketch picture image portrait landscape scene view
        small large big tiny huge round square left right above below next behind front
        top bottom middle center background foreground sitting standing running flying
        made from wooden metal glass stone paper text sign that says word letter
        night day morning evening sunset sunrise summer winter autumn spring""".split()
    )
)

CLIP_MAX_LENGTH = 77


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary: every byte symbol (plain and word-final), then one merge chain
    per word of WORDS (left to right, longest words first so that most stay whole)."""
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in sorted(WORDS, key=len, reverse=True):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
                tokens.append(left + right)
            left = left + right
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer over WORDS (lower-cased, 77 tokens, padded with <|endoftext|>)."""
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def build_t5_tokenizer() -> T5Tokenizer:
    """A T5 Unigram tokenizer: whole words of WORDS, then single characters as the fallback."""
    chars = sorted(set("".join(WORDS)) | set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"))
    scores = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -2.0}
    scores |= {c: -8.0 for c in chars} | {"▁" + c: -8.5 for c in chars}
    scores |= {"▁" + w: -3.0 for w in WORDS}
    return T5Tokenizer(vocab=list(scores.items()), extra_ids=0, model_max_length=512)


def _clip_text_encoder(tokenizer: CLIPTokenizer, hidden: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config)


def build_t5_encoder(tokenizer: T5Tokenizer, hidden: int) -> T5EncoderModel:
    """The tiny T5 text encoder every tiny family shares (2 gated-GELU layers, 4 heads)."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=hidden,
        d_kv=hidden // 4,
        d_ff=2 * hidden,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


def build_tiny_vae(sample_size: int, scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """A 16-channel, 8x-downsampling ``AutoencoderKL`` at toy width (SD3's and FLUX's VAE layout)
    with the real model's latent scaling and shift."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_sd3(seed: int = 0, large: bool = False) -> StableDiffusion3Pipeline:
    """Build the tiny random-weight SD3 pipeline (float32, CPU, deterministic per ``seed``).

    ``large=True`` gives SD3.5-Large's block layout instead of SD3.5-Medium's: no dual-attention
    (MMDiT-X) block, RMS qk-norm in every block (everything else is shared).

    The VAE downsamples by 4 and the transformer patchifies by 2, so a 64 px image is a 16x16x16
    latent and 64 image tokens; sizes from 32 px up to 128 px (multiples of 8) work. The global
    torch RNG is left untouched.
    """
    clip_l_dim, clip_g_dim, t5_dim, heads, head_dim = 32, 48, 96, 4, 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer, tokenizer_2, tokenizer_3 = (
            build_clip_tokenizer(),
            build_clip_tokenizer(),
            build_t5_tokenizer(),
        )
        text_encoder = _clip_text_encoder(tokenizer, clip_l_dim)
        text_encoder_2 = _clip_text_encoder(tokenizer_2, clip_g_dim)
        text_encoder_3 = build_t5_encoder(tokenizer_3, t5_dim)
        transformer = SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=head_dim,
            num_attention_heads=heads,
            joint_attention_dim=t5_dim,
            caption_projection_dim=heads * head_dim,
            pooled_projection_dim=clip_l_dim + clip_g_dim,
            pos_embed_max_size=16,
            dual_attention_layers=() if large else (0,),
            qk_norm="rms_norm",
        )
        vae = build_tiny_vae(sample_size=64, scaling_factor=1.5305, shift_factor=0.0609)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # freshly built transformers models start in training mode (T5 dropout)
    pipe.set_progress_bar_config(disable=True)
    return pipe

"""A Llama-style tokenizer built offline (no Hub download), for tests, demos and the random presets.

SentencePiece-BPE shape like Llama 2's: `<unk>`=0, `<s>`=1, `</s>`=2, byte fallback through 256
`<0xXX>` tokens (so any text encodes), `▁` word boundaries, BOS added on encode. It is trained on a
small built-in English corpus that covers the synthetic VQA task and the chat template.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"

_CORPUS_WORDS = """
the a an is are was were what which where how many much color colour shape of in on at to and or not
yes no there this that image picture photo question answer single word phrase using it its one two
three four five six seven eight nine ten zero red green blue yellow orange purple pink white black
gray grey brown cyan magenta circle square triangle rectangle star ellipse diamond cross left right
top bottom middle center centre upper lower corner side above below next between small large big
count number shapes objects object see do does you can tell me describe please user assistant system
<|user|> <|assistant|> <|system|> hello thank thanks good bad dog cat man woman person car tree house
sky water grass table chair food people street room day night sun light dark person wearing holding
""".split()


def _corpus() -> list[str]:
    lines = [" ".join(_CORPUS_WORDS)]
    for i in range(0, len(_CORPUS_WORDS), 7):
        lines.append(" ".join(_CORPUS_WORDS[i : i + 7]) + "?")
    lines += [f"There are {n} shapes. The answer is {n}." for n in range(20)]
    lines += ["<|user|>\nWhat is the colour of the shape?</s>\n<|assistant|>\nred</s>\n"] * 3
    return lines


def build_offline_tokenizer(
    vocab_size: int = 1024, pad_vocab_to: int | None = None
) -> PreTrainedTokenizerFast:
    """Base vocabulary only (no `<image>`, no pad): the state of a Llama checkpoint's tokenizer.

    `pad_vocab_to` adds never-produced filler entries so the base vocabulary has an exact size
    (32000 for the TinyLlama-shaped preset), which puts the added tokens at the same ids as a real build.
    """
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Newlines stand alone, as in Llama's tokenizer: a merge such as "|>\nred" would make the chat
    # template's "<|assistant|>\n" + answer tokenise differently in training and in generation.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        ]
    )
    # Llama 2's decoder chain (a Metaspace decoder after Fuse drops every space).
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, min_frequency=1, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if pad_vocab_to is not None:
        tok = _pad_vocab(tok, pad_vocab_to)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=2048,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def _pad_vocab(tok: Tokenizer, size: int) -> Tokenizer:
    import json

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    if len(vocab) > size:
        raise ValueError(f"trained vocabulary has {len(vocab)} entries, more than pad_vocab_to={size}")
    for i in range(len(vocab), size):
        vocab[f"<extra_{i}>"] = i
    return Tokenizer.from_str(json.dumps(spec))


def add_vlm_tokens(tokenizer) -> list[str]:
    """Add `<image>` (special, never split) and a pad token if there is none; returns what was added.

    The caller grows the model's embeddings to `len(tokenizer)`.
    """
    added = []
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        added.append(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        tokenizer.add_tokens([AddedToken(PAD_TOKEN, special=True, normalized=False)], special_tokens=True)
        tokenizer.pad_token = PAD_TOKEN
        added.append(PAD_TOKEN)
    tokenizer.padding_side = "left"
    return added

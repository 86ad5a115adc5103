"""TinyVLMProcessor: SigLIP image processor + Llama tokenizer, one `<image>` placeholder per image.

Each `<image>` in the text is expanded to `image_seq_length` copies of the image token (one per SigLIP
patch, 729 for so400m-384) before tokenising, so the model can scatter image features in place.
The default chat template is TinyLlama-Chat's (`<|user|>`, `<|assistant|>`, `</s>`), with image
parts rendered as `<image>\\n` inside the user turn, as LLaVA's data puts them.
"""

import json
import os

import transformers
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ (eos_token if eos_token is defined else '</s>') + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _flatten_images(images) -> list:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    flat = []
    for item in images:
        flat.extend(_flatten_images(item) if isinstance(item, (list, tuple)) else [item])
    return flat


def _rewrite_json(path: str, edit) -> None:
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(edit(config), f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


class TinyVLMProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    if int(transformers.__version__.split(".")[0]) < 5:  # 5.x infers these and warns when they are set
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"
    valid_kwargs = ["chat_template", "image_seq_length", "image_token"]

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_seq_length: int | None = None,
        image_token: str = "<image>",
        **kwargs,
    ):
        if image_seq_length is None:
            raise ValueError(
                "image_seq_length is required: (image_size // patch_size) ** 2 of the vision tower"
            )
        self.image_seq_length = int(image_seq_length)
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token: add it as a special token first")

    def __call__(self, images=None, text=None, return_tensors=None, images_kwargs=None, **tokenizer_kwargs):
        """text: str or list of str with one `<image>` per image; images: PIL images (or arrays), flat or
        one list per prompt, in the order of the placeholders. Returns input_ids, attention_mask and
        pixel_values `(num_images, 3, H, W)`."""
        if text is None:
            raise ValueError("text is required: put one <image> placeholder where each image goes")
        texts = [text] if isinstance(text, str) else list(text)
        images = _flatten_images(images)
        num_placeholders = [t.count(self.image_token) for t in texts]
        if sum(num_placeholders) != len(images):
            raise ValueError(
                f"The text holds {sum(num_placeholders)} {self.image_token} placeholder(s) "
                f"(per prompt: {num_placeholders}) but {len(images)} image(s) were given"
            )
        expanded = [t.replace(self.image_token, self.image_token * self.image_seq_length) for t in texts]
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, **tokenizer_kwargs))
        data.pop("token_type_ids", None)  # a plain fast tokenizer returns them under 4.x; Llama has no use
        self._check_image_tokens_kept(data["input_ids"], num_placeholders)
        if images:
            pixel_values = self.image_processor(
                images, return_tensors=return_tensors, **(images_kwargs or {})
            )
            data["pixel_values"] = pixel_values["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_image_tokens_kept(self, input_ids, num_placeholders) -> None:
        # Truncation must never cut through an image: the model would then refuse the batch anyway.
        for row, (ids, expected) in enumerate(zip(input_ids, num_placeholders)):
            ids = ids.tolist() if hasattr(ids, "tolist") else ids
            found = sum(1 for i in ids if i == self.image_token_id)
            if found != expected * self.image_seq_length:
                raise ValueError(
                    f"Prompt {row}: {found} image tokens after tokenisation, expected {expected} x "
                    f"{self.image_seq_length}; truncation (max_length) cut through an image"
                )

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]

    def save_pretrained(self, save_directory, **kwargs):
        out = super().save_pretrained(save_directory, **kwargs)
        self._write_portable_configs(save_directory)
        return out

    def _write_portable_configs(self, save_directory) -> None:
        # 5.x nests the image processor inside processor_config.json and writes no
        # preprocessor_config.json; 4.57 needs the latter and would take the nested dict as the image
        # processor itself. Write the layout both read.
        # 5.x also names a plain fast tokenizer `TokenizersBackend`, which 4.57 cannot resolve.
        self.image_processor.save_pretrained(save_directory)
        _rewrite_json(
            os.path.join(save_directory, "processor_config.json"),
            lambda c: {k: v for k, v in c.items() if k not in ("image_processor", "tokenizer")},
        )
        _rewrite_json(
            os.path.join(save_directory, "tokenizer_config.json"),
            lambda c: (
                {**c, "tokenizer_class": "PreTrainedTokenizerFast"}
                if c.get("tokenizer_class") in (None, "TokenizersBackend")
                else c
            ),
        )


__all__ = ["TinyVLMProcessor", "DEFAULT_CHAT_TEMPLATE"]

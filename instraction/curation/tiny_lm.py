"""A tiny random causal LM + tokenizer built offline (no download), for the hf/openai tests and the benchmark.

    path = build_tiny_lm(tmp_path / "tiny-lm")                       # ~40 kB, generates garbage
    path = build_tiny_lm(out, hidden=256, layers=4)                  # the benchmark's (still random) model

The tokenizer is a byte-level BPE trained on the curation prompt and a few captions, wrapped in
``PreTrainedTokenizerFast`` with a chat template, so ``AutoTokenizer`` / ``AutoModelForCausalLM`` load the
directory like any hub checkpoint. Its output is random text: every answer fails the schema, which is exactly
what the quarantine path needs to be tested against.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def build_tiny_lm(path: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, vocab: int = 512,
                  max_positions: int = 2048, seed: int = 0) -> str:
    """Write a random Llama-architecture model and its tokenizer to ``path``; return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from instraction.curation import prompts

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    prompt = prompts.get_prompt("v1")
    corpus = [m["content"] for m in prompt.messages("crack the egg and then whisk it")] + [
        "first chop the onion then stir the sauce", "hey guys welcome back to my channel",
        '{"category": "instructional", "actions": ["crack egg", "whisk egg"], "primary_object": "egg"}',
    ]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def teach_tiny_lm(path: str | Path, captions: list[str], answer: str, steps: int = 300, lr: float = 3e-3,
                  seed: int = 0) -> str:
    """Fine-tune the model at ``path`` (in place) until it answers ``answer`` to the curation prompt (v1) of each
    caption, then stops: the success path of the LLM backends with a real model. Returns ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instraction.curation import prompts

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    prompt = prompts.get_prompt("v1")
    target = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    examples = []
    for caption in captions:
        ids = tok.apply_chat_template(prompt.messages(caption), add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        examples.append((torch.tensor([ids + target]), len(ids)))
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        ids, start = examples[step % len(examples)]
        labels = ids.clone()
        labels[:, :start] = -100  # the loss is on the answer only
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(path)
    return str(path)

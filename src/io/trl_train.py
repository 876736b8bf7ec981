
# ============================================================================================
# Everything below is the same for every export; the settings block above drives it.
# ============================================================================================

import json
import math
import os
import random
import re
import sys


def fail(msg):
    """Stop with a one-line message (no traceback): bad settings or data."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


try:
    import torch
    import transformers
    from accelerate import PartialState
    from datasets import Dataset
    from peft import LoftQConfig, LoraConfig, OFTConfig, PeftModel, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
except ImportError as e:
    fail(f"{e}; install the pinned packages first: pip install -r requirements.txt")

IGNORE = -100
STATE = PartialState()
MAIN = STATE.is_main_process
# Environment overrides for quick checks (tests/fixtures/gen_trl.py): where the adapter goes, and
# WGTUNE_TRL_DUMP=FILE writes the formatted examples as JSON.
OUTPUT_DIR = os.environ.get("WGTUNE_TRL_OUT", OUTPUT_DIR)


def log(msg):
    if MAIN:
        print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Data: wgtune's formatting (src/train/data.rs), record by record.
# --------------------------------------------------------------------------------------------


def read_records(path):
    """(line, record) pairs of a jsonl file or a JSON array (1-based line / position)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        lines = []
        for i, l in enumerate(raw.split(b"\n")):
            try:
                lines.append(l.decode("utf-8"))
            except UnicodeDecodeError as e:
                if ON_BAD_LINE != "skip":
                    fail(f"{path}:{i + 1}: not UTF-8 text (byte {e.start + 1} of the line)")
                log(f"warning: {path}:{i + 1}: skipped: not UTF-8 text")
                lines.append("")
        text = "\n".join(lines)
    text = text.lstrip("\ufeff")
    if text.lstrip().startswith("["):
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{path}:{e.lineno}: invalid JSON: {e.msg}")
        return [(i + 1, (v, None)) for i, v in enumerate(arr)]
    out = []
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            out.append((i + 1, (json.loads(line), None)))
        except json.JSONDecodeError as e:
            out.append((i + 1, (None, f"invalid JSON line: {e.msg}")))
    return out


class Formatter:
    """Records -> (input_ids, labels) exactly as wgtune builds them."""

    EOS_CANDIDATES = ["<|im_end|>", "<end_of_turn>", "</s>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"]

    def __init__(self, tok, vocab_size):
        self.tok = tok
        self.vocab_size = vocab_size
        self.chat = tok is not None and getattr(tok, "chat_template", None) is not None
        self.eos = None
        if tok is not None:
            special = {t.content for t in tok.added_tokens_decoder.values() if t.special}
            for c in self.EOS_CANDIDATES:
                if c in special:
                    self.eos = tok.convert_tokens_to_ids(c)
                    break

    def need_tok(self):
        if self.tok is None:
            raise ValueError("text records need a model with a tokenizer")
        return self.tok

    def encode(self, s, special):
        return self.need_tok()(s, add_special_tokens=special)["input_ids"]

    def render(self, msgs, gen_prompt):
        return self.need_tok().apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt)

    def chat_example(self, msgs, first_scored):
        if not self.chat:
            raise ValueError("chat records need a model with a chat template")
        full = self.render(msgs, False)
        spans = []
        for i, m in enumerate(msgs):
            if i < first_scored or m["role"] != "assistant":
                continue
            if i == 0:
                raise ValueError("a conversation cannot open with an assistant turn")
            start = self.render(msgs[:i], True)
            end = self.render(msgs[: i + 1], False)
            if not (end.startswith(start) and full.startswith(end)):
                raise ValueError("chat template is not prefix-stable, cannot locate assistant turns")
            turn = end[len(start) :].rstrip()
            # wgtune measures spans in UTF-8 bytes; offsets here are characters: same spans.
            spans.append((len(start), len(start) + len(turn)))
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        labels = [
            i if any(a <= s < b for a, b in spans) else IGNORE
            for i, (s, _) in zip(enc["input_ids"], enc["offset_mapping"])
        ]
        return list(enc["input_ids"]), labels

    @staticmethod
    def messages(v, key):
        if not isinstance(v, list) or not v:
            raise ValueError(f"`{key}` must be a non-empty array of {{role, content}} objects")
        out = []
        for i, m in enumerate(v):
            for k in ("role", "content"):
                if not isinstance(m, dict) or not isinstance(m.get(k), str):
                    raise ValueError(f"`{key}[{i}]` needs a string `{k}`")
            out.append({"role": m["role"], "content": m["content"]})
        return out

    def example(self, v):
        if not isinstance(v, dict):
            raise ValueError("record must be a JSON object")
        v = cap_strings(v, max(MAX_SEQ_LEN * 64, 1 << 16))
        if "input_ids" in v:
            ids = v["input_ids"]
            if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
                raise ValueError("`input_ids` must be an array of integers")
            if not ids:
                raise ValueError("`input_ids` is empty")
            bad = [x for x in ids if not 0 <= x < 2**32]
            if bad:
                raise ValueError(f"`input_ids` holds an invalid id {bad[0]}")
            labels = v.get("labels", ids)
            if not isinstance(labels, list) or not all(isinstance(x, int) for x in labels):
                raise ValueError("`labels` must be an array of integers")
            if len(labels) != len(ids):
                raise ValueError(f"`labels` has {len(labels)} entries but `input_ids` has {len(ids)}")
            ex = (list(ids), list(labels))
        elif "messages" in v:
            ex = self.chat_example(self.messages(v["messages"], "messages"), 0)
        elif "prompt" in v:
            p, c = v["prompt"], v.get("completion")
            if isinstance(p, list) or isinstance(c, list):
                msgs = self.messages(p, "prompt")
                first = len(msgs)
                ex = self.chat_example(msgs + self.messages(c, "completion"), first)
            else:
                if not isinstance(p, str):
                    raise ValueError("`prompt` must be a string")
                if not isinstance(c, str):
                    raise ValueError("prompt record needs a string `completion`")
                answer = self.encode(c, False) + ([self.eos] if self.eos is not None else [])
                prompt = self.encode(p, True)
                ex = (prompt + answer, [IGNORE] * len(prompt) + answer)
        elif "text" in v:
            if not isinstance(v["text"], str):
                raise ValueError("`text` must be a string")
            ids = self.encode(v["text"], True)
            ex = (ids, list(ids))
        elif "instruction" in v:
            instr = v["instruction"]
            if not isinstance(instr, str):
                raise ValueError("`instruction` must be a string")
            inp = v.get("input") if isinstance(v.get("input"), str) else ""
            user = instr if not inp else f"{instr}\n{inp}"
            out = v.get("output")
            if not isinstance(out, str):
                raise ValueError("alpaca record needs a string `output`")
            msgs = [{"role": "user", "content": user}]
            prompt_text = self.render(msgs, True) if self.chat else f"{user}\n"
            answer = self.encode(out, False) + ([self.eos] if self.eos is not None else [])
            # A chat template spells the BOS itself; a plain prompt gets the tokenizer's.
            prompt = self.encode(prompt_text, not self.chat)
            ex = (prompt + answer, [IGNORE] * len(prompt) + answer)
        else:
            raise ValueError("record has none of `input_ids`, `messages`, `prompt`, `text`, `instruction`")
        ids, labels = ex
        if not ids:
            raise ValueError("record tokenizes to nothing")
        if self.vocab_size is not None:
            bad = [i for i in ids if i >= self.vocab_size]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the model's vocabulary (size {self.vocab_size})")
            bad = [l for l in labels if l != IGNORE and not 0 <= l < self.vocab_size]
            if bad:
                raise ValueError(
                    f"label {bad[0]} is neither -100 nor a token id of the model's vocabulary (size {self.vocab_size})"
                )
        return ids, labels


def cap_strings(v, budget):
    """Cut strings longer than `budget` UTF-8 bytes (wgtune's bound on huge lines)."""
    if isinstance(v, str):
        b = v.encode("utf-8")
        return b[:budget].decode("utf-8", errors="ignore") if len(b) > budget else v
    if isinstance(v, list):
        return [cap_strings(x, budget) for x in v]
    if isinstance(v, dict):
        return {k: cap_strings(x, budget) for k, x in v.items()}
    return v


def scored(labels):
    """Labels the causal loss counts: not -100, at positions 1..."""
    return sum(1 for l in labels[1:] if l != IGNORE)


def load_examples(path, fmt, records=None):
    """Tokenize, truncate to MAX_SEQ_LEN, drop unscored rows; bad records stop or are skipped."""
    examples, truncated, dropped, skipped = [], 0, 0, 0
    for line, (v, err) in records if records is not None else read_records(path):
        try:
            if err is not None:
                raise ValueError(err)
            ids, labels = fmt.example(v)
        except ValueError as e:
            if ON_BAD_LINE == "skip":
                log(f"warning: {path}:{line}: skipped: {e}")
                skipped += 1
                continue
            fail(f"{path}:{line}: {e}")
        if len(ids) > MAX_SEQ_LEN:
            ids, labels = ids[:MAX_SEQ_LEN], labels[:MAX_SEQ_LEN]
            truncated += 1
        if scored(labels) == 0:
            dropped += 1
            continue
        examples.append((ids, labels))
    if not examples:
        fail(f"{path}: no usable examples ({skipped} records skipped, {dropped} without scored tokens)")
    if truncated or dropped:
        log(f"data: {len(examples)} examples ({truncated} truncated to {MAX_SEQ_LEN} tokens, {dropped} dropped with nothing to score)")
    return examples


def pack(examples):
    """wgtune's packing: greedy, in order, never splitting an example."""
    rows = []
    for ids, labels in examples:
        if rows and len(rows[-1][0]) + len(ids) <= MAX_SEQ_LEN:
            rows[-1] = (rows[-1][0] + ids, rows[-1][1] + labels)
        else:
            rows.append((list(ids), list(labels)))
    return rows


def split_eval(examples, fraction, seed):
    """wgtune's eval count (ceil(fraction * n), at least 1, never all); the CHOICE of examples is a
    Python-seeded one, not wgtune's (its ChaCha12 shuffle has no Python twin)."""
    n = len(examples)
    k = 0 if fraction <= 0 or n < 2 else min(max(math.ceil(fraction * n), 1), n - 1)
    held = set(random.Random(seed).sample(range(n), k))
    train = [e for i, e in enumerate(examples) if i not in held]
    ev = [e for i, e in enumerate(examples) if i in held]
    return train, ev


def to_dataset(examples):
    return Dataset.from_dict({"input_ids": [e[0] for e in examples], "labels": [e[1] for e in examples]})


def per_device_split(per_step, cap):
    """(per-device batch, accumulation) so that batch x accumulation x processes = `per_step`, the
    examples (or completions) wgtune puts in one optimizer step, with a per-device batch <= `cap`."""
    world = STATE.num_processes
    if per_step % world:
        fail(
            f"{per_step} rows per optimizer step cannot be shared by {world} processes; change the batch "
            f"settings so the rows per step are a multiple of the process count"
        )
    for ga in range(1, per_step // world + 1):
        if (per_step // world) % ga == 0 and per_step // world // ga <= cap:
            return per_step // world // ga, ga
    return 1, per_step // world


# --------------------------------------------------------------------------------------------
# Model and adapter.
# --------------------------------------------------------------------------------------------

DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(PRECISION)
if DTYPE is None:
    fail(f"PRECISION {PRECISION!r} must be fp32, bf16 or fp16")


def load_tokenizer():
    kw = {"gguf_file": MODEL_GGUF_FILE} if MODEL_GGUF_FILE else {}
    try:
        return AutoTokenizer.from_pretrained(MODEL, **kw)
    except Exception as e:  # a model folder without a tokenizer (token-id data only)
        log(f"note: no tokenizer for {MODEL} ({type(e).__name__}); token-id records only")
        return None


def load_base():
    kw = {"dtype": DTYPE}
    if MODEL_GGUF_FILE:
        kw["gguf_file"] = MODEL_GGUF_FILE
    if QUANTIZE == "nf4" and INIT != "loftq":
        from transformers import BitsAndBytesConfig

        # wgtune's NF4: bitsandbytes NF4, blocksize 64, fp32 absmax (no double quantization), on
        # every decoder-block linear (not the embeddings or lm_head).
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=False,
            bnb_4bit_compute_dtype=DTYPE,
            bnb_4bit_quant_storage=torch.uint8,
        )
        kw["device_map"] = {"": STATE.local_process_index}
    return AutoModelForCausalLM.from_pretrained(MODEL, **kw)


def adapter_config():
    if METHOD in ("oft", "qoft"):
        # OFTv2 (input-centric) is peft's implementation; wgtune's oft_v1 flag only changes how the
        # same rotation is computed.
        return OFTConfig(
            r=0,
            oft_block_size=OFT_BLOCK_SIZE,
            use_cayley_neumann=USE_CAYLEY_NEUMANN,
            num_cayley_neumann_terms=NUM_CAYLEY_NEUMANN_TERMS,
            coft=COFT,
            eps=EPS,
            block_share=BLOCK_SHARE,
            module_dropout=0.0,
            target_modules=TARGET_MODULES,
            bias="none",
            task_type="CAUSAL_LM",
        )
    kw = {}
    if INIT == "loftq":
        kw = {"init_lora_weights": "loftq", "loftq_config": LoftQConfig(loftq_bits=4, loftq_iter=LOFTQ_ITERS)}
    return LoraConfig(
        r=R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        use_rslora=USE_RSLORA,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
        **kw,
    )


def nf4_round_trip_other_linears(model):
    """LoftQ in wgtune makes every decoder-block linear NF4: the targets hold LoftQ's Q (peft does
    that), the others plain NF4 (done here, blocksize 64, bitsandbytes on the GPU)."""
    import bitsandbytes.functional as bnbf

    targets = set(TARGET_MODULES)
    for name, mod in model.named_modules():
        if ".layers." in name and isinstance(mod, torch.nn.Linear) and name.split(".")[-1] not in targets:
            w = mod.weight.data
            q, st = bnbf.quantize_4bit(w.to("cuda", torch.float32), blocksize=64, quant_type="nf4")
            mod.weight.data = bnbf.dequantize_4bit(q, st).to(w.device, w.dtype)


def with_adapter(model):
    if INIT_ADAPTER:
        # wgtune continues from this folder with the folder's own settings; so does peft.
        return PeftModel.from_pretrained(model, INIT_ADAPTER, is_trainable=True)
    if QUANTIZE == "nf4" and INIT != "loftq":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=GRADIENT_CHECKPOINTING)
    torch.manual_seed(SEED)
    m = get_peft_model(model, adapter_config())
    if INIT == "loftq":
        nf4_round_trip_other_linears(m)
    return m


def common_args(lr, steps, seed, per_device, ga):
    sched = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[LR_SCHEDULER]
    return dict(
        output_dir=OUTPUT_DIR,
        learning_rate=lr,
        max_steps=steps,
        lr_scheduler_type=sched,
        warmup_steps=WARMUP_STEPS,
        weight_decay=WEIGHT_DECAY,
        adam_beta1=ADAM_BETA1,
        adam_beta2=ADAM_BETA2,
        adam_epsilon=ADAM_EPSILON,
        optim="adamw_torch",
        max_grad_norm=MAX_GRAD_NORM if MAX_GRAD_NORM > 0 else 0.0,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=ga,
        seed=seed,
        data_seed=seed,
        bf16=PRECISION == "bf16",
        fp16=PRECISION == "fp16",
        gradient_checkpointing=GRADIENT_CHECKPOINTING,
        logging_steps=1,
        report_to="none",
        save_strategy="steps" if SAVE_EVERY > 0 else "no",
        save_steps=SAVE_EVERY if SAVE_EVERY > 0 else 500,
        average_tokens_across_devices=True,
    )


class Metrics(TrainerCallback):
    """One JSON line per logged step in OUTPUT_DIR/metrics.jsonl (as wgtune's metrics.jsonl)."""

    def __init__(self, stage):
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kw):
        if not MAIN or not logs:
            return
        line = {"stage": self.stage, "step": state.global_step, **logs}
        os.makedirs(OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(OUTPUT_DIR, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


def save_adapter(model):
    if MAIN:
        model.save_pretrained(OUTPUT_DIR, selected_adapters=["default"])
        log(f"adapter       {OUTPUT_DIR}/adapter_model.safetensors (peft); load it with: wgtune eval --adapter {OUTPUT_DIR}")


# --------------------------------------------------------------------------------------------
# SFT (lora, qlora, oft, qoft).
# --------------------------------------------------------------------------------------------


def run_sft():
    tok = load_tokenizer()
    base = load_base()
    fmt = Formatter(tok, base.config.vocab_size)
    examples = load_examples(DATA, fmt)
    if os.environ.get("WGTUNE_TRL_DUMP") and MAIN:
        # The formatted examples, for comparing with wgtune's own (tests/fixtures/gen_trl.py).
        with open(os.environ["WGTUNE_TRL_DUMP"], "w") as f:
            json.dump([{"input_ids": i, "labels": l} for i, l in examples], f)
    if PACKING:
        examples = pack(examples)
    train, ev = split_eval(examples, EVAL_SPLIT, SEED)
    if not train:
        fail(f"{DATA}: no training examples left after the eval split")
    n = len(train)
    bs = min(max(BATCH_SIZE, 1), n)
    accum = min(max(GRAD_ACCUM, 1), -(-n // bs))
    total = STEPS if STEPS is not None else -(-EPOCHS * n // (bs * accum))
    per_device, ga = per_device_split(bs * accum, bs)
    log(f"data          {n} training / {len(ev)} eval examples; {total} steps of {bs}x{accum} ({STATE.num_processes} process(es): {per_device}x{ga} each)")
    model = with_adapter(base)
    eval_kw = {}
    if ev:
        eval_kw = dict(eval_strategy="steps" if EVAL_EVERY > 0 else "no", eval_steps=EVAL_EVERY if EVAL_EVERY > 0 else None)
    cfg = SFTConfig(
        **common_args(LR, total, SEED, per_device, ga),
        **eval_kw,
        max_length=MAX_SEQ_LEN,
        packing=False,  # packed above, as wgtune packs
        train_sampling_strategy="random" if SHUFFLE else "sequential",
        dataset_num_proc=None,
    )
    if tok is None:
        fail("SFTTrainer needs a tokenizer (for padding): give MODEL a tokenizer")
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(ev) if ev else None,
        processing_class=tok,
        callbacks=[Metrics("sft")],
    )
    if ev:
        log(f"eval loss before training: {trainer.evaluate()['eval_loss']:.4f}")
    trainer.train()
    if ev:
        log(f"eval loss after training: {trainer.evaluate()['eval_loss']:.4f}")
    save_adapter(trainer.accelerator.unwrap_model(trainer.model))
    if INIT == "loftq" and MAIN:
        # The adapter belongs to the LoftQ base (Q), not to the original weights: keep it.
        trainer.accelerator.unwrap_model(trainer.model).get_base_model().save_pretrained(os.path.join(OUTPUT_DIR, "base-loftq"))
        tok.save_pretrained(os.path.join(OUTPUT_DIR, "base-loftq"))


# --------------------------------------------------------------------------------------------
# LoRA-PAR: stage 1 SFT over the System-1 elements, stage 2 GRPO over the System-2 elements.
# --------------------------------------------------------------------------------------------


def text_of(v, key):
    x = v.get(key)
    if isinstance(x, bool):
        return None
    if isinstance(x, str):
        return x
    if isinstance(x, (int, float)):
        return json.dumps(x)
    return None


def join_contents(turns, keep):
    return "\n".join(
        t["content"] for t in turns if isinstance(t, dict) and keep(t.get("role") or "") and isinstance(t.get("content"), str)
    )


def prompt_text(v):
    """The task text (src/par/classify.rs `prompt_text`)."""
    p = text_of(v, "prompt")
    if p is not None:
        return p
    if isinstance(v.get("prompt"), list):
        return join_contents(v["prompt"], lambda r: True)
    if isinstance(v.get("messages"), list):
        return join_contents(v["messages"], lambda r: r != "assistant")
    q = text_of(v, "question")
    if q is not None:
        p = text_of(v, "passage")
        return f"{p.strip()} {q.strip()}" if p is not None else q.strip()
    i = text_of(v, "instruction")
    if i is not None:
        inp = text_of(v, "input") or ""
        return i if not inp else f"{i}\n{inp}"
    return text_of(v, "text")


def answer_text(v):
    for key in ("answer", "output", "completion"):
        a = text_of(v, key)
        if a is not None:
            return a
    if isinstance(v.get("completion"), list):
        return join_contents(v["completion"], lambda r: True)
    for t in reversed(v.get("messages") or []):
        if isinstance(t, dict) and t.get("role") == "assistant" and isinstance(t.get("content"), str):
            return t["content"]
    return None


def sft_record(v):
    if any(k in v for k in ("input_ids", "messages", "prompt", "text", "instruction")):
        return v
    p = prompt_text(v)
    if p is None:
        raise ValueError("record has none of `input_ids`, `messages`, `prompt`, `text`, `instruction`, `question`")
    a = answer_text(v)
    if a is None:
        raise ValueError("a `question` record needs an `answer`")
    return {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}


def parse_number(tok):
    t = tok.strip().lstrip("$").rstrip(".%,").replace(",", "")
    if not t or not any(c.isdigit() for c in t):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def numbers(s):
    """Number spans of `s` as (offset, value), as src/par/grpo.rs scans them."""
    out, i, b = [], 0, s
    while i < len(b):
        c = b[i]
        start_digit = c.isascii() and c.isdigit() or (
            c == "-" and i + 1 < len(b) and b[i + 1].isascii() and b[i + 1].isdigit() and (i == 0 or not (b[i - 1].isascii() and b[i - 1].isalnum()))
        )
        if not start_digit:
            i += 1
            continue
        start = i
        i += 1
        while i < len(b) and (
            (b[i].isascii() and b[i].isdigit()) or (b[i] in ".," and i + 1 < len(b) and b[i + 1].isascii() and b[i + 1].isdigit())
        ):
            i += 1
        v = parse_number(b[start:i])
        if v is not None:
            out.append((start, v))
    return out


def numbers_equal(a, b):
    return abs(a - b) <= 1e-6 * max(abs(b), 1.0)


def score(completion, reference):
    """wgtune's verifiable reward (src/par/grpo.rs `Reward::score`): 1.0 or 0.0."""
    if GRPO_REWARD == "number":
        a = numbers(completion)
        b = numbers(reference.lstrip())
        ok = bool(a and b) and numbers_equal(a[-1][1], b[0][1])
    elif GRPO_REWARD == "exact":
        ok = completion.strip() == reference.strip()
    else:
        # Python `re` stands in for wgtune's Oniguruma regex (same results for common patterns).
        found = [m.group(0) for m in re.finditer(GRPO_REWARD[len("regex:") :], completion)]
        ok = False
        if found:
            f = found[-1].strip()
            a, b = parse_number(f), numbers(reference.lstrip())
            ok = numbers_equal(a, b[0][1]) if a is not None and b else f == reference.strip()
    return 1.0 if ok else 0.0


def reward_fn(prompts, completions, reference, **kwargs):
    return [score(c if isinstance(c, str) else c[-1]["content"], r) for c, r in zip(completions, reference)]


def load_stage_masks(model):
    """{parameter: (stage-1 mask, stage-2 mask)} from the masks wgtune wrote for this run."""
    path = os.path.join(PAR_DIR, "par_stage_masks.safetensors")
    if not os.path.exists(path):
        path = os.path.join(PAR_DIR, "par_masks.safetensors")
        if not os.path.exists(path):
            fail(
                f"{PAR_DIR}: no par_stage_masks.safetensors; compute the split and masks with wgtune first: "
                f"wgtune train --config <run.toml> --sft-steps 0 --rl-steps 0 --out {PAR_DIR}"
            )
        if PAR_ALPHA != 1.0 or PAR_BETA != 1.0:
            fail(f"{path}: element codes alone fix the stage masks only for par_alpha = par_beta = 1; re-run wgtune for par_stage_masks.safetensors")
    masks = {}
    with safe_open(path, "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    params = {n.replace(".default.", "."): p for n, p in model.named_parameters() if ".default." in n}
    if set(stored) != set(params):
        missing = sorted(set(params) - set(stored))[:1] + sorted(set(stored) - set(params))[:1]
        fail(f"{path}: the masks do not match this adapter's tensors (e.g. {missing}); were they written for this run?")
    for key, p in params.items():
        c = stored[key].to(torch.int64)
        if tuple(c.shape) != tuple(p.shape):
            fail(f"{path}: mask {key} has shape {tuple(c.shape)}, the adapter tensor {tuple(p.shape)}")
        # bit 0: stage 1 updates the element, bit 1: stage 2 does (par_masks codes: 1 S1-only,
        # 2 S2-only, 3 shared, which is the same thing when alpha = beta = 1).
        masks[p] = ((c & 1).to(p.dtype).to(p.device), ((c >> 1) & 1).to(p.dtype).to(p.device))
    return masks


class FreezeMasked(TrainerCallback):
    """Gradient hooks g * mask on every adapter tensor, and after each optimizer step the masked
    elements put back to their values at the start of the stage: no update, no weight decay, as
    wgtune's masked AdamW (elements outside the mask stay bit-identical)."""

    def __init__(self, masks, stage):
        self.masks = [(p, m[stage]) for p, m in masks.items()]
        self.frozen = [p.detach().clone() for p, _ in self.masks]
        self.hooks = [p.register_hook(lambda g, m=m: g * m) for p, m in self.masks]

    def on_optimizer_step(self, args, state, control, **kw):
        with torch.no_grad():
            for (p, m), f in zip(self.masks, self.frozen):
                p.copy_(torch.where(m.bool(), p, f))

    def remove(self):
        for h in self.hooks:
            h.remove()


def split_items():
    """System-1 and System-2 records, labelled by wgtune's par_split.jsonl for this run."""
    path = os.path.join(PAR_DIR, "par_split.jsonl")
    if not os.path.exists(path):
        fail(f"{path}: not found; compute the split and masks with wgtune first (see README.md)")
    labels = []
    with open(path) as f:
        for l in f:
            if l.strip():
                labels.append(json.loads(l))
    files = [DATA] + ([RL_DATA] if RL_DATA else [])
    records = [(p, line, v, err) for p in files for line, (v, err) in read_records(p)]
    if len(records) != len(labels) or any(r[1] != l["line"] for r, l in zip(records, labels)):
        fail(f"{path}: does not list the records of {', '.join(files)} (written for other data?)")
    return [(p, line, v, err, l["system"]) for (p, line, v, err), l in zip(records, labels)]


def run_par():
    tok = load_tokenizer()
    if tok is None:
        fail("LoRA-PAR needs a model with a tokenizer")
    base = load_base()
    fmt = Formatter(tok, base.config.vocab_size)
    sft1, rl = [], []
    dropped = 0
    for path, line, v, err, system in split_items():
        try:
            if err is not None:
                raise ValueError(err)
            ids, labels = fmt.example(sft_record(v))
            ids, labels = ids[:MAX_SEQ_LEN], labels[:MAX_SEQ_LEN]
            if scored(labels) == 0:
                dropped += 1
                continue
            if system == 1:
                sft1.append((ids, labels))
                continue
            task, ref = prompt_text(v), answer_text(v)
            if task is None:
                raise ValueError("a System-2 record needs a prompt (`prompt`, `question`, `instruction`, `messages` or `text`)")
            if ref is None:
                raise ValueError("a System-2 record needs a reference answer for the reward (`answer`, `output` or `completion`)")
            text = fmt.render([{"role": "user", "content": task}], True) if fmt.chat else f"{task}\n"
            ids = tok(text, add_special_tokens=not fmt.chat)["input_ids"]
            if len(ids) > MAX_SEQ_LEN:
                # wgtune keeps the last MAX_SEQ_LEN prompt tokens; TRL takes text, so the cut is
                # decoded back to text (re-tokenization may differ at the cut).
                text = tok.decode(ids[-MAX_SEQ_LEN:])
            elif fmt.chat and tok.bos_token and text.startswith(tok.bos_token) and tok("x")["input_ids"][:1] == [tok.bos_token_id]:
                # TRL tokenizes prompts with the tokenizer's own BOS; the template already has it.
                text = text[len(tok.bos_token) :]
            rl.append({"prompt": text, "reference": ref})
        except ValueError as e:
            if ON_BAD_LINE == "skip":
                log(f"warning: {path}:{line}: skipped: {e}")
                continue
            fail(f"{path}:{line}: {e}")
    if dropped:
        log(f"data: {dropped} examples dropped with nothing to score within max_seq_len {MAX_SEQ_LEN}")
    # Held-out System-2 items for the greedy accuracy check (a Python-seeded choice, not wgtune's).
    n_eval = min(RL_EVAL, max(len(rl) - 1, 0))
    held = set(random.Random(SEED ^ 0x5EED).sample(range(len(rl)), n_eval))
    rl_eval = [x for i, x in enumerate(rl) if i in held]
    rl = [x for i, x in enumerate(rl) if i not in held]
    if not sft1 or not rl:
        fail(f"lora-par needs examples of both systems (System 1: {len(sft1)}, System 2 for training: {len(rl)})")

    if QUANTIZE == "nf4":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=GRADIENT_CHECKPOINTING)
    torch.manual_seed(SEED)
    model = get_peft_model(base, adapter_config())
    masks = load_stage_masks(model)
    bs, accum = max(BATCH_SIZE, 1), max(GRAD_ACCUM, 1)
    sft_steps = SFT_STEPS if SFT_STEPS is not None else -(-len(sft1) // (bs * accum))
    rl_steps = RL_STEPS if RL_STEPS is not None else -(-len(rl) // GRPO_PROMPTS)

    # Stage 1: SFT on System-1 examples, System-1 elements only.
    freeze = FreezeMasked(masks, 0)
    per_device, ga = per_device_split(bs * accum, bs)
    log(f"stage 1 (SFT): {sft_steps} steps of {bs}x{accum} on {len(sft1)} System-1 examples, lr {SFT_LR:.1e}")
    cfg = SFTConfig(
        **common_args(SFT_LR, sft_steps, SEED, per_device, ga),
        max_length=MAX_SEQ_LEN,
        packing=False,
        train_sampling_strategy="random" if SHUFFLE else "sequential",
    )
    cfg.output_dir = os.path.join(OUTPUT_DIR, "stage1")
    sft = SFTTrainer(model=model, args=cfg, train_dataset=to_dataset(sft1), processing_class=tok, callbacks=[Metrics("sft"), freeze])
    if sft_steps > 0:
        sft.train()
    freeze.remove()
    model = sft.accelerator.unwrap_model(sft.model)

    if rl_eval:
        log(f"held-out System-2 accuracy before stage 2: {greedy_accuracy(model, tok, rl_eval):.3f} ({len(rl_eval)} items, greedy)")

    # Stage 2: GRPO on System-2 prompts, System-2 elements only; the KL reference is the stage-1
    # policy (TRL copies a PeftModel's adapter into a frozen "ref" adapter when beta > 0).
    from trl import GRPOConfig, GRPOTrainer

    if GRPO_TEMPERATURE <= 0:
        fail("grpo_temperature 0 (greedy) has no TRL equivalent: GRPOTrainer samples; set a positive temperature")
    freeze = FreezeMasked(masks, 1)
    completions = GRPO_PROMPTS * GRPO_GROUP
    per_device, ga = per_device_split(completions, completions)
    log(f"stage 2 (GRPO): {rl_steps} steps of {GRPO_PROMPTS} prompt(s) x {GRPO_GROUP} completions on {len(rl)} System-2 prompts, lr {RL_LR:.1e}")
    args = common_args(RL_LR, rl_steps, SEED + 1, per_device, ga)
    args["output_dir"] = os.path.join(OUTPUT_DIR, "stage2")
    gcfg = GRPOConfig(
        **args,
        num_generations=GRPO_GROUP,
        max_completion_length=GRPO_MAX_NEW_TOKENS,
        temperature=GRPO_TEMPERATURE,
        top_p=1.0,
        top_k=0,
        beta=GRPO_KL,
        epsilon=GRPO_CLIP,
        num_iterations=1,
        loss_type="dapo",  # sum over every completion token of the step / their number
        scale_rewards="group",  # (r - mean) / (std + 1e-4), unbiased std within the group
        shuffle_dataset=SHUFFLE,
    )
    grpo = GRPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=gcfg,
        train_dataset=Dataset.from_list(rl),
        processing_class=tok,
        callbacks=[Metrics("rl"), freeze],
    )
    if rl_steps > 0:
        grpo.train()
    freeze.remove()
    model = grpo.accelerator.unwrap_model(grpo.model)
    if rl_eval:
        log(f"held-out System-2 accuracy after stage 2: {greedy_accuracy(model, tok, rl_eval):.3f} ({len(rl_eval)} items, greedy)")
    save_adapter(model)


@torch.no_grad()
def greedy_accuracy(model, tok, items):
    model.eval()
    hits = 0.0
    for it in items:
        enc = tok(it["prompt"], return_tensors="pt").to(model.device)
        out = model.generate(**enc, do_sample=False, max_new_tokens=GRPO_MAX_NEW_TOKENS)
        hits += score(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True), it["reference"])
    model.train()
    return hits / max(len(items), 1)


if __name__ == "__main__":
    transformers.set_seed(SEED)
    if IS_PAR:
        run_par()
    else:
        run_sft()

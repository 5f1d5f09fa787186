"""jaxalign's DPO step alone (no TRL): the workloads of ``dpo_vs_trl.py``, read in order.

Runs ``STEPS`` optimizer steps through ``common.JaxalignStepper`` and prints each
step's wall, compile and run seconds and its batch census, then one ``SUMMARY``
line: the wall seconds of all steps (``total_s``, compiles included) and their
compile seconds, the median run seconds of the steps that met no new shape, the
mean over all steps, the decoder slots (``R * L`` summed), and the vocab
projection's positions against the completion tokens. With ``STEPS`` past the
benchmarks' 13, the shape ladder is fitted for a longer run and keeps more
levels (``jaxalign/data/shapes.py``). For A/B runs of two checkouts on a machine
without TRL.

Usage::

    python benchmarks/dpo_step_time.py hh|builtin STEPS
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import side_by_side  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("hh", "builtin") or not sys.argv[2].isdigit():
        raise SystemExit("usage: python benchmarks/dpo_step_time.py hh|builtin STEPS")
    wl = sys.argv[1]
    steps = int(sys.argv[2])
    spec = {"hh": dict(pairs=8, max_length=512, hidden=512, layers=8, heads=8, intermediate=1376),
            "builtin": dict(pairs=16, max_length=128, hidden=256, layers=4, heads=4, intermediate=688)}[wl]
    common.start_like_the_jaxalign_command()
    common.quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if wl == "hh":
            paths = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
            tok = common.gpt2_tokenizer(paths[common.GPT2_TOKENIZER])
            rows, _ = common.hh_pairs(paths[common.HH_FILE], tok, spec["max_length"])
            data_spec = str(common.write_jsonl(tmp / "hh.jsonl", rows)); tok_spec = str(paths[common.GPT2_TOKENIZER])
            special = dict(pad_token_id=50256, bos_token_id=50256, eos_token_id=50256)
        else:
            from jaxalign.data import load_tokenizer
            tok = load_tokenizer("builtin"); data_spec, tok_spec = "builtin:preferences", "builtin"
            special = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        mc = dict(vocab_size=len(tok), hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
                  num_attention_heads=spec["heads"], num_key_value_heads=spec["heads"], intermediate_size=spec["intermediate"],
                  max_position_embeddings=max(256, 2 * spec["max_length"]), tie_word_embeddings=False, **special)
        common.build_llama(tmp / "policy", head="causal_lm", seed=0, **mc)
        tr = side_by_side.jaxalign_dpo_trainer(tmp / "run", tmp / "policy", tok_spec, data_spec, spec["pairs"],
                                         spec["max_length"], 1e-6, steps)
        st = common.JaxalignStepper(tr)
        started = time.perf_counter()
        recs = [st.step() for _ in range(steps)]
        total = time.perf_counter() - started
        for r in recs:
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in ("seconds", "compile_seconds", "run_seconds", "compiled", "rows", "length", "target_slots", "lm_head_slots", "completion_tokens")})
        warm = [r["run_seconds"] for r in recs if not r["compiled"]]
        allrun = [r["run_seconds"] for r in recs]
        print("SUMMARY", wl, json.dumps({"steps": steps, "compiled_steps": sum(r["compiled"] for r in recs),
              "total_s": total, "compile_s": sum(r["compile_seconds"] for r in recs),
              "decoder_slots": sum(r["rows"] * r["length"] for r in recs),
              "median_run_s_uncompiled": sorted(warm)[len(warm)//2] if warm else None,
              "mean_run_s_all": sum(allrun)/len(allrun), "lm_head_slots": sum(r["lm_head_slots"] for r in recs),
              "completion_tokens": sum(r["completion_tokens"] for r in recs), "load": os.getloadavg()}))


if __name__ == "__main__":
    main()

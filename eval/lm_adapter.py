"""lm-eval `LM` for the kit's models: `--model minimodel --model_args pretrained=RUN_DIR`.

Works on anything eval.models loads (native run dirs, Hugging Face dirs with a sentencepiece
tokenizer, base + adapter). Scoring shares eval.scoring with eval.bpb, so lm-eval's
bits_per_byte on a held-out text equals `python -m eval.bpb` on it (same context and stride).
"""
from __future__ import annotations

import lm_eval.models  # noqa: F401  built-ins ("hf", ...) first: registering ours must not hide them
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from eval.generations import continue_ids
from eval.models import load_model, small_model_threads
from eval.scoring import score_docs, score_windows


@register_model("minimodel")
class MiniModelLM(LM):
    def __init__(self, pretrained: str, adapter: str | None = None, batch_size: int | str = 16,
                 max_length: int | None = None, stride: int | None = None, device: str | None = None,
                 max_gen_toks: int = 128, **_ignored):
        super().__init__()
        self.lm = load_model(pretrained, adapter, device or "auto", int(max_length) if max_length else None)
        self.batch = int(batch_size) if str(batch_size).isdigit() else 16  # "auto" -> our default
        self.stride = int(stride) if stride else None
        self.max_gen_toks = int(max_gen_toks)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.lm.tokenizer, "path", self.lm.name))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # trailing spaces belong to the continuation, and the pair is encoded whole so that
        # merges across the boundary match how the text is tokenised as one string
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.lm.prefix_id], self.lm.tokenizer.encode(continuation)
        whole = self.lm.tokenizer.encode(context + continuation)
        ctx = self.lm.tokenizer.encode(context)
        return [self.lm.prefix_id] + ctx, whole[len(ctx):]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        windows = []
        for req in requests:
            ctx, cont = self._encode_pair(*req.args)
            toks = (ctx + cont)[-(self.lm.context + 1):]  # keep the continuation, drop old context
            windows.append((toks, min(len(cont), len(toks) - 1)))
        with small_model_threads(self.lm):
            return score_windows(self.lm, windows, self.batch)

    def loglikelihood_rolling(self, requests) -> list[float]:
        docs = [self.lm.tokenizer.encode(req.args[0]) for req in requests]
        with small_model_threads(self.lm):
            return score_docs(self.lm, docs, self.lm.context, self.stride, self.batch)

    def generate_until(self, requests) -> list[str]:
        out = []
        with small_model_threads(self.lm):
            for req in requests:
                context, kw = req.args
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                limit = int(kw.get("max_gen_toks", self.max_gen_toks))
                ids = [self.lm.prefix_id] + self.lm.tokenizer.encode(context)
                ids = ids[-max(self.lm.context - limit, 1):]
                temp = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
                text = self.lm.tokenizer.decode(continue_ids(self.lm, ids, limit, temp,
                                                             float(kw.get("top_p", 1.0))))
                for stop in until:
                    text = text.split(stop)[0]
                out.append(text)
        return out

"""Watch the KV state live during generation: O(1) work per new token, scored as the model writes.

The recurrent form of the state is what makes this cheap: each new token's phi(k)^T v and phi(k)
are added to the running S, z of every monitored layer (never recomputing over the context), and a
detector fitted by a study scores the state every ``every`` steps. A threshold calibrated to a
false-positive rate on normal data can stop the generation at the first step that crosses it.

A monitor is saved as a folder (:mod:`kvstate.monitor.spec`); it is fitted by :mod:`kvstate.monitor.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .._options import Span, check_option
from ..capture import AttentionCall, Batch, KVCapture, encode_all, input_device, make_batch
from ..deploy import Detector
from ..detect import threshold_for_fpr
from ..models import LoadedModel
from ..representations import COMPRESSED, RepresentationSettings, decay_of, kv_features, parse_kv_name
from ..representations.readout import kv_readout
from ..state import RecurrentState, compression_matrices, for_layer, get_phi
from .aggregate import Aggregate, Aggregator
from .fold import affine_form
from .spec import MonitorSpec, spec_from_detector

__all__ = ["Monitor", "MonitorResult"]


@dataclass
class MonitorResult:
    """Generated sequences with the score after every step."""

    sequences: torch.Tensor  # (B, prompt + new) token ids
    texts: list[str]
    scores: np.ndarray  # (B, steps): score of the state after each step (nan where not scored)
    stopped_at: list[int | None]  # first step whose aggregate crossed the threshold, per row
    prompt_len: int
    aggregates: np.ndarray | None = None  # (B, steps): the streaming aggregate the threshold applies to
    alive: np.ndarray | None = None  # (B, steps): the row was still generating at that step

    @property
    def peak(self) -> np.ndarray:
        """(B,) each reply's final aggregate (its highest score under ``aggregate="max"``)."""
        agg = self.aggregates if self.aggregates is not None else self.scores
        out = np.full(agg.shape[0], np.nan)
        for i, row in enumerate(agg):
            seen = row[~np.isnan(row)]
            if seen.size:
                out[i] = seen.max() if self.aggregates is None else seen[-1]
        return out


class _Stop:
    """A transformers StoppingCriteria: scores the running state after each step."""

    def __init__(self, monitor: "Monitor"):
        self.m = monitor

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return self.m._step(input_ids)


class Monitor:
    """Running KV state + detector over ``model.generate``.

    Args:
        lm: the model. spec, detector: from a study (:func:`load_monitor`) or made by hand.
        every: score every n steps (other steps report nan). stop: end a row's generation at the
            first scored step whose aggregate is over ``spec.threshold``. on_step:
            ``callback(step, new_token_ids, scores)``.
        aggregate, alpha, window: how per-step scores are folded into the per-reply value the
            threshold applies to (:class:`~kvstate.monitor.aggregate.Aggregator`; default ``max``:
            the reply is flagged at its first step over the threshold).
        span, skip_first: token selection of the prompt (as in :func:`kvstate.extract`); generated
            tokens always count.
        fold: score an affine detector (logistic, diffmean, RepE reading vector, any affine
            pipeline) as one dot product with the unprojected read-out (:mod:`kvstate.monitor.fold`)
            instead of projecting the state and calling the detector at every scored step; the
            scores are the same to float rounding. A detector that is not a scikit-learn estimator
            (reading w off it calls it on ~max_dim rows) or fails the affinity check is scored the
            dense way. ``scoring`` records which path runs (``"folded"`` or ``"dense"``,
            set at the first scored step).
    """

    def __init__(self, lm: LoadedModel, spec: MonitorSpec, detector=None, *, every: int = 1, stop: bool = False,
                 on_step: Callable[[int, torch.Tensor, np.ndarray], None] | None = None,
                 span: Span = "all", skip_first: int = 0, aggregate: Aggregate = "max", alpha: float = 0.3,
                 window: int = 8, fold: bool = True):
        self.lm, self.spec, self.detector = lm, spec, detector
        self.fold, self.scoring = fold, None
        self._folded: tuple | None = None  # (key, u, c) of the last fold, None: not built
        if every < 1:
            raise ValueError(f"every must be >= 1 (score every n-th step), got {every}")
        Aggregator(aggregate, alpha, window)  # checks the options before any generation
        self.aggregate, self.alpha, self.window = aggregate, alpha, window
        self.every, self.stop, self.on_step = every, stop, on_step
        self.span, self.skip_first = check_option("span", span, Span), skip_first
        if stop and spec.threshold is None:
            raise ValueError("stop=True needs a threshold: calibrate one (train-monitor --fpr) or set spec.threshold")

    @classmethod
    def from_detector(cls, lm: LoadedModel, detector: Detector, **kwargs) -> "Monitor":
        """A monitor that scores a detector folder's representation (``kvstate fit``) live.

        One-line errors when ``lm`` is not the detector's model or dtype, or when its representation
        is not a kv read-out the running state can rebuild.
        """
        detector.check_model(lm)
        return cls(lm, spec_from_detector(detector), detector.estimator, **kwargs)

    # -- state ------------------------------------------------------------------------------
    def _reset(self, prompt_weights: torch.Tensor, device: torch.device | str = "cpu") -> None:
        # the spec's parsed forms, once per generate (not per layer call or step)
        self._rope, self._kind = self.spec.rope, parse_kv_name(self.spec.representation)[1]
        self._settings = RepresentationSettings.from_dict(self.spec.settings)
        phi = get_phi(self.spec.phi)
        gamma = decay_of(self._kind)  # a decayed read-out keeps a decayed state
        self.states = {l: RecurrentState(for_layer(phi, l), gamma) for l in self.spec.layers}  # learned maps: per layer
        # everything a step touches lives on the model's input device: no host round trip per layer call
        self._prompt_weights = prompt_weights.to(device)  # (B, T_prompt)
        self._alive = torch.ones(prompt_weights.shape[0], dtype=torch.bool, device=device)  # row still generating
        self._count = self._alive.clone()  # rows whose last appended token is real (enters the state next)
        self._step_weights = self._count.float()[:, None]  # (B, 1): the weight of each row's next token
        self._step_scores: list[np.ndarray] = []
        self._step_aggs: list[np.ndarray] = []
        self._step_alive: list[np.ndarray] = []
        self._agg = Aggregator(self.aggregate, self.alpha, self.window)
        self._stopped: list[int | None] = [None] * prompt_weights.shape[0]
        self._head_dim = None
        eos = self.lm.model.generation_config.eos_token_id  # read once per generate, not every step
        eos = sorted(set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []))
        self._eos = torch.tensor(eos, dtype=torch.long, device=device)

    def _listen(self, call: AttentionCall) -> None:
        if call.layer not in self.states:
            return
        k, v = call.new_keys(self._rope), call.new_values()
        if call.q_len == self._prompt_weights.shape[1] and self.states[call.layer].S is None:
            w = self._prompt_weights
        else:  # one new token per row; finished rows keep receiving padding, which must not count
            w = self._step_weights.expand(-1, call.q_len)
        self._head_dim = k.shape[-1]
        state = self.states[call.layer]
        if self._kind == COMPRESSED and state.project is None:  # keep A S B^T itself: O((a + b) d) per token
            a, b = self._settings.compress
            state.project = compression_matrices(k.shape[1], state.phi.dim(k.shape[-1]), v.shape[-1], a, b,
                                                 self._settings.seed, device=k.device)
        state.update(k, v, w if w.device == k.device else w.to(k.device))  # another device only under a device_map

    def state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Current S (B, L, H, f, e), z (B, L, H, f), n (B, L) over the monitored layers."""
        L = self.spec.layers
        dev = self.states[L[0]].S.device  # under a device_map the layers' states sit on their layers' devices
        S, z, n = (torch.stack([getattr(self.states[l], x).to(dev) for l in L], 1) for x in ("S", "z", "n"))
        return S, z, n

    def features(self) -> np.ndarray:
        """The study's representation of the current state, (B, D)."""
        S, z, n = self.state()
        return kv_features(S, z, n, self._kind, self._settings, self._head_dim)

    def readout(self) -> torch.Tensor:
        """The read-out of the current state before the study's projection, (B, D) float32."""
        S, z, n = self.state()
        return kv_readout(S, z, n, self._kind, self._settings, self._head_dim)

    def score(self) -> np.ndarray:
        """The detector's score of the current state, (B,) (folded or dense, see ``scoring``)."""
        return self._score_tensor().cpu().numpy()

    def _score_tensor(self) -> torch.Tensor:
        """(B,) float64 scores: on the state's device when folded, on the host when dense (the detector is numpy)."""
        if self.detector is None:
            raise ValueError("no detector: pass one (or load_monitor(path)) to score states")
        if not self.fold:
            self.scoring = "dense"
            return torch.from_numpy(np.asarray(self.detector.decision_function(self.features()), dtype=np.float64))
        f = self.readout()
        u, c = self._fold_for(f)
        if u is None:
            self.scoring = "dense"
            st = self._settings
            x = st.reducer(self._kind)(np.ascontiguousarray(f.cpu().numpy()))  # dense: the detector needs host rows
            return torch.from_numpy(np.asarray(self.detector.decision_function(x), dtype=np.float64))
        self.scoring = "folded"
        return f.double() @ u + c

    def _fold_for(self, f: torch.Tensor) -> tuple[torch.Tensor | None, float]:
        """u (D,) float64 on f's device and c of the folded score, built once per detector and width; (None, nan): dense."""
        settings = self._settings
        key = (self.detector, f.shape[1], f.device, settings)
        if self._folded is None or self._folded[0] != key:
            # reading w off the detector calls it on ~max_dim rows: only for fitted estimators, whose scores
            # are a pure function of the rows (not for a hand-made scorer that counts its calls)
            form = affine_form(self.detector.decision_function, min(f.shape[1], settings.reducer(self._kind).max_dim)) \
                if isinstance(self.detector, BaseEstimator) else None
            if form is None:
                self._folded = (key, None, float("nan"))
            else:
                u = settings.reducer(self._kind).adjoint(form[0], f.shape[1])
                self._folded = (key, torch.from_numpy(u).to(f.device), form[1])
        return self._folded[1], self._folded[2]

    def _step(self, input_ids: torch.Tensor) -> torch.Tensor:
        step = len(self._step_scores)
        scored = self.detector is not None and step % self.every == 0
        # the one device-to-host copy per step: the (B,) scores and alive flags together (the aggregate,
        # the threshold and the per-step record are numpy; generate() itself syncs once per step too)
        if scored:
            s_t = self._score_tensor()
            host = torch.stack([s_t, self._alive.to(s_t.device, torch.float64)]).cpu().numpy()
            s, alive = host[0], host[1] > 0
        else:
            s, alive = np.full(input_ids.shape[0], np.nan), self._alive.cpu().numpy().copy()  # .cpu() aliases on the host
        self._step_scores.append(s)
        self._step_alive.append(alive)
        agg = self._agg.update(np.where(alive, s, np.nan))  # a finished row's reply has ended
        self._step_aggs.append(agg)
        last = input_ids[:, -1]
        done = torch.isin(last, self._eos.to(last.device))
        flag = None
        if scored and self.spec.threshold is not None:
            over = (np.nan_to_num(agg, nan=-np.inf) > self.spec.threshold) & alive
            for i in np.flatnonzero(over).tolist():
                if self._stopped[i] is None:
                    self._stopped[i] = step
            if self.stop:
                flag = torch.from_numpy(over).to(last.device)
                done |= flag
        if self.on_step is not None:
            self.on_step(step, last, s)
        done = done.to(self._alive.device)
        self._count = self._alive.clone()  # the token just appended is real for rows that were generating
        self._alive &= ~done
        self._step_weights = self._count.float()[:, None]
        return flag if flag is not None else torch.zeros_like(last, dtype=torch.bool)

    def calibrate(self, prompts: Sequence[Any], *, fpr: float = 0.01, max_new_tokens: int = 64,
                  **generate_kwargs) -> float:
        """Set the threshold per *sequence*: about ``fpr`` of normal generations cross it at any step.

        A threshold at the (1 - fpr) quantile of single normal states (what :func:`fit_monitor`
        calibrates) is crossed by far more than ``fpr`` of normal replies, because every step is a
        new test. Here the monitor generates from held-out normal ``prompts`` (not the detector's
        training items, whose scores are optimistically low), takes each sequence's highest scored
        step, and sets ``spec.threshold`` to the (1 - fpr) quantile of those maxima.
        """
        if self.detector is None:
            raise ValueError("no detector: calibrate needs a fitted detector (load_monitor or fit_monitor)")
        if len(prompts) < 2:
            raise ValueError("calibrate needs at least 2 normal prompts (use ~1/fpr of them for a stable quantile)")
        stop, self.stop = self.stop, False  # a stopped row would hide its later, higher scores
        try:
            res = self.generate(prompts, max_new_tokens=max_new_tokens, **generate_kwargs)
        finally:
            self.stop = stop
        peaks = res.peak  # each reply's final aggregate (its highest score under "max")
        self.spec.threshold = threshold_for_fpr(peaks, fpr)
        self.spec.fpr = fpr
        self.spec.notes["calibration"] = {"level": "sequence", "n_prompts": len(prompts), "max_new_tokens": max_new_tokens,
                                          "every": self.every}
        return self.spec.threshold

    # -- generation -------------------------------------------------------------------------
    def encode(self, prompts: Sequence[Any], chat: bool | None = None) -> Batch:
        """The left-padded batch :meth:`generate` runs, with this monitor's token selection.

        Encode once and pass the batch to :meth:`generate` to keep tokenisation out of a timed or
        repeated loop.
        """
        encoded = encode_all(self.lm, prompts, chat)
        return make_batch(encoded, ["end"], self.span, self.skip_first, self.lm.tokenizer.pad_token_id, "left")

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Any] | Batch, *, max_new_tokens: int = 64, chat: bool | None = None,
                 final_state: bool = True, **generate_kwargs) -> MonitorResult:
        """Generate (greedy unless ``do_sample=True`` is passed) while updating and scoring the state.

        Parameters
        ----------
        prompts : sequence of prompts, or a Batch from :meth:`encode`
        max_new_tokens : int, default=64
        chat : bool or None, default=None
            Apply the chat template (None: when the tokenizer has one); ignored for a Batch.
        final_state : bool, default=True
            Feed the last generated token once more at the end so that :meth:`state` covers the whole
            reply, exactly as :func:`kvstate.extract` on prompt + reply would (one more decode step).
            False skips that forward: the scores are the same (every step scores the state before
            its token), only :meth:`state` then lacks the last token.
        """
        from transformers import StoppingCriteriaList

        lm, tok = self.lm, self.lm.tokenizer
        if isinstance(prompts, Batch):
            if prompts.reads != ["end"]:
                raise ValueError(f"a Batch for generate reads ['end'], got {prompts.reads}; build it with Monitor.encode")
            batch = prompts
        else:
            batch = self.encode(prompts, chat)
        device = input_device(lm.model)
        self._reset(batch.weights[:, 0], device)
        kwargs = {"do_sample": False, **generate_kwargs}
        # only the monitored layers call the listener; the rotary hooks only when the keys are un-rotated
        with KVCapture(lm.model, self._listen, layers=self.spec.layers, positions=self._rope == "pre"):
            out = lm.model.generate(
                input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                max_new_tokens=max_new_tokens, stopping_criteria=StoppingCriteriaList([_Stop(self)]),
                pad_token_id=tok.pad_token_id, return_dict_in_generate=True, **kwargs)
            seq = out.sequences
            mask = torch.cat([batch.attention_mask.to(device), torch.ones_like(seq[:, batch.input_ids.shape[1]:])], 1)
            if final_state and seq.shape[1] > batch.input_ids.shape[1]:  # feed the last token so the state covers it
                lm.model(input_ids=seq[:, -1:], attention_mask=mask, cache=getattr(out, "cache", None) or out.past_key_values,
                         position_ids=(mask.sum(-1, keepdim=True) - 1))
        T0 = batch.input_ids.shape[1]
        texts = [tok.decode(s[T0:], skip_special_tokens=True) for s in seq]
        empty = np.zeros((len(seq), 0))
        return MonitorResult(seq.cpu(), texts, np.stack(self._step_scores, 1) if self._step_scores else empty,
                             list(self._stopped), T0, np.stack(self._step_aggs, 1) if self._step_aggs else empty,
                             np.stack(self._step_alive, 1) if self._step_alive else empty.astype(bool))

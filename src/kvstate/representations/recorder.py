"""Every representation of a prompt from ONE forward pass: KV-state variants, activations, controls.

Names are stable (``family/name@read``) and every vector is float32. Families:

- ``kv``: linear-attention states of the selected layers, for each phi: ``S/n``, raw ``S``, ``z/n``,
  ``S/|z|`` (positive phi only), top-k singular values per head (``svals``) and the last query's
  linear-attention read-out (``attn``); ablations of the token selection and RoPE
  (``-pre`` keys before RoPE, ``-content`` template and first token dropped, ``-hn`` per-head
  normalisation); and the KV-cache variants: attention-weighted (``attnw``), heavy-hitter pruned
  (``h2o``: only the top-k tokens by received attention) and hierarchical (``hier``: per-segment
  states plus their sum). Off by default (:class:`RepresentationSettings` ``decays``, ``compress``,
  ``deltas``), for the ablation phis: decayed states (``S/n-decay<gamma>``), the structured
  compression A (S/n) B^T (``ASB/n``; never projected further, so probes can read its per-head
  a x b matrices), the reply's own state (``dS/n``, read at the end only) and the whole S/n and z/n
  of every head (``Sz/n``, read at the end only, never projected: the virtual-query probe's input);
  with ``ref_queries``, the state read by benign reference prompts' queries (``refq``).
- ``act``: residual stream at the read token and mean over tokens (RepE), per-head attention outputs
  before o_proj at the read token (ITI), LLM-Check attention and hidden-state scores, perplexity and
  mean token entropy.
- ``ctl``: token length, hashed bag of words (no fitted vocabulary, so nothing leaks across folds).
  The sentence-embedding control lives in :mod:`kvstate.embed` (it needs text, not the LLM).

Large vectors go through a documented, seeded, data-independent reduction so that nothing is fitted
on test data: phi dimensions above d are sketched per head with a fixed Gaussian matrix, and whole
vectors above ``max_dim`` with a seeded random projection that depends only on the shape: dense
Gaussian (``projection="gaussian"``, the default) or sklearn's very sparse ``SparseRandomProjection``
(``projection="sparse"``: ~1/sqrt(D) of the entries non-zero, so a live monitor can project every
generated token at a small fraction of the dense matrix's cost).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..capture import AttentionCall, Batch, Recorder, check_layers, encode_all, run
from ..state import compression_matrices, decay_weights, for_layer, get_phi, parallel_state
from ..state.learned import load_reference_queries
from ..state.phi import Identity
from .names import RepName
from .projection import sketch
from .readout import headnorm
from .settings import COMPRESSED, POSITIVE_PHI, QUERY_STATE, RepresentationSettings

__all__ = ["Captured", "RepresentationRecorder", "capture_representations"]


def _hash_bow(texts: list[str], n_features: int = 2048) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    return vec.transform(texts).toarray().astype(np.float32)


class RepresentationRecorder(Recorder):
    """Collects all representations of each item during the shared forward pass.

    After :func:`kvstate.extract.run`, ``self.rows`` holds one dict {name: vector} per item, in
    the order the batches were run; ``dims`` the dimensionality of each name before reduction.
    """

    def __init__(self, settings: RepresentationSettings, num_layers: int):
        self.s = settings
        self.layers = list(settings.layers) or list(range(num_layers))
        self.num_layers = num_layers
        self.phis = list(settings.feature_maps().items())
        self.rows: list[dict[str, np.ndarray]] = []
        self.dims: dict[str, int] = {}
        self.ref_q = load_reference_queries(settings.ref_queries)[0] if settings.ref_queries else {}  # {layer: (K, Hq, d)}

    # -- per batch ---------------------------------------------------------------------------
    def begin(self, batch: Batch) -> None:
        super().begin(batch)
        self._acc: dict[str, list[torch.Tensor]] = {}
        self._tail: dict[str, list[torch.Tensor]] = {}  # parts that follow all of a name's _acc parts
        self._w_content = batch.weights_for("content", 1)

    def _add(self, name: str, value: torch.Tensor, tail: bool = False) -> None:
        """value: (B, R, ...) for one layer; layers are concatenated in call order (ascending), and
        ``tail`` parts after all the others (the z of ``Sz/n`` after every layer's S)."""
        (self._tail if tail else self._acc).setdefault(name, []).append(value.detach().float().flatten(2))  # on its device

    def _view(self, x: torch.Tensor, d: int, is_z: bool = False) -> torch.Tensor:
        """Sketch phi dimensions above d (taylor, wide random features) down to d, per head."""
        f = x.shape[-1] if is_z else x.shape[-2]
        if f <= d:
            return x
        P = sketch(f, d, self.s.seed).to(x.device)
        return x @ P.T if is_z else P @ x

    def __call__(self, call: AttentionCall) -> None:
        b = self.batch
        sweep_only = call.layer not in self.layers
        if sweep_only and not self.s.sweep:
            return
        k_post, v = call.new_keys("post").float(), call.new_values().float()
        w = b.weights.to(k_post.device)
        d = k_post.shape[-1]
        n = w.sum(-1).clamp_min(1.0)[..., None, None, None]  # (B, R, 1, 1, 1)
        identity = None  # the identity state, computed once for the sweep and the identity phi
        if sweep_only:  # the sweep keeps the last read only
            S, _, cnt = parallel_state(k_post, v, "identity", w[:, -1:])
            self._add(f"sweep-kv/{call.layer}", headnorm(S / cnt.clamp_min(1.0)[..., None, None, None]))
            return
        if self.s.sweep:
            identity = parallel_state(k_post, v, "identity", w)
            self._add(f"sweep-kv/{call.layer}", headnorm(identity[0] / n)[:, -1:])
        has_rope = call.position_embeddings is not None
        k_pre = call.new_keys("pre").float() if has_rope else k_post
        q_last = _at_reads(call.query.float(), b.ends)  # (B, R, Hq, d)
        for key, phi in self.phis:
            phi = for_layer(phi, call.layer)  # learned maps are per layer
            if isinstance(phi, Identity) and identity is not None:
                S, z, cnt = identity  # the same call on the same tensors: the same numbers
            else:
                S, z, cnt = parallel_state(k_post, v, phi, w)
            nn_ = cnt.clamp_min(1.0)[..., None, None, None]
            Sv = self._view(S, d)
            self._add(f"kv-{key}-S/n", Sv / nn_)
            self._add(f"kv-{key}-z/n", self._view(z, d, is_z=True) / nn_[..., 0])
            if key in ("identity", "elu"):
                self._add(f"kv-{key}-S", Sv)
            if phi.name in POSITIVE_PHI:
                self._add(f"kv-{key}-S|z|", Sv / z.norm(dim=-1).clamp_min(1e-8)[..., None, None])
            self._add(f"kv-{key}-svals", _top_singular_values(S, self.s.svd_k) / nn_[..., 0])  # sv(S / n) = sv(S) / n
            self._add(f"kv-{key}-attn", _linear_readout(q_last, S, z, phi))
            if key not in self.s.ablation_phis:
                continue
            self._add(f"kv-{key}-S/n-hn", headnorm(Sv / nn_))
            if call.layer in self.ref_q:  # what the benign reference queries would read from this state
                self._add(f"kv-{key}-refq", _reference_readout(self.ref_q[call.layer].to(S.device), S, z, phi))
            if self.s.query_states and phi.name in POSITIVE_PHI and S.shape[-2] == S.shape[-1]:  # whole, last read
                self._add(f"kv-{key}-{QUERY_STATE}", (S / nn_)[:, -1:])
                self._add(f"kv-{key}-{QUERY_STATE}", (z / nn_[..., 0])[:, -1:], tail=True)
            self._readouts_16(key, phi, k_post, v, w, S, cnt, d)
            wc = self._w_content.to(w.device)
            nc = wc.sum(-1).clamp_min(1.0)[..., None, None, None]
            variants = [("content", k_post, wc, nc)]
            if has_rope:
                variants += [("pre", k_pre, w, nn_), ("pre-content", k_pre, wc, nc)]
            for suffix, kk, ww, norm in variants:
                self._add(f"kv-{key}-S/n-{suffix}", self._view(parallel_state(kk, v, phi, ww)[0], d) / norm)
        self._cache_variants(call, k_post, v, w)
        self._activations(call, w)

    def _readouts_16(self, key: str, phi, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, S: torch.Tensor,
                     cnt: torch.Tensor, d: int) -> None:
        """Decayed states, structured compression and the reply's own state (issue #16), when enabled."""
        B, R = w.shape[:2]
        if self.s.decays:
            G = len(self.s.decays)
            Sg, _, ng = parallel_state(k, v, phi, decay_weights(w, self.s.decays).flatten(1, 2))
            Sg = Sg.reshape(B, R, G, *Sg.shape[2:])
            ng = ng.reshape(B, R, G).clamp_min(1e-8)[..., None, None, None]
            for i, g in enumerate(self.s.decays):
                self._add(f"kv-{key}-S/n-decay{float(g):g}", self._view(Sg[:, :, i] / ng[:, :, i], d))
        if self.s.compress:
            a, bb = self.s.compress
            A, Bm = compression_matrices(k.shape[1], S.shape[-2], S.shape[-1], a, bb, self.s.seed, device=k.device)
            Sc, _, _ = parallel_state(k, v, phi, w, project=(A, Bm))
            self._add(f"kv-{key}-{COMPRESSED}", Sc / cnt.clamp_min(1.0)[..., None, None, None])
        reads = self.batch.reads
        if self.s.deltas and "prompt_end" in reads and reads[-1] == "end":
            p, e = reads.index("prompt_end"), len(reads) - 1
            dn = (cnt[:, e] - cnt[:, p]).clamp_min(1.0)[:, None, None, None]
            self._add(f"kv-{key}-dS/n", self._view((S[:, e] - S[:, p]) / dn, d)[:, None])

    def _cache_variants(self, call: AttentionCall, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> None:
        """Attention-weighted, heavy-hitter-pruned and hierarchical states (elu+1 features)."""
        probs = call.probs()  # (B, Hq, T, T)
        rep = probs.shape[1] // k.shape[1]
        real = self.batch.attention_mask.to(probs.device).float()
        # attention mass each key receives from the real queries up to each read point, per KV head
        mass = probs.reshape(probs.shape[0], k.shape[1], rep, *probs.shape[2:]).sum(2)  # (B, Hkv, T, T)
        self._probs = probs
        B, H, T, _ = k.shape
        fk, ve = get_phi("elu")(k), v
        outs_w, outs_p, outs_h = [], [], []
        for r in range(w.shape[1]):
            wr = w[:, r]  # (B, T)
            qmask = wr * real  # queries that count: selected real tokens up to the read
            a = torch.einsum("bq,bhqt->bht", qmask, mass) * wr[:, None, :]  # (B, H, T)
            a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
            outs_w.append(torch.einsum("bht,bhtf,bhte->bhfe", a, fk, ve))
            k_top = min(self.s.prune_k, T)
            top = a.topk(k_top, dim=-1).indices
            keep = torch.zeros_like(a).scatter_(-1, top, 1.0) * (wr[:, None, :] > 0)
            outs_p.append(torch.einsum("bht,bhtf,bhte->bhfe", keep, fk, ve) / keep.sum(-1).clamp_min(1)[..., None, None])
            idx = torch.cumsum(wr, -1) - 1  # rank of each selected token
            total = wr.sum(-1, keepdim=True).clamp_min(1)
            seg_of = (idx * self.s.segments / total).floor().clamp(0, self.s.segments - 1)
            wg = torch.stack([wr * (seg_of == g) for g in range(self.s.segments)], 1)  # (B, G, T)
            Sg, _, ng = parallel_state(k, v, "elu", wg)  # all segments in one contraction
            segs = list((Sg / ng.clamp_min(1)[..., None, None, None]).unbind(1))
            # each segment's per-head matrix is sketched to hier_dim values, so the vector stays small
            P = sketch(segs[0].shape[-2] * segs[0].shape[-1], self.s.hier_dim, self.s.seed + 1).to(k.device)
            outs_h.append(torch.cat([(s.flatten(2) @ P.T).flatten(1) for s in segs + [sum(segs)]], dim=1))
        self._add("kv-attnw-S", torch.stack(outs_w, 1))
        self._add("kv-h2o-S/n", torch.stack(outs_p, 1))
        self._add("kv-hier-S/n", torch.stack(outs_h, 1))

    def _activations(self, call: AttentionCall, w: torch.Tensor) -> None:
        """ITI head outputs at the read token and the LLM-Check attention score (mean log diag)."""
        out = call.output.float()  # (B, q_len, Hq, d)
        self._add("act-heads-last", torch.stack([out[torch.arange(out.shape[0]), self.batch.ends[:, r]]
                                                 for r in range(w.shape[1])], 1))
        diag = torch.diagonal(self._probs, dim1=-2, dim2=-1).clamp_min(1e-12).log()  # (B, Hq, T)
        score = torch.einsum("bht,brt->brh", diag, w) / w.sum(-1).clamp_min(1)[..., None]
        self._add("act-llmcheck-attn", score.mean(-1, keepdim=True))

    def end(self, outputs: Any) -> None:
        b = self.batch
        w = b.weights
        hs = outputs.hidden_states  # (L+1) x (B, T, D) in the model's dtype; layers may sit on several devices
        dev = hs[-1].device
        ends = b.ends
        rows = torch.arange(len(ends))

        def at(l: int, r: int) -> torch.Tensor:  # (B, D) float32 on dev: layer l's output at read r
            h = hs[l + 1]
            return h[rows.to(h.device), ends[:, r].to(h.device)].float().to(dev)

        def mean_of(l: int, r: int) -> torch.Tensor:
            h = hs[l + 1]
            wr = w[:, r].to(h.device)
            return (torch.einsum("bt,btd->bd", wr, h.float()) / wr.sum(-1, keepdim=True).clamp_min(1)).to(dev)

        self._add("act-resid-last", torch.stack([torch.cat([at(l, r) for l in self.layers], -1)
                                                 for r in range(ends.shape[1])], 1))
        mean = [torch.cat([mean_of(l, r) for l in self.layers], -1) for r in range(ends.shape[1])]
        self._add("act-resid-mean", torch.stack(mean, 1))
        if self.s.sweep:
            for l in range(self.num_layers):
                self._acc[f"sweep-resid/{l}"] = [at(l, ends.shape[1] - 1)[:, None]]
        self._add("act-llmcheck-hidden", _hidden_logdet(hs, self.layers, w))
        ppl, ent = _token_stats(outputs.logits, b)  # on the logits' device: no (B, T, vocab) host copy
        self._add("act-ppl", ppl)
        self._add("act-entropy", ent)
        lengths = torch.tensor([[float(e.prompt_len if rd == "prompt_end" else len(e)) for rd in b.reads] for e in b.encoded])
        self._add("ctl-length", lengths[..., None])
        texts = [e.text for e in b.encoded]
        self._add("ctl-bow", torch.from_numpy(_hash_bow(texts))[:, None].expand(-1, len(b.reads), -1))
        self._flush()

    def _flush(self) -> None:
        B = self.batch.input_ids.shape[0]
        reads = self.batch.reads
        names, groups = [], {}  # stored names in recording order; (name, (B, D) array) per reducer
        for name, parts in self._acc.items():
            parts = parts + self._tail.get(name, [])
            # the item's device-to-host copy: once per name and batch, after every layer's part is in
            arr = torch.cat([p.to(parts[0].device) for p in parts], -1).cpu().numpy()  # (B, R, D)
            rep = RepName.parse(name)
            for r in range(arr.shape[1]):  # sweep, dS/n and Sz/n entries carry only the last read
                read = reads[r] if arr.shape[1] == len(reads) else reads[-1]
                full = str(rep.with_read(read)) if len(reads) > 1 and not rep.is_sweep else name
                self.dims[full] = arr.shape[-1]
                names.append(full)
                groups.setdefault(self.s.reducer(rep.readout), []).append((full, np.ascontiguousarray(arr[:, r])))
        reduced = {}
        for reducer, items in groups.items():  # one product per matrix, not one per name and read
            reduced.update(zip([n for n, _ in items], reducer.many([a for _, a in items])))
        self.rows.extend({n: reduced[n][i] for n in names} for i in range(B))


def _at_reads(x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, d) at each read position -> (B, R, H, d)."""
    idx = torch.arange(x.shape[0])
    return torch.stack([x[idx, :, ends[:, r].to(x.device)] for r in range(ends.shape[1])], 1)


def _linear_readout(q: torch.Tensor, S: torch.Tensor, z: torch.Tensor, phi) -> torch.Tensor:
    """phi(q) S / phi(q).z for the read token's queries: q (B, R, Hq, d), S (B, R, H, f, e)."""
    # per-head maps (a learned phi) read (..., heads, tokens, d); elementwise and shared maps take q as it is
    return _read(phi(q.transpose(1, 2)).transpose(1, 2) if hasattr(phi, "for_layer") else phi(q), S, z)


def _reference_readout(q_ref: torch.Tensor, S: torch.Tensor, z: torch.Tensor, phi) -> torch.Tensor:
    """m S / m.z with m = mean_k phi(q_ref[k]) per query head: q_ref (K, Hq, d) -> (B, R, Hq, e)."""
    m = (phi(q_ref.transpose(0, 1)).mean(1) if hasattr(phi, "for_layer") else phi(q_ref).mean(0)).to(S.dtype)  # (Hq, f)
    return _read(m.expand(*S.shape[:2], *m.shape), S, z)


def _read(fq: torch.Tensor, S: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """fq S / fq.z for query features fq (B, R, Hq, f) and states S (B, R, H, f, e), z (B, R, H, f)."""
    B, R, Hq, _ = fq.shape
    H = S.shape[2]
    fq = fq.reshape(B, R, H, Hq // H, fq.shape[-1])  # the query heads of each KV head (GQA), without copying S
    num = torch.einsum("brhgf,brhfe->brhge", fq, S).flatten(2, 3)
    den = torch.einsum("brhgf,brhf->brhg", fq, z).flatten(2, 3)
    den = torch.where(den.abs() < 1e-6, torch.full_like(den, 1e-6).copysign(den), den)
    return num / den[..., None]


def _top_singular_values(S: torch.Tensor, k: int) -> torch.Tensor:
    """Largest k singular values of (..., f, e) matrices via the e x e Gram (cheaper than an SVD)."""
    ev = torch.linalg.eigvalsh(S.transpose(-1, -2) @ S).flip(-1)[..., :k]
    return ev.clamp_min(0).sqrt()


def _hidden_logdet(hs, layers: list[int], w: torch.Tensor) -> torch.Tensor:
    """LLM-Check hidden score: mean log singular value of the centred (tokens x width) matrix.

    As in LLM-Check, one layer (the middle of the selected ones); computed from the eigenvalues of
    the smaller Gram matrix, per item and read.
    """
    B, R, _ = w.shape
    out = torch.zeros(B, R)
    layers = [layers[len(layers) // 2]]
    for l in layers:
        h = hs[l + 1].float()
        wd = w.to(h.device)
        for b in range(B):
            done: list[tuple[torch.Tensor, float]] = []  # (selection, score) of this item's reads so far
            for r in range(R):
                mask = wd[b, r] > 0
                same = next((score for m, score in done if torch.equal(m, mask)), None)
                if same is not None:  # a read with the same tokens (no reply): the same score
                    out[b, r] += same
                    continue
                sel = h[b][mask]
                if sel.shape[0] < 2:
                    done.append((mask, 0.0))
                    continue
                c = sel - sel.mean(0, keepdim=True)
                gram = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
                ev = torch.linalg.eigvalsh(gram.double())
                ev = ev[ev > ev.max() * 1e-6]  # rank <= min(tokens - 1, width): drop the numerical zeros
                score = float(0.5 * ev.log().mean()) / len(layers)
                done.append((mask, score))
                out[b, r] += score
    return out[..., None]


def _token_stats(logits: torch.Tensor, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-perplexity and mean next-token entropy over the selected tokens up to each read.

    One row at a time: a (T, vocab) log-softmax per row instead of (B, T, vocab) copies.
    """
    ids = b.input_ids.to(logits.device)
    w = b.weights[:, :, 1:].to(logits.device)  # the predicted token (t + 1) must be selected
    denom = w.sum(-1).clamp_min(1)
    nll = torch.zeros(w.shape[0], w.shape[-1], device=logits.device)
    ent = torch.zeros_like(nll)
    for i in range(logits.shape[0]):
        logp = torch.log_softmax(logits[i, :-1].float(), -1)
        nll[i] = -logp.gather(-1, ids[i, 1:, None])[:, 0]
        ent[i] = -(logp.exp() * logp).sum(-1)
    ppl = torch.einsum("bt,brt->br", nll, w) / denom
    return ppl[..., None], (torch.einsum("bt,brt->br", ent, w) / denom)[..., None]


@dataclass
class Captured:
    """Representations of items, in input order, with their sizes and cost."""

    rows: list[dict[str, np.ndarray]]
    dims: dict[str, int]  # dimensionality before any reduction
    seconds_per_item: float
    n_tokens: list[int] = field(default_factory=list)


def capture_representations(lm, prompts, settings: RepresentationSettings | None = None, *, reads=None,
                            batch_size: int = 8, chat: bool | None = None, progress: bool | None = None) -> Captured:
    """All representations of ``prompts`` (see module docstring), one forward pass per batch."""
    settings = settings or RepresentationSettings()
    layers = tuple(check_layers(lm, list(settings.layers) or None))
    settings = RepresentationSettings(**{**settings.to_dict(), "layers": layers})
    encoded = encode_all(lm, prompts, chat)
    if reads is None:
        reads = ["prompt_end", "end"] if any(e.prompt_len < len(e) for e in encoded) else ["end"]
    rec = RepresentationRecorder(settings, lm.num_layers)
    t0 = time.perf_counter()
    order = run(lm, encoded, [rec], reads=reads, batch_size=batch_size, progress=progress,
                forward_kwargs={"output_hidden_states": True})
    elapsed = time.perf_counter() - t0
    rows = [None] * len(order)
    for pos, i in enumerate(order):
        rows[i] = rec.rows[pos]
    return Captured(rows, rec.dims, elapsed / max(len(order), 1), [len(e) for e in encoded])



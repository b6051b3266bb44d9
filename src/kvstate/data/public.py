"""Public benchmark files: the data directory, the pinned files and ``kvstate data fetch``.

The field's benchmarks (XSTest, MaliciousInstruct, self-instruct, HaluEval general, the
geometry-of-truth sets, the lie-detector questions) are read from a *data directory*:
``$KVSTATE_DATA``, or ``<cache_dir>/data`` when unset. Its layout is fixed (``harm/``, ``benign/``,
``hallucination/``, ``truth/geometry-of-truth/``, ``lies/``), every file is pinned to a commit of
its public repository and to its sha256, and nothing of it is committed to kvstate.
:func:`fetch` downloads the files from raw.githubusercontent.com at the pinned commits; offline,
fill the directory by hand with the same layout.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._paths import cache_dir

RAW = "https://raw.githubusercontent.com"
CHUNK = 1 << 20


@dataclass(frozen=True)
class PublicFile:
    """One file of the data directory: where it comes from and what its bytes must hash to."""

    path: str  # relative to the data directory
    repo: str  # owner/name on GitHub
    commit: str  # full commit sha
    source: str  # path inside the repository
    licence: str
    sha256: str

    @property
    def url(self) -> str:
        return f"{RAW}/{self.repo}/{self.commit}/{self.source}"

    def provenance(self, n_used: int, note: str = "") -> dict[str, Any]:
        """The record a suite keeps: package (repository), version (commit), path, licence, sha256."""
        rec = {"package": f"github:{self.repo}", "version": self.commit[:7], "path": self.source,
               "licence": self.licence, "n_used": int(n_used), "file": self.path,
               "commit": self.commit, "sha256": self.sha256}
        if note:
            rec["note"] = note
        return rec


_XS = ("paul-rottger/exaggerated-safety", "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d")
_MI = ("Princeton-SysML/Jailbreak_LLM", "1e490531c0ef4bc13430178bf1fbc8f813e34b1a")
_SI = ("yizhongw/self-instruct", "0b26ccaa415992100fa32df62d41b994cf928e23")
_HE = ("RUCAIBox/HaluEval", "b7253db3cdaa0ab2c382f92b26b390109174f77e")
_GOT = ("saprmarks/geometry-of-truth", "5d1c630c44f7e50bda7ad86d601ccadf9abc5ddb")
_LD = ("LoryPack/LLM-LieDetector", "c5689fa2615368cd7c3f3c15dbb60ea2126006c7")
_NO_LICENCE = "no licence file in the repository"

GOT_SHA = {
    "cities": "f2560a0c1758c69935b50125111b574b71896bb75930dd87b1d8c973c1fa086e",
    "neg_cities": "66c5c84de98ca15570138c205ab0e3907b57750083fac72a4eacafc3d9ebcea7",
    "sp_en_trans": "9afa97c1b8af539a05f47655a80a5c7832c6fdb914885fd24cb4bcccbe2795b5",
    "neg_sp_en_trans": "bec33e37047135b15cdd18c0cb0c66b65fb435ace08910cbcc220ce1ef610c96",
    "larger_than": "406d6872e97910f3af5a031600d4932b5a567b8666e7545c8b446057471ad723",
    "smaller_than": "ee6b7cf668d7e0fb3f49a84ca8d510cb7e484ae029ef86ed238362e26ef61a44",
    "companies_true_false": "75a31139def9838dcaa4e2f1e5f3680f44f09f3c94553f9ad3b3a5a476124c8c",
    "common_claim_true_false": "1889b4793c2ebd13c767eea8b65ebd4a5c2da700567677d512097b495a262576",
    "counterfact_true_false": "5af51456d6dbd3a53d8e2ee6e4aadaca7eb02ff9136ad825866458e7283b5273",
    "cities_cities_conj": "80e9987e8abcdd56ac8256d22b8ad6c2d6211e06a6c925c32cfcb0bc93d9d56d",
    "cities_cities_disj": "5f4883382bb3f8664fa9b0a51cfadec507e130bf21c94f3d04776ca923646565",
}

FILES: dict[str, PublicFile] = {f.path: f for f in (
    PublicFile("harm/xstest_v2_prompts.csv", *_XS, "xstest_prompts.csv", "CC-BY-4.0",
               "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a"),
    PublicFile("harm/xstest.LICENSE", *_XS, "LICENSE", "CC-BY-4.0",
               "9e5f1b3c610b9c2da5c313bf81d577a7d1acec686bdb0384edefa6df0f90cd94"),
    PublicFile("harm/MaliciousInstruct.txt", *_MI, "data/MaliciousInstruct.txt", _NO_LICENCE,
               "a64d69dd1004aac4a23aaff3748fb8f17161893f74db36f45b8bc849eb1bcce5"),
    PublicFile("benign/self_instruct_user_oriented_instructions.jsonl", *_SI,
               "human_eval/user_oriented_instructions.jsonl", "Apache-2.0",
               "81d60a117db495cecedecd9193504fd07c5b5a42f6699ef6b0f9da10fc22f42e"),
    PublicFile("benign/self_instruct_seed_tasks.jsonl", *_SI, "data/seed_tasks.jsonl", "Apache-2.0",
               "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48"),
    PublicFile("benign/self_instruct.LICENSE", *_SI, "LICENSE", "Apache-2.0",
               "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4"),
    PublicFile("hallucination/halueval_general_data.json", *_HE, "data/general_data.json", "MIT",
               "73302cd97666b808fb94b5d8a4a2c924049c9484e609017a2f808c4a6d539219"),
    PublicFile("hallucination/halueval.LICENSE", *_HE, "LICENSE", "MIT",
               "2c33dad5fede86236b54db22e0be64e72095d151f324bcadd354ab88f40c52fe"),
    PublicFile("lies/liedetector_questions_1000_all.json", *_LD,
               "data/raw_questions/questions_1000_all.json", "BSD-3-Clause",
               "493d71b3a8b99ba1a05f70211b71b3722546d6716361734a3bb5853bc6afcead"),
    PublicFile("lies/liedetector.LICENSE", *_LD, "LICENSE", "BSD-3-Clause",
               "dab44094c323ea391eb050223b9a631513e1e0a54c4728714a9d39807342f264"),
    *(PublicFile(f"truth/geometry-of-truth/{n}.csv", *_GOT, f"datasets/{n}.csv", _NO_LICENCE, sha)
      for n, sha in GOT_SHA.items()),
)}


def data_dir() -> Path:
    """The data directory: ``$KVSTATE_DATA``, or ``<cache_dir>/data`` (not created here)."""
    root = os.environ.get("KVSTATE_DATA")
    return Path(root).expanduser() if root else cache_dir() / "data"


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def present(rel: str) -> bool:
    """Whether a pinned file is in the data directory (its hash is checked when it is read)."""
    return (data_dir() / rel).is_file()


def public_file(rel: str, suite: str) -> Path:
    """Path of a pinned file in the data directory, checked against its sha256.

    Raises ``ValueError`` (missing, or other bytes than pinned) in one line that names the file,
    ``kvstate data fetch SUITE`` and the data directory.
    """
    spec = FILES[rel]
    path = data_dir() / rel
    if not path.is_file():
        raise ValueError(f"{rel} is not in the data directory {data_dir()}; run `kvstate data "
                                f"fetch {suite}` or copy it there from {spec.url}")
    digest = sha256(path)
    if digest != spec.sha256:
        raise ValueError(f"{path} has sha256 {digest[:12]}…, not the pinned {spec.sha256[:12]}…; "
                         f"replace it with `kvstate data fetch {suite}` or a copy of {spec.url}")
    return path


Opener = Callable[..., Any]


def fetch(files: Iterable[str], *, opener: Opener | None = None, timeout: float = 30.0) -> list[Path]:
    """Download pinned files into the data directory, each checked against its sha256.

    Parameters
    ----------
    files : iterable of str
        Paths relative to the data directory (keys of :data:`FILES`).
    opener : callable, default ``urllib.request.urlopen``
        ``opener(url, timeout=...)`` returning a readable response (tests pass a fake one).
    timeout : float, default 30.0
        Seconds per request.

    Returns
    -------
    list of Path
        The files now in place (ones already present with the right hash are not downloaded).

    Raises
    ------
    ConnectionError
        The source cannot be reached; the one-line message names the data directory to fill by hand.
    ValueError
        A download has other bytes than pinned; nothing of it is left behind.
    """
    opener = opener or urllib.request.urlopen
    root = data_dir()
    out = []
    for rel in files:
        spec = FILES[rel]
        target = root / rel
        if target.is_file() and sha256(target) == spec.sha256:
            out.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        h = hashlib.sha256()
        try:
            with opener(spec.url, timeout=timeout) as resp, open(tmp, "wb") as dst:
                for block in iter(lambda r=resp: r.read(CHUNK), b""):
                    h.update(block)
                    dst.write(block)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            tmp.unlink(missing_ok=True)
            reason = getattr(exc, "reason", None) or exc
            raise ConnectionError(f"cannot download {spec.url} ({str(reason).splitlines()[0] if str(reason) else type(exc).__name__}); "
                                  f"offline, copy the files by hand into the data directory {root} "
                                  "(same layout; set KVSTATE_DATA to use another one)") from None
        if h.hexdigest() != spec.sha256:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{spec.url} has sha256 {h.hexdigest()[:12]}…, not the pinned "
                             f"{spec.sha256[:12]}…; refused, nothing written to {target}")
        os.replace(tmp, target)
        out.append(target)
    return out

#!/usr/bin/env bash
# The GPU check of issue 29, in under 8 minutes: the device-parametrised reference tests
# (tests/test_devices.py: cpu and cuda, float32 and bfloat16) and benchmarks/shapes.py at full size
# (Llama-3.1-8B, Mistral-7B, Qwen2.5-7B, Gemma-3-4B, a 70B cut to 4 layers; random weights, bfloat16).
#
#   OUT=/tmp/check bash benchmarks/device_check.sh          # PYTHON=... to pick the interpreter
#
# Writes under $OUT (default benchmarks/results/device_check): environment.json, tests_devices.xml and
# .txt, shapes_cuda.json and shapes.txt, summary.json; prints the summary. Without a GPU it still runs
# (the cuda tests skip with their reason, shapes.py runs scaled down on the cpu) so the script itself
# is checked anywhere. Exit status: that of the tests (shapes.py failures are reported in the summary).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/device_check}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

"$PY" - > "$OUT/environment.json" <<'EOF'
import json, platform, torch, transformers
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                  "cuda": cuda, "device": torch.cuda.get_device_name() if cuda else "cpu",
                  "cuda_version": torch.version.cuda, "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported())}))
EOF
cat "$OUT/environment.json"
GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")

# 1. the reference tests on every device (about a minute)
timeout 180 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_devices.py --junitxml="$OUT/tests_devices.xml" \
  2>&1 | tee "$OUT/tests_devices.txt"
tests_rc=${PIPESTATUS[0]}

# 2. the shapes, full size on a GPU (a scaled-down smoke run on a cpu); JSON is written after every shape
left=$(( 450 - ($(date +%s) - start) ))
if [ "$GPU" = 1 ]; then
  timeout "$left" "$PY" benchmarks/shapes.py --device cuda --rounds 2 --out "$OUT" --budget-s $(( left - 90 )) \
    2>&1 | tee "$OUT/shapes.txt"
else
  timeout "$left" "$PY" benchmarks/shapes.py --device cpu --scale 0.03125 --shapes llama-3.1-8b gemma-3-4b \
    --batches 1 8 --rounds 1 --out "$OUT" 2>&1 | tee "$OUT/shapes.txt"
fi
shapes_rc=${PIPESTATUS[0]}

"$PY" - "$OUT" "$tests_rc" "$shapes_rc" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys, glob, xml.etree.ElementTree as ET
out, tests_rc, shapes_rc, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
summary = {"seconds": secs, "tests_rc": tests_rc, "shapes_rc": shapes_rc,
           "environment": json.load(open(f"{out}/environment.json"))}
try:
    suite = ET.parse(f"{out}/tests_devices.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = suite.findall("testcase")
    status = lambda c: "failed" if c.find("failure") is not None or c.find("error") is not None else \
        "skipped" if c.find("skipped") is not None else "passed"
    summary["tests"] = {s: sum(status(c) == s for c in cases) for s in ("passed", "failed", "skipped")}
    summary["tests"]["cuda"] = {s: sum(status(c) == s for c in cases if "cuda" in c.get("name")) for s in ("passed", "failed", "skipped")}
    summary["tests"]["failures"] = [c.get("name") for c in cases if status(c) == "failed"]
except (OSError, ET.ParseError) as e:
    summary["tests"] = {"error": str(e)}
summary["shapes"] = {}
for path in sorted(glob.glob(f"{out}/shapes_*.json")):
    res = json.load(open(path))
    for s in res["shapes"]:
        if "error" in s:
            summary["shapes"][s["shape"]] = {"error": s["error"]}
            continue
        summary["shapes"][s["shape"]] = {
            "device": res["device_name"], "dtype": res["dtype"], "scale": res["scale"],
            "capture_ratio": round(s["capture"]["extract"]["ratio"], 3),
            "study_ratio": round(s["study"]["capture_representations"]["ratio"], 3),
            "monitor_ratio": {b: round(v["monitor"]["ratio"], 3) for b, v in s["monitor"]["batches"].items()},
            "monitor_ms_per_token": {b: round(v["monitor"]["per_token_ms"], 2) for b, v in s["monitor"]["batches"].items()},
            "plain_ms_per_token": {b: round(v["plain_generate"]["per_token_ms"], 2) for b, v in s["monitor"]["batches"].items()},
            "state_MiB_per_seq_all_layers": round(s["memory"]["state_bytes_per_seq_all_layers"] / 2**20, 2),
            "kv_cache_MiB_per_seq": round(s["memory"]["kv_cache_bytes_per_seq"] / 2**20, 2)}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
EOF
exit "$tests_rc"

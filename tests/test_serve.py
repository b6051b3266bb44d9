# ruff: noqa: E402  (ray, serve and openai are imported, or the module skipped, before kvstate)
"""The served monitor: OpenAI-compatible streaming on Ray Serve with per-token scores and flags.

One local Ray cluster and one Serve HTTP proxy on 127.0.0.1 for the module; a tiny random llama
saved as a local folder; the official ``openai`` client. Every stream's scores are checked against
a solo :class:`kvstate.monitor.Monitor` run of the same prompt in this process.
"""

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="serving is optional: pip install 'kvstate[serve]'")
serve = pytest.importorskip("ray.serve", reason="serving is optional: pip install 'kvstate[serve]'")
openai = pytest.importorskip("openai", reason="the tests use the official client: pip install openai")

from conftest import byte_tokenizer, tiny_model

from kvstate.detect import get_detector
from kvstate.models import load_model
from kvstate.monitor import Monitor, MonitorSpec, save_monitor
from kvstate.representations import RepresentationSettings
from kvstate.serve import build_app
from kvstate.serve.protocol import RequestError, parse_chat_request

pytestmark = pytest.mark.timeout(300)

STOP_PROMPT = [{"role": "user", "content": "Count to ten"}]
PROMPTS = [  # 8 prompts of different lengths: left padding differs in every batch
    "Hi", "Tell me about cats", "What is the capital of France and why?", "Name a colour",
    "Write one line of a poem about the sea at night", "2+2?", "Explain gravity to a child in simple words", "Ok",
]


def _spec(layers, model="", threshold=None):
    return MonitorSpec("kv-elu-S/n-hn", list(layers), {"name": "elu"},
                       RepresentationSettings(layers=tuple(layers), max_dim=32).to_dict(), threshold=threshold, model=model)


def _detector(seed=0):
    return get_detector("mahalanobis").fit(np.random.default_rng(seed).normal(size=(200, 32)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _solo(lm, spec, det, messages, max_tokens):
    """Reference: the monitor alone on one prompt, in this process."""
    res = Monitor(lm, spec, det).generate([messages], max_new_tokens=max_tokens)
    return res.scores[0], res.sequences[0, res.prompt_len:].tolist()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = root / "tiny-llama"
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    lm = load_model(str(model_dir))  # what the replicas load
    spec, det = _spec(range(lm.num_layers)), _detector()
    save_monitor(root / "mon", spec, det)
    # planted threshold: halfway between the running max before step k and the score at k, so that
    # the stop policy must end the reply at exactly step k
    trace, _ = _solo(lm, spec, det, STOP_PROMPT, 12)
    k = next(t for t in range(2, len(trace)) if trace[t] > trace[:t].max() + 1e-3)
    stop_spec = _spec(range(lm.num_layers), threshold=float((trace[:k].max() + trace[k]) / 2))
    save_monitor(root / "mon-stop", stop_spec, det)
    return {"root": root, "model": str(model_dir), "mon": root / "mon", "mon_stop": root / "mon-stop", "lm": lm,
            "spec": spec, "det": det, "trace": trace, "k": k, "stop_spec": stop_spec}


@pytest.fixture(scope="module")
def server(folders):
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        common = dict(cpus_per_replica=1, threads=1, batch_wait_s=0.1)
        serve.run(build_app(folders["mon"], folders["model"], replicas=2, stop=False, max_batch_size=8, **common),
                  name="main", route_prefix="/")
        serve.run(build_app(folders["mon_stop"], folders["model"], replicas=1, stop=True, **common),
                  name="stop", route_prefix="/stop")
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "common": common}
    finally:
        serve.shutdown()
        ray.shutdown()


def _client(server, prefix=""):
    return openai.OpenAI(base_url=f"{server['url']}{prefix}/v1", api_key="none", max_retries=0, timeout=60)


def _stream(client, messages, max_tokens):
    """(text, per-token scores, steps, final chunk) of one streamed reply."""
    text, scores, steps, final = [], [], [], None
    for ch in client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=max_tokens, stream=True):
        ext = getattr(ch, "kvstate", None)
        if ch.choices and ch.choices[0].delta.content:
            text.append(ch.choices[0].delta.content)
        if ch.choices and ch.choices[0].finish_reason is not None:
            final = ch
        elif ext is not None:
            scores.append(ext["score"])
            steps.append(ext["step"])
    return "".join(text), scores, steps, final


def _post(url, body: bytes):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_protocol_rejects_bad_requests_in_one_line():
    ok = parse_chat_request(b'{"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "x"}]}]}', "m")
    assert ok.messages == [{"role": "system", "content": "x"}] and ok.max_tokens is None and not ok.stream
    for body, needle in [(b"{nope", "not valid JSON"), (b"[]", "JSON object"), (b'{"messages": []}', "'messages' is required"),
                         (b'{"messages": [{"role": "wizard", "content": "x"}]}', "'wizard' is not supported"),
                         (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "positive integer"),
                         (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', "n must be 1")]:
        with pytest.raises(RequestError, match=needle) as e:
            parse_chat_request(body, "m")
        assert e.value.status == 400 and "\n" not in e.value.message
    with pytest.raises(RequestError) as e:
        parse_chat_request(b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', "m")
    assert e.value.status == 404


def test_engine_scores_every_nth_token_and_equals_the_solo_monitor(folders):
    from kvstate.serve import check_prompt, run_batch

    lm, spec, det = folders["lm"], folders["spec"], folders["det"]
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    reqs = [{"messages": m, "max_tokens": b, "prompt_tokens": n}
            for m, (n, b) in zip(msgs, [check_prompt(lm, m, k, 64) for m, k in zip(msgs, (3, 6, 5))])]
    for every in (1, 2):
        events = [[] for _ in reqs]
        run_batch(lm, spec, det, reqs, lambda per, out=events: [out[i].extend(e) for i, e in enumerate(per)], every=every)
        for ev, m, r in zip(events, msgs, reqs):
            scores = [e["score"] for e in ev if e["type"] == "token"]
            assert len(scores) == r["max_tokens"] and ev[-1]["type"] == "end" and ev[-1]["finish_reason"] == "length"
            ref = Monitor(lm, spec, det, every=every).generate([m], max_new_tokens=r["max_tokens"]).scores[0]
            assert [s is None for s in scores] == list(np.isnan(ref))
            np.testing.assert_allclose([s for s in scores if s is not None], ref[~np.isnan(ref)], atol=1e-4)
    with pytest.raises(ValueError, match="context of 256"):
        check_prompt(lm, [{"role": "user", "content": "a" * 300}], None, 64)


def test_engine_reuses_a_live_monitor_and_builds_its_fold_once(folders, monkeypatch):
    import kvstate.monitor.live as live_mod
    from kvstate.serve import check_prompt, run_batch

    lm, spec, det = folders["lm"], folders["spec"], folders["det"]
    calls = []
    real = live_mod.affine_form
    monkeypatch.setattr(live_mod, "affine_form", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = [{"role": "user", "content": PROMPTS[0]}]
    n, b = check_prompt(lm, m, 4, 64)
    reqs = [{"messages": m, "max_tokens": b, "prompt_tokens": n}]

    def events(**kw):
        out = [[]]
        run_batch(lm, spec, det, reqs, lambda per: out[0].extend(per[0]), **kw)
        return [e.get("score") for e in out[0] if e["type"] == "token"]

    fresh = [events(), events()]
    assert len(calls) == 2  # a new monitor per batch checks the detector again
    live = Monitor(lm, spec, det)
    reused = [events(live=live), events(live=live)]
    assert len(calls) == 3 and reused == fresh  # once for the live monitor, same scores
    with pytest.raises(ValueError, match="another detector, every or stop"):
        events(live=live, every=2)


def test_streamed_text_waits_for_a_whole_utf8_character():
    from kvstate.serve import RowState

    tok = byte_tokenizer()
    ids = tok("é!", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3  # two bytes of é, then !
    row = RowState(tok, max_tokens=10, prompt_tokens=1, eos={257}, threshold=0.5, stop=True, batch_size=1)
    texts = [ev["text"] for t, i in enumerate(ids) for ev in row.step(t, i, 0.1)]
    assert texts == ["", "é", "!"]
    end = row.step(3, 70, 0.9)  # over the threshold: returned, then content_filter
    assert [e["type"] for e in end] == ["token", "end"] and end[1]["finish_reason"] == "content_filter"
    assert end[1]["stopped_at"] == 3 and end[1]["aggregate"] == 0.9 and row.step(4, 70, 0.1) == []


def test_cli_fails_in_one_line_before_starting_ray(tmp_path):
    from typer.testing import CliRunner

    from kvstate.cli import app

    res = CliRunner().invoke(app, ["serve", "-d", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a monitor or detector folder" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["serve", "-d", str(tmp_path), "--replicas", "0"])
    assert res.exit_code == 2 and "--replicas must be at least 1" in res.output
    assert not ray.is_initialized()


def test_models_health_and_non_streamed_reply(server, folders):
    c = _client(server)
    assert [m.id for m in c.models.list().data] == ["tiny-llama"]
    with urllib.request.urlopen(f"{server['url']}/health", timeout=30) as r:
        health = json.loads(r.read())
    assert r.status == 200 and health["status"] == "ok" and health["model"] == "tiny-llama"
    msgs = [{"role": "user", "content": PROMPTS[1]}]
    r = c.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=6)
    ext = r.kvstate
    ref, ids = _solo(folders["lm"], folders["spec"], folders["det"], msgs, 6)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6 == len(ext["scores"])
    np.testing.assert_allclose(ext["scores"], ref, atol=1e-4)
    assert ext["aggregate"] == pytest.approx(max(ext["scores"])) and ext["flagged"] is False and ext["threshold"] is None
    assert r.choices[0].message.content == folders["lm"].tokenizer.decode(ids, skip_special_tokens=True)


def test_streamed_reply_has_a_score_per_token(server, folders):
    msgs = [{"role": "user", "content": PROMPTS[2]}]
    text, scores, steps, final = _stream(_client(server), msgs, 7)
    ref, ids = _solo(folders["lm"], folders["spec"], folders["det"], msgs, 7)
    assert steps == list(range(7)) and final.choices[0].finish_reason == "length"
    np.testing.assert_allclose(scores, ref, atol=1e-4)
    assert text == folders["lm"].tokenizer.decode(ids, skip_special_tokens=True)
    assert final.kvstate["aggregate"] == pytest.approx(max(scores)) and final.kvstate["flagged"] is False


def test_planted_threshold_flags_and_stops_at_the_known_step(server, folders):
    k, trace = folders["k"], folders["trace"]
    c = _client(server, "/stop")
    text, scores, steps, final = _stream(c, STOP_PROMPT, 12)
    assert final.choices[0].finish_reason == "content_filter"
    assert steps == list(range(k + 1)) and final.kvstate["stopped_at"] == k and final.kvstate["flagged"] is True
    np.testing.assert_allclose(scores, trace[: k + 1], atol=1e-4)
    assert scores[-1] > final.kvstate["threshold"] > max(scores[:-1])
    r = c.chat.completions.create(model="tiny-llama", messages=STOP_PROMPT, max_tokens=12)  # same policy unstreamed
    assert r.choices[0].finish_reason == "content_filter" and len(r.kvstate["scores"]) == k + 1 and r.kvstate["flagged"]
    # below the flag step the same request ends normally
    r = c.chat.completions.create(model="tiny-llama", messages=STOP_PROMPT, max_tokens=k)
    assert r.choices[0].finish_reason == "length" and not r.kvstate["flagged"]


def test_concurrent_streams_have_no_cross_talk(server, folders):
    c = _client(server)
    jobs = [([{"role": "user", "content": p}], 4 + i) for i, p in enumerate(PROMPTS)]  # own max_tokens per stream
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(lambda j: _stream(c, *j), jobs))
    batch_sizes = []
    for (msgs, n), (text, scores, _, final) in zip(jobs, outs):
        ref, ids = _solo(folders["lm"], folders["spec"], folders["det"], msgs, n)
        assert len(scores) == n and final.choices[0].finish_reason == "length", msgs
        np.testing.assert_allclose(scores, ref, atol=1e-4, err_msg=str(msgs))
        assert text == folders["lm"].tokenizer.decode(ids, skip_special_tokens=True)
        batch_sizes.append(final.kvstate["batch_size"])
    assert max(batch_sizes) > 1, f"no two requests were batched together: {batch_sizes}"


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    url = f"{server['url']}/v1/chat/completions"
    user = [{"role": "user", "content": "hi"}]
    cases = {
        "invalid JSON": b'{"messages": [',
        "missing messages": json.dumps({"model": "tiny-llama"}).encode(),
        "unknown role": json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(),
        "over the context": json.dumps({"messages": [{"role": "user", "content": "a" * 300}]}).encode(),
        "prompt + max_tokens over the context": json.dumps({"messages": user, "max_tokens": 250}).encode(),
        "max_tokens 0": json.dumps({"messages": user, "max_tokens": 0}).encode(),
        "max_tokens negative": json.dumps({"messages": user, "max_tokens": -3}).encode(),
    }
    for what, body in cases.items():
        for stream in (False, True):
            if stream and what != "invalid JSON":
                body = json.dumps({**json.loads(body), "stream": True}).encode()
            status, doc = _post(url, body)
            assert 400 <= status < 500, (what, status, doc)
            assert doc["error"]["type"] == "invalid_request_error" and doc["error"]["message"], what
            assert "\n" not in doc["error"]["message"], what
    with pytest.raises(openai.BadRequestError, match="context"):
        _client(server).chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "a" * 300}])
    r = _client(server).chat.completions.create(model="tiny-llama", messages=user, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and len(r.kvstate["scores"]) == 3


@pytest.mark.slow
def test_killed_replica_ends_the_stream_with_an_error_event_and_is_restarted(server, folders):
    serve.run(build_app(folders["mon"], folders["model"], replicas=1, stop=False, **server["common"]),
              name="fault", route_prefix="/fault")
    try:
        pid = serve.get_deployment_handle("MonitorModel", app_name="fault").info.remote().result(timeout_s=60)["pid"]
        c = _client(server, "/fault")
        stream = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=200, stream=True)
        got = 0
        with pytest.raises(openai.APIError, match="replica failed"):
            for ch in stream:
                if getattr(ch, "kvstate", None) is not None:
                    got += 1
                    if got == 2:
                        os.kill(pid, signal.SIGKILL)
        assert got >= 2
        # other applications keep serving while the replica is down
        r = _client(server).chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=2)
        assert len(r.kvstate["scores"]) == 2
        deadline, last = time.monotonic() + 120, None
        while time.monotonic() < deadline:  # Ray restarts the replica: bounded wait
            try:
                r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
                break
            except (openai.APIStatusError, openai.APIConnectionError) as e:
                last = e
                time.sleep(1)
        else:
            pytest.fail(f"the replica did not come back within 120 s: {last}")
        assert len(r.kvstate["scores"]) == 2
        new_pid = serve.get_deployment_handle("MonitorModel", app_name="fault").info.remote().result(timeout_s=60)["pid"]
        assert new_pid != pid
    finally:
        serve.delete("fault")


@pytest.mark.slow
def test_smollm2_streamed_request_returns_scores(server, tmp_path):
    lm = load_model("smollm2-135m")
    layers = [lm.num_layers - 2, lm.num_layers - 1]
    save_monitor(tmp_path / "mon", _spec(layers, model="smollm2-135m"), _detector(1))
    serve.run(build_app(tmp_path / "mon", "smollm2-135m", replicas=1, **server["common"]), name="smol", route_prefix="/smol")
    try:
        c = openai.OpenAI(base_url=f"{server['url']}/smol/v1", api_key="none", max_retries=0, timeout=120)
        scores, final = [], None
        for ch in c.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "What is 2+2?"}],
                                            max_tokens=8, stream=True):
            if ch.choices and ch.choices[0].finish_reason:
                final = ch
            elif getattr(ch, "kvstate", None):
                scores.append(ch.kvstate["score"])
        assert final is not None and 1 <= len(scores) <= 8 and all(np.isfinite(scores))
        assert final.kvstate["aggregate"] == pytest.approx(max(scores))
    finally:
        serve.delete("smol")

"""Serving benchmark: the real HTTP server over loopback, the embedded SmolLM2 base, many r=16 LoRA adapters.

    .venv/bin/python benchmarks/serving.py            # full run (issue 12's targets)
    .venv/bin/python benchmarks/serving.py --quick    # smoke run: fewer requests, a 20 s load phase

The server (``serve.app.create_app`` under uvicorn) runs in a child process, so that clients and server do
not share a GIL; the clients (httpx, asyncio) and the ``model.generate`` yardstick run in this process. Phases,
one at a time (never two heavy ones at once), each with the load average before and after it:

1. store: import the embedded SmolLM2, write r=16 LoRA adapters (q,k,v,o,gate,up,down; random A and B so
   they all differ) plus many small ones, register and sign them all, alias one (``bench@production``).
2. throughput, closed loop, 8 clients, 32 new tokens, configurations measured round-robin in ``--repeats``
   rounds (a change of machine load hits all of them alike): ``plain_generate_batch8`` (``model.generate``
   on the bare base, batch 8, in this process: the yardstick), and over HTTP the bare base, 1 adapter,
   8 / 32 / 100 distinct adapters (request k uses adapter k mod N, and each round sends at least N requests,
   so every adapter is used; 100 > the pool's 64 slots, so that configuration runs with LRU misses);
   ``http_1_adapter_merge_hot``: the same single adapter on a second server started with ``merge_hot=True``
   (warmed with 64 requests so that it is merged before it is timed) — ``--no-merge-hot`` leaves it out.
3. cold load: an r=16 adapter never requested before, one request of 1 token; the pool's load time as the
   server measures it (``tuneops_adapter_load_seconds`` in /metrics) and the extra end-to-end latency over
   a warm request of the same adapter.
4. load: 32 concurrent streaming clients for 60 s (mixed adapters, the alias and the base): requests, 5xx,
   p50 / p99 latency, time to first token.
5. scan: every registered adapter (1,000 in the full run) requested once, 8 at a time, with 64 resident;
   the server's RSS before and after.
6. fuzz: schemathesis against the served OpenAPI schema plus hostile mutations (tests/serve/fuzzing.py).

Writes benchmarks/results/serving.json and benchmarks/results/serving.png (tokens/s bars, latency CDF).
"""

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests/serve/fuzzing.py: the fuzz workload shared with the tests
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
PLOT = ROOT / "benchmarks" / "results" / "serving.png"

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SMALL_TARGETS = ["q_proj", "v_proj"]
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe your ideal weekend in detail.",
    "Write a poem about the autumn forest.",
    "Tell me about the history of the printing press.",
    "Give me ten tips for learning a new language.",
    "Describe the water cycle to a ten year old.",
    "Write a letter to a friend you have not seen in years.",
]
CHAT = "/v1/chat/completions"


# -- where the time goes, and how loaded the machine was -------------------------------------------------

def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


class Machine:
    """Platform facts plus, for every phase, its wall time and the load average before and after it."""

    def __init__(self):
        import torch

        self.info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "load_avg_at_start": loadavg()}
        self.phases: dict[str, dict] = {}

    @contextmanager
    def phase(self, name: str):
        before, t0 = loadavg(), time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = {"wall_s": round(time.perf_counter() - t0, 1), "load_avg_before": before,
                                 "load_avg_after": loadavg()}

    def as_dict(self) -> dict:
        return self.info | {"load_avg_at_end": loadavg(), "phases": self.phases}


def quantile(values, q: float) -> float | None:
    """Nearest-rank quantile (None for no values)."""
    xs = sorted(values)
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _r(x, nd=1):
    return None if x is None else round(x, nd)


def console():
    from rich.console import Console

    return Console(stderr=True)


def progress(con):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), console=con, transient=False)


# -- adapters ------------------------------------------------------------------------------------------

def write_adapters(model_dir: Path, out: Path, count: int, *, r: int = 16, targets=TARGETS, seed0: int = 0,
                   prefix: str = "adapter", layers: list[int] | None = None) -> list[Path]:
    """``count`` PEFT LoRA adapter directories for the model in ``model_dir``, each with random A and B
    (seeded by its index) so that they all differ. PEFT writes the first; the others are that one's config
    with new tensors of the same names and shapes (much faster than re-saving through PEFT). Directories that
    already exist are kept (a reused ``--home``)."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}-{k:04d}" for k in range(count)]
    missing = [p for p in paths if not (p / "adapter_model.safetensors").exists()]
    if not missing:
        return paths
    template = out / f"{prefix}-template"
    if not (template / "adapter_model.safetensors").exists():
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0,
                         layers_to_transform=layers)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), cfg)
        model.save_pretrained(template)
        del model
    shapes = {k: v.shape for k, v in load_file(str(template / "adapter_model.safetensors")).items()}
    for path in missing:
        k = int(path.name.rsplit("-", 1)[1])
        gen = torch.Generator().manual_seed(seed0 + k)
        tensors = {name: (torch.randn(shape, generator=gen) * (0.02 if "lora_A" in name else 0.01)).contiguous()
                   for name, shape in shapes.items()}
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy(template / "adapter_config.json", tmp / "adapter_config.json")
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        tmp.rename(path)
    return paths


def ensure_signing_key(home: Path) -> None:
    """Sign with a key made for this benchmark (in the store's home), never the user's own keys."""
    from tuneops.release.signing import generate_key

    folder = home / "keys"
    os.environ["TUNEOPS_KEY_DIR"] = str(folder)
    os.environ.pop("TUNEOPS_SIGNING_KEY", None)
    if not (folder / "default").exists():
        generate_key(folder)


def register_all(store, base_id: str, paths: list[Path], on_each=None) -> list[str]:
    """Register (and sign: register_adapter signs with the active key) each adapter; their artifact ids."""
    from tuneops.release.registry import register_adapter

    ids = []
    for p in paths:
        art, _ = register_adapter(store, p, base_id=base_id, method="lora", run_id=None, dataset_ids=[],
                                  recipe_hash=None, extra_lineage={"note": "serving benchmark: random weights"})
        ids.append(art.id)
        if on_each:
            on_each()
    return ids


def alias_one(store, artifact_id: str, alias: str = "bench@production") -> str | None:
    """Point ``alias`` at the artifact (forced: random adapters have no eval report); None if refused."""
    from tuneops.release.registry import promote, resolve_alias

    try:
        if resolve_alias(store, alias).id == artifact_id:
            return alias
    except Exception:  # noqa: BLE001  (no such alias yet)
        pass
    try:
        promote(store, artifact_id, alias, force=True, reason="serving benchmark")
        return alias
    except Exception as e:  # noqa: BLE001  (the benchmark runs without it, and says so)
        print(f"alias {alias} not set: {e}", file=sys.stderr)
        return None


# -- the server, in a child process ---------------------------------------------------------------------

def _serve_child(spec: dict) -> None:
    import uvicorn

    from tuneops.cli.main import _quiet_hf
    from tuneops.serve.app import create_app
    from tuneops.store import Store

    _quiet_hf()
    import torch

    torch.set_num_threads(spec["threads"])
    app = create_app(Store(Path(spec["home"]) / "store"), spec["base_id"], **spec["app"])
    uvicorn.run(app, host="127.0.0.1", port=spec["port"], log_level="warning", timeout_keep_alive=120)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """uvicorn serving ``create_app(store, base_id, **app_kwargs)`` in a child process."""

    def __init__(self, home: Path, base_id: str, app_kwargs: dict, threads: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "server.log"
        spec = {"home": str(home), "base_id": base_id, "port": self.port, "app": app_kwargs, "threads": threads}
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-child", json.dumps(spec)], env=env,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server did not start in {timeout}s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def memory_mb(pid: int) -> dict:
    """Resident set size now and its peak (VmHWM), in MiB, from /proc."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def scrape(url: str) -> dict:
    """The parts of /metrics this benchmark reads: per-adapter load time sums and counts, pool counters."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=60).text
    load_sum, load_count, pool = {}, {}, {}
    pat = re.compile(r'^(tuneops_adapter_load_seconds_(?:sum|count))\{[^}]*adapter="([^"]+)"[^}]*\}\s+(\S+)$')
    for line in text.splitlines():
        m = pat.match(line)
        if m:
            (load_sum if m.group(1).endswith("sum") else load_count)[m.group(2)] = float(m.group(3))
            continue
        for name in ("tuneops_adapter_pool_hits_total", "tuneops_adapter_pool_misses_total",
                     "tuneops_adapter_pool_evictions_total", "tuneops_adapters_resident"):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                pool[name.removeprefix("tuneops_").removesuffix("_total")] = float(line.rsplit(None, 1)[1])
    return {"load_sum": load_sum, "load_count": load_count, "pool": pool}


# -- clients ---------------------------------------------------------------------------------------------

def chat_body(model: str, prompt: str, max_tokens: int, stream: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def one_request(client, url: str, model: str, prompt: str, max_tokens: int, stream: bool = False) -> dict:
    """One chat completion; {status, latency_s, ttft_s, tokens, model, error}. Streaming measures the time
    to the first chunk that carries text."""
    import httpx

    rec = {"model": model, "status": None, "latency_s": None, "ttft_s": None, "tokens": 0, "error": None}
    t0 = time.perf_counter()
    try:
        if not stream:
            r = await client.post(url + CHAT, json=chat_body(model, prompt, max_tokens, False))
            rec["status"] = r.status_code
            if r.status_code == 200:
                rec["tokens"] = r.json()["usage"]["completion_tokens"]
            else:
                rec["error"] = r.text[:300]
        else:
            async with client.stream("POST", url + CHAT, json=chat_body(model, prompt, max_tokens, True)) as r:
                rec["status"] = r.status_code
                if r.status_code != 200:
                    rec["error"] = (await r.aread()).decode("utf-8", "replace")[:300]
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            rec["error"] = json.dumps(event)[:300]
                            rec["status"] = 599  # an error after the stream started (counted as a 5xx)
                            continue
                        if rec["ttft_s"] is None and any(c.get("delta", {}).get("content")
                                                         for c in event.get("choices", [])):
                            rec["ttft_s"] = time.perf_counter() - t0
                        if event.get("usage"):
                            rec["tokens"] = event["usage"]["completion_tokens"]
    except httpx.HTTPError as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    rec["latency_s"] = time.perf_counter() - t0
    return rec


def make_client(clients: int):
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=30.0),
                             limits=httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4))


async def closed_loop(url: str, pick, *, clients: int, max_tokens: int, requests_per_client: int | None = None,
                      duration_s: float | None = None, stream: bool = False, on_done=None) -> tuple[list[dict], float]:
    """``clients`` clients, each sending its next request when the previous returns, for
    ``requests_per_client`` requests each or until ``duration_s`` has passed (requests in flight then are
    finished and counted). ``pick(k)`` -> (model, prompt) of the k-th request overall. (records, wall s)."""
    records: list[dict] = []
    counter = 0
    async with make_client(clients) as client:
        t0 = time.perf_counter()

        async def worker():
            nonlocal counter
            done = 0
            while True:
                if requests_per_client is not None and done >= requests_per_client:
                    return
                if duration_s is not None and time.perf_counter() - t0 >= duration_s:
                    return
                k = counter
                counter += 1
                model, prompt = pick(k)
                rec = await one_request(client, url, model, prompt, max_tokens, stream)
                rec["start_s"] = round(time.perf_counter() - t0 - rec["latency_s"], 3)
                records.append(rec)
                done += 1
                if on_done:
                    on_done(rec)

        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return records, wall


async def _touch(url: str, models: list[str], concurrency: int = 8, max_tokens: int = 1, on_done=None) -> list[dict]:
    """One short request per model, ``concurrency`` at a time (warms the pool, or scans it)."""
    queue = list(enumerate(models))
    records: list[dict] = []
    async with make_client(concurrency) as client:
        async def worker():
            while queue:
                k, model = queue.pop(0)
                rec = await one_request(client, url, model, PROMPTS[k % len(PROMPTS)], max_tokens)
                records.append(rec)
                if on_done:
                    on_done(rec)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def _healthz(url: str) -> dict:
    import httpx

    return httpx.get(url + "/healthz", timeout=30).json()


def wait_merged(url: str, artifact_id: str, timeout: float = 120) -> dict:
    """Wait until the merge_hot server serves ``artifact_id`` from its merged copy; its pool's merge facts."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pool = _healthz(url)["pool"]
        if pool.get("merged_tree") and pool.get("merges"):
            return {k: pool.get(k) for k in ("merged_tree", "merged_bytes", "last_switch")}
        time.sleep(0.5)
    raise RuntimeError(f"{artifact_id} was not merged within {timeout}s")


# -- phases ----------------------------------------------------------------------------------------------

def plain_generate(model, tokenizer, new_tokens: int):
    """A callable running ``model.generate`` on the 8 prompts (left padded, greedy, exactly ``new_tokens``
    new tokens each); returns the number of new tokens."""
    import torch

    from tuneops.eval.generate import encode_chat

    ids = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]

    def run() -> int:
        enc = tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]

    return run


def throughput_configs(base_id: str, adapters: list[str], counts=(1, 8, 32, 100)) -> dict[str, list[str]]:
    """Configuration name -> the models its requests cycle through (request k uses models[k mod N])."""
    configs = {"http_base": [base_id]}
    for n in counts:
        if n <= len(adapters):
            configs["http_1_adapter" if n == 1 else f"http_{n}_adapters"] = adapters[:n]
    return configs


async def throughput_phase(url: str, configs: dict[str, list[str]], plain, *, repeats: int, clients: int,
                           requests_per_client: int, new_tokens: int, pool_size: int, machine: Machine,
                           con=None, urls: dict[str, str] | None = None) -> dict:
    """Every configuration once per round, ``repeats`` rounds, the order rotated each round. Each HTTP
    configuration first warms its adapters (one 1-token request each, untimed) when they fit the pool."""
    base_url = url
    names = ["plain_generate_batch8"] + list(configs)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    cursor = {n: 0 for n in configs}  # where each configuration's adapter cycle continues next round
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            before = loadavg()
            if name == "plain_generate_batch8":
                t0 = time.perf_counter()
                tokens = sum(plain() for _ in range(requests_per_client))
                wall = time.perf_counter() - t0
                sample = {"tokens": tokens, "wall_s": wall, "requests": 8 * requests_per_client, "errors": 0}
            else:
                models = configs[name]
                url = (urls or {}).get(name, base_url)
                if len(models) <= pool_size:
                    await _touch(url, models, min(clients, len(models)), 1, None)
                start = cursor[name]
                # Enough requests that every adapter of the configuration is used in each round.
                per_client = max(requests_per_client, -(-len(models) // clients))
                records, wall = await closed_loop(
                    url, lambda k, m=models, s=start: (m[(s + k) % len(m)], PROMPTS[k % len(PROMPTS)]),
                    clients=clients, max_tokens=new_tokens, requests_per_client=per_client)
                cursor[name] = (start + len(records)) % len(models)
                ok = [r for r in records if r["status"] == 200]
                sample = {"tokens": sum(r["tokens"] for r in ok), "wall_s": wall, "requests": len(records),
                          "errors": len(records) - len(ok),
                          "distinct_models": len({r["model"] for r in records}),
                          "latency_p50_s": _r(quantile([r["latency_s"] for r in ok], 0.5), 2),
                          "error_samples": [r["error"] for r in records if r["status"] != 200][:3]}
            sample["tokens_per_s"] = sample["tokens"] / sample["wall_s"]
            sample["load_avg_before"], sample["load_avg_after"] = before, loadavg()
            samples[name].append(sample)
            if con is not None:
                con.log(f"round {rep + 1}/{repeats} {name}: {sample['tokens']} tokens in {wall:.1f}s = "
                        f"{sample['tokens_per_s']:.1f} tok/s, errors {sample['errors']} (load {before[0]:.1f})")
    tps = {n: statistics.median(s["tokens_per_s"] for s in v) for n, v in samples.items()}

    def per_round(a: str, b: str) -> list[float]:
        return [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(samples[a], samples[b])]

    ratios = {}
    if "http_1_adapter" in tps:
        ratios["single_over_plain_batch8"] = per_round("http_1_adapter", "plain_generate_batch8")
        for name in configs:
            if name.startswith("http_") and name.endswith("_adapters"):
                ratios[name.removeprefix("http_").removesuffix("_adapters").join(("mixed", "_over_single"))] = \
                    per_round(name, "http_1_adapter")
    ratios["base_over_plain_batch8"] = per_round("http_base", "plain_generate_batch8")
    if "http_1_adapter_merge_hot" in tps:
        ratios["merged_single_over_plain_batch8"] = per_round("http_1_adapter_merge_hot", "plain_generate_batch8")
        ratios["merged_single_over_single"] = per_round("http_1_adapter_merge_hot", "http_1_adapter")
    return {"tokens_per_s": {n: round(v, 2) for n, v in tps.items()}, "samples": samples,
            "ratios_per_round": {k: [round(x, 3) for x in v] for k, v in ratios.items()},
            "ratios": {k: round(statistics.median(v), 3) for k, v in ratios.items()}}


async def cold_phase(url: str, models: list[str], *, on_done=None) -> dict:
    """For each adapter never requested before: a 1-token request (cold), then the same again (warm).
    The pool's own load time per adapter comes from /metrics (tuneops_adapter_load_seconds)."""
    rows = []
    async with make_client(1) as client:
        for k, model in enumerate(models):
            cold = await one_request(client, url, model, PROMPTS[k % len(PROMPTS)], 1)
            warm = await one_request(client, url, model, PROMPTS[k % len(PROMPTS)], 1)
            rows.append({"model": model, "cold_s": cold["latency_s"], "warm_s": warm["latency_s"],
                         "status": [cold["status"], warm["status"]]})
            if on_done:
                on_done(cold)
    metrics = await asyncio.to_thread(scrape, url)
    load_ms = [1000 * metrics["load_sum"][m] / metrics["load_count"][m] for m in models
               if metrics["load_count"].get(m)]
    extra_ms = [1000 * (r["cold_s"] - r["warm_s"]) for r in rows if r["status"] == [200, 200]]
    cold_ms = [1000 * r["cold_s"] for r in rows if r["status"][0] == 200]
    return {"adapters": len(models), "measured_by_server": len(load_ms),
            "cold_load_p50_ms": _r(quantile(load_ms, 0.5)), "cold_load_p95_ms": _r(quantile(load_ms, 0.95)),
            "cold_load_max_ms": _r(max(load_ms, default=None)),
            "e2e_extra_p50_ms": _r(quantile(extra_ms, 0.5)), "e2e_extra_p95_ms": _r(quantile(extra_ms, 0.95)),
            "cold_request_p50_ms": _r(quantile(cold_ms, 0.5)), "cold_request_p95_ms": _r(quantile(cold_ms, 0.95)),
            "warm_request_p50_ms": _r(quantile([1000 * r["warm_s"] for r in rows], 0.5)),
            "errors": sum(r["status"] != [200, 200] for r in rows)}


async def load_phase(url: str, models: list[str], *, clients: int, duration_s: float, max_tokens: int,
                     on_done=None, seed: int = 0) -> dict:
    """``clients`` streaming closed-loop clients for ``duration_s`` over a random mix of ``models``."""
    rng = random.Random(seed)
    records, wall = await closed_loop(url, lambda k: (rng.choice(models), PROMPTS[k % len(PROMPTS)]),
                                      clients=clients, max_tokens=max_tokens, duration_s=duration_s, stream=True,
                                      on_done=on_done)
    ok = [r for r in records if r["status"] == 200 and r["error"] is None]
    lat = [r["latency_s"] * 1000 for r in ok]
    ttft = [r["ttft_s"] * 1000 for r in ok if r["ttft_s"] is not None]
    statuses: dict[str, int] = {}
    for r in records:
        key = str(r["status"]) if r["status"] is not None else "no_response"
        statuses[key] = statuses.get(key, 0) + 1
    return {"clients": clients, "duration_s": duration_s, "wall_s": round(wall, 1), "requests": len(records),
            "by_status": statuses,
            "count_5xx": sum(1 for r in records if r["status"] is not None and r["status"] >= 500),
            "no_response": sum(1 for r in records if r["status"] is None),
            "completion_tokens": sum(r["tokens"] for r in ok),
            "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2),
            "p50_ms": _r(quantile(lat, 0.5)), "p90_ms": _r(quantile(lat, 0.9)), "p99_ms": _r(quantile(lat, 0.99)),
            "ttft_p50_ms": _r(quantile(ttft, 0.5)), "ttft_p99_ms": _r(quantile(ttft, 0.99)),
            "error_samples": [r["error"] for r in records if r["error"]][:5],
            "latencies_ms": [round(x, 1) for x in lat], "ttfts_ms": [round(x, 1) for x in ttft]}


async def scan_phase(url: str, models: list[str], pid: int, *, concurrency: int = 8, on_done=None) -> dict:
    """Request every adapter once (1 token), ``concurrency`` at a time; the server's memory before and after."""
    before = memory_mb(pid)
    t0 = time.perf_counter()
    records = await _touch(url, models, concurrency, 1, on_done)
    wall = time.perf_counter() - t0
    after = memory_mb(pid)
    pool = (await asyncio.to_thread(scrape, url))["pool"]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {"registered_scanned": len(models), "wall_s": round(wall, 1), "by_status": statuses,
            "ok": statuses.get("200", 0), "memory_before": before, "memory_after": after, "pool_after": pool,
            "server_alive": True, "error_samples": [r["error"] for r in records if r["status"] != 200][:3]}


def fuzz_phase(url: str, models: list[str], n_requests: int) -> dict:
    from tests.serve.fuzzing import fuzz

    t0 = time.perf_counter()
    out = fuzz(url, models, n_requests=n_requests, seed=0)
    return {"requests": out["requests"], "count_5xx": out["count_5xx"], "by_status": out["by_status"],
            "generated": out["generated"], "wall_s": round(time.perf_counter() - t0, 1),
            "server_errors": out["server_errors"][:5]}


# -- results ---------------------------------------------------------------------------------------------

def summarize(*, throughput: dict, cold: dict, load: dict, scan: dict, fuzz: dict | None, machine: dict,
              settings: dict) -> dict:
    tps, ratios = throughput["tokens_per_s"], throughput["ratios"]
    single = ratios.get("single_over_plain_batch8")
    mixed32 = ratios.get("mixed32_over_single")
    scan_ok = scan["ok"] == scan["registered_scanned"] and scan.get("server_alive", False)
    result = {
        "tokens_per_s": tps,
        "single_over_plain_batch8": single,
        "mixed32_over_single": mixed32,
        "mixed8_over_single": ratios.get("mixed8_over_single"),
        "mixed100_over_single": ratios.get("mixed100_over_single"),
        "base_over_plain_batch8": ratios.get("base_over_plain_batch8"),
        "merged_single_over_plain_batch8": ratios.get("merged_single_over_plain_batch8"),
        "merged_single_over_single": ratios.get("merged_single_over_single"),
        "ratios_per_round": throughput["ratios_per_round"],
        "merge_hot_pool": throughput.get("merge_hot_pool"),
        "cold_load_p50_ms": cold["cold_load_p50_ms"],
        "cold_load_p95_ms": cold["cold_load_p95_ms"],
        "cold_load": {k: v for k, v in cold.items()},
        "load_requests": load["requests"],
        "load_5xx": load["count_5xx"],
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "ttft_p50_ms": load["ttft_p50_ms"],
        "ttft_p99_ms": load["ttft_p99_ms"],
        "load": {k: v for k, v in load.items() if k not in ("latencies_ms", "ttfts_ms")},
        "registered_adapters_scan": scan,
        "schemathesis": fuzz,
        "targets": {
            "single_over_plain_batch8 >= 0.8": single is not None and single >= 0.8,
            "mixed32_over_single >= 0.85": mixed32 is not None and mixed32 >= 0.85,
            "cold_load_p95_ms <= 300": cold["cold_load_p95_ms"] is not None and cold["cold_load_p95_ms"] <= 300,
            "registered_with_resident_no_oom": scan_ok,
            "load_5xx == 0": load["count_5xx"] == 0 and load["no_response"] == 0,
            "fuzz_5xx == 0": None if fuzz is None else fuzz["count_5xx"] == 0,
        },
        "throughput_samples": throughput["samples"],
        "settings": settings,
        "machine": machine,
    }
    return result


def plot(result: dict, latencies_ms: list[float], ttfts_ms: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    tps = result["tokens_per_s"]
    names = list(tps)
    colors = ["#888888" if n.startswith("plain") else "#4c72b0" if n == "http_base" else "#dd8452" for n in names]
    bars = ax1.bar(range(len(names)), [tps[n] for n in names], color=colors)
    ax1.set_xticks(range(len(names)), [n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax1.set_ylabel("completion tokens / s (median of rounds)")
    s = result["settings"]
    ax1.set_title(f"{s['clients']} closed-loop clients, {s['new_tokens']} new tokens, SmolLM2-135M, r=16 LoRA")
    for b, n in zip(bars, names):
        ax1.annotate(f"{tps[n]:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                     fontsize=8)
    if tps.get("plain_generate_batch8"):
        ax1.axhline(0.8 * tps["plain_generate_batch8"], ls="--", c="k", lw=0.8, label="0.8 x plain batch-8")
        ax1.legend(fontsize=8)
    for values, label in ((latencies_ms, "latency"), (ttfts_ms, "time to first token")):
        if values:
            xs = sorted(values)
            ax2.plot([x / 1000 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))], label=label)
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("fraction of requests")
    ax2.set_title(f"load test: {result['load']['clients']} streaming clients, {result['load_requests']} requests, "
                  f"{result['load_5xx']} 5xx")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, fewer requests, 20 s load phase")
    ap.add_argument("--home", type=Path, default=None, help="work dir (store, adapters); reused if given")
    ap.add_argument("--repeats", type=int, default=None, help="throughput rounds (default 3, quick 1)")
    ap.add_argument("--requests-per-client", type=int, default=None, help="per configuration and round (4, quick 2)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, for the server and the model.generate yardstick alike (default 1: on a "
                         "2-core machine shared with other work, 2 OpenMP threads measured up to 9x slower)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--adapters", type=int, default=100, help="r=16 adapters for the throughput configurations")
    ap.add_argument("--cold", type=int, default=None, help="cold loads to time (40, quick 10)")
    ap.add_argument("--registered", type=int, default=None, help="small adapters registered and scanned (1000, quick 150)")
    ap.add_argument("--load-clients", type=int, default=32)
    ap.add_argument("--load-seconds", type=float, default=None, help="load phase length (60, quick 20)")
    ap.add_argument("--fuzz", type=int, default=None, help="schemathesis + hostile requests (120, quick 30; 0 = skip)")
    ap.add_argument("--no-merge-hot", action="store_true",
                    help="leave out http_1_adapter_merge_hot (a second server started with merge_hot=True)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plot", type=Path, default=PLOT)
    ap.add_argument("--serve-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_child:
        return _serve_child(json.loads(args.serve_child))
    q = args.quick
    repeats = args.repeats or (1 if q else 3)
    rpc = args.requests_per_client or (2 if q else 4)
    n_cold = args.cold if args.cold is not None else (10 if q else 40)
    n_registered = args.registered if args.registered is not None else (150 if q else 1000)
    load_s = args.load_seconds or (20.0 if q else 60.0)
    n_fuzz = args.fuzz if args.fuzz is not None else (30 if q else 120)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    con = console()
    from tuneops.cli.main import _quiet_hf

    _quiet_hf()
    import torch

    torch.set_num_threads(args.threads)
    machine = Machine()
    home = args.home or Path(tempfile.mkdtemp(prefix="tuneops-serving-"))
    home.mkdir(parents=True, exist_ok=True)
    ensure_signing_key(home)
    app_kwargs = {"max_batch": 8, "max_resident": 64, "max_tokens_limit": args.new_tokens,
                  "request_timeout": 600.0}
    settings = {"quick": q, "repeats": repeats, "requests_per_client": rpc, "clients": args.clients,
                "new_tokens": args.new_tokens, "torch_threads": args.threads, "adapters": args.adapters, "adapter_rank": 16,
                "adapter_targets": TARGETS, "cold_loads": n_cold, "registered_small": n_registered,
                "small_adapter": {"r": 16, "targets": SMALL_TARGETS, "layers": [0, 1]},
                "load_clients": args.load_clients, "load_seconds": load_s, "fuzz_requests": n_fuzz,
                "server": app_kwargs | {"batch_window_s": 0.005, "process": "uvicorn in a child process"},
                "command": " ".join([".venv/bin/python", "benchmarks/serving.py"] + sys.argv[1:])}

    from tuneops.models.base import base_dir, import_embedded, load_base
    from tuneops.store import Store

    server = merged_server = None
    try:
        with machine.phase("setup"), progress(con) as prog:
            store = Store(home / "store")
            task = prog.add_task("import SmolLM2", total=1, info="")
            base, _ = import_embedded(store)
            prog.update(task, advance=1, info=base.id[:20])
            model_dir = base_dir(store, base)
            n_big = args.adapters + n_cold
            task = prog.add_task("write adapters", total=2, info=f"{n_big} r=16 + {n_registered} small")
            big = write_adapters(model_dir, home / "adapters", n_big)
            prog.update(task, advance=1)
            small = write_adapters(model_dir, home / "small", n_registered, targets=SMALL_TARGETS, layers=[0, 1],
                                   seed0=10_000, prefix="small")
            prog.update(task, advance=1)
            task = prog.add_task("register + sign", total=n_big + n_registered, info="")
            big_ids = register_all(store, base.id, big, on_each=lambda: prog.advance(task))
            small_ids = register_all(store, base.id, small, on_each=lambda: prog.advance(task))
            alias = alias_one(store, big_ids[0])
        hot, cold = big_ids[:args.adapters], big_ids[args.adapters:]
        con.log(f"store {home / 'store'}: base {base.id}, {len(big_ids)} r=16 + {len(small_ids)} small adapters, "
                f"alias {alias}")

        with machine.phase("server_start"):
            server = ServerProcess(home, base.id, app_kwargs, threads=args.threads)
            plain_model, tok = load_base(store, base)
            plain = plain_generate(plain_model, tok, args.new_tokens)
            plain()  # warm-up
            server.wait_ready()
        memory = {"server_after_start": memory_mb(server.pid)}
        con.log(f"server {server.url} (pid {server.pid}) ready; {memory['server_after_start']}")

        configs = throughput_configs(base.id, hot)
        urls = {}
        if not args.no_merge_hot:
            with machine.phase("merged_server_start"):
                merged_server = ServerProcess(home, base.id, app_kwargs | {"merge_hot": True}, threads=args.threads)
                merged_server.wait_ready()
                asyncio.run(_touch(merged_server.url, [hot[0]] * 64, 8, 1, None))   # a full merge_hot window
                merged = wait_merged(merged_server.url, hot[0])
            con.log(f"merge_hot server {merged_server.url}: {merged}")
            configs["http_1_adapter_merge_hot"] = [hot[0]]
            urls["http_1_adapter_merge_hot"] = merged_server.url
        with machine.phase("throughput"):
            con.log("throughput: " + ", ".join(["plain_generate_batch8"] + list(configs)))
            thr = asyncio.run(throughput_phase(server.url, configs, plain, repeats=repeats, clients=args.clients,
                                               requests_per_client=rpc, new_tokens=args.new_tokens,
                                               pool_size=app_kwargs["max_resident"], machine=machine, con=con,
                                               urls=urls))
        if urls:
            thr["merge_hot_pool"] = {k: v for k, v in _healthz(merged_server.url)["pool"].items()
                                     if k in ("merged_tree", "merged_bytes", "merges", "unmerges", "path_merged",
                                              "last_switch")}
            memory["merged_server_after_throughput"] = memory_mb(merged_server.pid)
            merged_server.stop()
        memory["server_after_throughput"] = memory_mb(server.pid)
        del plain_model, plain

        with machine.phase("cold_load"), progress(con) as prog:
            task = prog.add_task("cold loads", total=len(cold), info="")
            cold_res = asyncio.run(cold_phase(server.url, cold,
                                              on_done=lambda r: prog.update(task, advance=1,
                                                                            info=f"{r['latency_s'] * 1000:.0f} ms")))
        con.log(f"cold load: {cold_res}")

        mix = hot[:32] + [base.id] + ([alias] if alias else [])
        with machine.phase("load"), progress(con) as prog:
            task = prog.add_task(f"load {args.load_clients} clients", total=None, info="")
            n5 = [0]

            def on_load(r):
                n5[0] += r["status"] is not None and r["status"] >= 500
                prog.update(task, advance=1, info=f"5xx {n5[0]}")

            load_res = asyncio.run(load_phase(server.url, mix, clients=args.load_clients, duration_s=load_s,
                                              max_tokens=args.new_tokens, on_done=on_load))
        con.log(f"load: {load_res['requests']} requests, 5xx {load_res['count_5xx']}, p50 {load_res['p50_ms']} ms, "
                f"p99 {load_res['p99_ms']} ms, ttft p50 {load_res['ttft_p50_ms']} ms")

        with machine.phase("scan"), progress(con) as prog:
            task = prog.add_task(f"scan {len(small_ids)} registered", total=len(small_ids), info="")
            scan_res = asyncio.run(scan_phase(server.url, small_ids, server.pid,
                                              on_done=lambda r: prog.update(task, advance=1,
                                                                            info=str(memory_mb(server.pid)))))
            scan_res["server_alive"] = server.proc.poll() is None
            scan_res["registered_total"] = len(big_ids) + len(small_ids)
        con.log(f"scan: {scan_res}")

        fuzz_res = None
        if n_fuzz:
            with machine.phase("fuzz"):
                con.log(f"fuzz: {n_fuzz} requests")
                fuzz_res = fuzz_phase(server.url, [hot[0], base.id] + ([alias] if alias else []), n_fuzz)
            con.log(f"fuzz: {fuzz_res['requests']} requests, 5xx {fuzz_res['count_5xx']}, {fuzz_res['by_status']}")
        memory["server_at_end"] = memory_mb(server.pid)
        memory["server_alive_at_end"] = server.proc.poll() is None
    finally:
        for srv in (server, merged_server):
            if srv is not None:
                srv.stop()
    m = machine.as_dict() | {"server_memory": memory,
                             "note": "2 cores shared with other agents' work: absolute figures are noisy; "
                                     "configurations are interleaved so the ratios are measured under the same load"}
    result = summarize(throughput=thr, cold=cold_res, load=load_res, scan=scan_res, fuzz=fuzz_res, machine=m,
                       settings=settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, load_res["latencies_ms"], load_res["ttfts_ms"], args.plot)
    print(json.dumps({k: v for k, v in result.items() if k not in ("throughput_samples", "settings")}, indent=2))
    con.log(f"wrote {args.out} and {args.plot}")
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

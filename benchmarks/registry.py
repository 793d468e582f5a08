"""Push and pull 4 × 100 MB layers with pybuild and with skopeo, in one run; print ratios.

Usage: ``.venv/bin/python benchmarks/registry.py [--layer-mb 100] [--runs 3]``

Everything lives on /dev/shm (the registry's storage and both tools' stores), so the disk
does not decide the result. Each measured push goes to a freshly started registry (empty
storage), so neither tool can skip or mount blobs it saw in an earlier run (skopeo keeps a
blob-info cache outside its store; pybuild records blob provenance). Both commands run as
subprocesses, so start-up time counts for both. Variants: gzip-compressed layers (random
data compressed at level 1) and uncompressed layers (skopeo with ``--preserve-digests`` and
``--dest-oci-accept-uncompressed-layers`` so it does not recompress).
Reported: median seconds of ``--runs`` runs (after ``--warmup`` uncounted ones; the tools
alternate going first), MB/s, and the pybuild/skopeo time ratio (goal ≤ 1.0).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerstore.canonicaljson import canonical_json  # noqa: E402
from layerstore.descriptor import Descriptor, MediaType  # noqa: E402
from layerstore.manifest import Manifest  # noqa: E402
from layerstore.store import Store  # noqa: E402

PYBUILD = [sys.executable, "-m", "builder"]
SKOPEO = shutil.which("skopeo")
REGISTRY = shutil.which("docker-registry")
NAME = "docker.io/library/bench:1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""

    def start(self) -> None:
        self.stop()
        data = self.base / "registry"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        port = free_port()
        self.host = f"127.0.0.1:{port}"
        cfg = data / "config.yml"
        cfg.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "error", "accesslog": {"disabled": True}},
                    "storage": {"filesystem": {"rootdirectory": str(data / "data")}},
                    "http": {"addr": self.host},
                }
            )
        )
        assert REGISTRY is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen(
            [REGISTRY, "serve", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        for _ in range(300):
            try:
                conn = http.client.HTTPConnection(self.host, timeout=1)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("registry did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


def make_image(store: Store, layer_mb: int, compressed: bool) -> int:
    """Four random layers into ``store`` as NAME; returns the total blob bytes."""
    descs = []
    diff_ids = []
    total = 0
    for i in range(4):
        raw_path = store.root / f"layer{i}.tar"
        with tarfile.open(raw_path, "w") as tar:
            data_path = store.root / f"data{i}"
            with open(data_path, "wb") as f:
                for _ in range(layer_mb):
                    f.write(os.urandom(1 << 20))
            tar.add(data_path, arcname=f"data{i}")
            data_path.unlink()
        from layerstore.digest import digest_file

        diff_ids.append(str(digest_file(str(raw_path))))
        if compressed:
            gz_path = store.root / f"layer{i}.tar.gz"
            with open(raw_path, "rb") as src, gzip.open(gz_path, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            raw_path.unlink()
            raw_path = gz_path
        digest = store.blobs.put_file(raw_path)
        size = raw_path.stat().st_size
        raw_path.unlink()
        total += size
        media = MediaType.OCI_LAYER_GZIP if compressed else MediaType.OCI_LAYER
        descs.append(Descriptor(media, digest, size))
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
    )
    cdigest = store.blobs.put_bytes(config)
    manifest = Manifest.build(
        config=Descriptor(MediaType.OCI_CONFIG, cdigest, len(config)), layers=descs
    )
    store.images.tag(NAME, store.put_manifest(manifest))
    return total


CPU: dict[str, list[float]] = {}
CURRENT = [""]  # the variant being measured
_last_cpu = [0.0]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall-clock seconds of ``cmd``; its CPU seconds (user + sys) go to ``_last_cpu``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _last_cpu[0] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}… failed: {done.stderr.strip()[-800:]}")
    return elapsed


def _record(results: dict[str, list[float]], key: str, counted: bool, seconds: float) -> None:
    if counted:
        results[key].append(seconds)
        CPU.setdefault(f"{CURRENT[0]} {key}", []).append(_last_cpu[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted runs first")
    parser.add_argument("--variants", default="compressed,uncompressed")
    args = parser.parse_args()
    if REGISTRY is None or SKOPEO is None:
        print("needs docker-registry and skopeo (apt-get install docker-registry skopeo)")
        return 2
    base = Path(tempfile.mkdtemp(prefix="pybuild-bench-registry-", dir="/dev/shm"))
    registry = Registry(base)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("REGISTRY_AUTH_FILE", None)
    env["DOCKER_CONFIG"] = str(base / "docker")
    rows = []
    try:
        for variant in args.variants.split(","):
            compressed = variant == "compressed"
            CURRENT[0] = variant
            src_root = base / f"src-{variant}"
            store = Store.open(src_root)
            total = make_image(store, args.layer_mb, compressed)
            store.close()
            mb = total / 1e6
            results: dict[str, list[float]] = {
                k: [] for k in ("pb-push", "sk-push", "pb-pull", "sk-pull")
            }
            skopeo_extra = [] if compressed else ["--preserve-digests"]
            skopeo_pull_extra = [] if compressed else ["--dest-oci-accept-uncompressed-layers"]
            for run in range(args.warmup + args.runs):
                # Alternate who goes first: freshly allocated tmpfs pages cost more than
                # reused ones here, and the second tool reuses what the first one freed.
                order = ("pybuild", "skopeo") if run % 2 == 0 else ("skopeo", "pybuild")
                counted = run >= args.warmup
                for tool in order:
                    registry.start()
                    ref = f"{registry.host}/bench/{tool}:1"
                    push_env = dict(env, PYBUILD_ROOT=str(src_root))
                    if tool == "pybuild":
                        _record(
                            results,
                            "pb-push",
                            counted,
                            timed([*PYBUILD, "push", "-q", NAME, ref], push_env),
                        )
                        dst = base / "pb-dst"
                        shutil.rmtree(dst, ignore_errors=True)
                        _record(
                            results,
                            "pb-pull",
                            counted,
                            timed([*PYBUILD, "pull", "-q", ref], dict(env, PYBUILD_ROOT=str(dst))),
                        )
                        shutil.rmtree(dst, ignore_errors=True)
                    else:
                        _record(results, "sk-push", counted,
                            timed(
                                [
                                    SKOPEO, "copy", "-q", "--dest-tls-verify=false",
                                    *skopeo_extra, f"oci:{src_root}:{NAME}", f"docker://{ref}",
                                ],
                                env,
                            )
                        )  # fmt: skip
                        dst = base / "sk-dst"
                        shutil.rmtree(dst, ignore_errors=True)
                        _record(results, "sk-pull", counted,
                            timed(
                                [
                                    SKOPEO, "copy", "-q", "--src-tls-verify=false",
                                    *skopeo_pull_extra, f"docker://{ref}", f"oci:{dst}:bench",
                                ],
                                env,
                            )
                        )  # fmt: skip
                        shutil.rmtree(dst, ignore_errors=True)
            med = {k: statistics.median(v) for k, v in results.items()}
            for direction in ("push", "pull"):
                pb, sk = med[f"pb-{direction}"], med[f"sk-{direction}"]
                rows.append(
                    (variant, direction, mb, pb, sk, pb / sk, results[f"pb-{direction}"],
                     results[f"sk-{direction}"])
                )  # fmt: skip
            shutil.rmtree(src_root, ignore_errors=True)
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n4 × {args.layer_mb} MB layers, median of {args.runs} runs (all on /dev/shm)")
    print(f"{'variant':<13}{'dir':<6}{'MB':>7}{'pybuild s':>11}{'MB/s':>8}{'skopeo s':>10}"
          f"{'MB/s':>8}{'ratio':>7}")  # fmt: skip
    for variant, direction, mb, pb, sk, ratio, _, _ in rows:
        print(
            f"{variant:<13}{direction:<6}{mb:>7.0f}{pb:>11.2f}{mb / pb:>8.0f}{sk:>10.2f}"
            f"{mb / sk:>8.0f}{ratio:>7.2f}"
        )
    print("CPU seconds (user+sys of the command; the registry's own CPU is not included):")
    for key, values in sorted(CPU.items()):
        print(f"  {key}: median {statistics.median(values):.2f} {[round(v, 2) for v in values]}")
    for variant, direction, _, _, _, _, pbs, sks in rows:
        print(f"  {variant} {direction}: pybuild {[round(x, 2) for x in pbs]} "
              f"skopeo {[round(x, 2) for x in sks]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

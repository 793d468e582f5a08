"""Build speed: ``pybuild build`` against ``buildah bud --layers`` on the same contexts.

Both builders read their base image from one loopback registry (docker-registry, busybox
pushed there by pybuild) and keep their stores on tmpfs, each run in a private store or
``--root`` (flags per /work/shared/PEERS.md). Scenarios: (a) 3 RUN + COPY, (b) 3 stages
with COPY --from, (c) 30 RUN steps, (d) 20,000 small files + 200 MB context copied in.
Modes: cold (empty store: pull + every step), fully cached (same store, nothing changed),
one change (a file copied late in the Dockerfile changes). Prints medians of ``--runs``
runs and ratios pybuild / buildah (below 1.0: pybuild is faster).

Run: ``.venv/bin/python benchmarks/build.py [--runs 3] [--scenarios a,b,c,d]``.
Goals: cached ≤ 0.5× buildah; cold and one-change ≤ 1.0×.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYBUILD = [sys.executable, "-m", "builder"]

SCENARIOS = {
    "a": "3 RUN + COPY",
    "b": "3 stages",
    "c": "30 RUN steps",
    "d": "20k files + 200 MB",
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(
            f"failed: {' '.join(cmd)}\n{proc.stdout.decode()[-2000:]}{proc.stderr.decode()[-3000:]}"
        )
    return seconds


def make_context(kind: str, base: Path) -> tuple[Path, Path]:
    """(context dir, the file whose change is the "one change")."""
    ctx = base / f"ctx-{kind}"
    ctx.mkdir()
    head = "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:test\n"
    (ctx / "late.txt").write_text("late 0\n")
    if kind == "a":
        (ctx / "app.txt").write_text("app\n")
        text = head + (
            "RUN echo one > /one\nRUN echo two > /two\nCOPY app.txt /app.txt\n"
            "RUN cat /app.txt /one /two > /all\nCOPY late.txt /late.txt\n"
        )
    elif kind == "b":
        text = (
            "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:test AS one\nRUN echo 1 > /one\n"
            "FROM ${REGISTRY}/library/busybox:test AS two\nRUN echo 2 > /two\n"
            "FROM ${REGISTRY}/library/busybox:test\nCOPY --from=one /one /one\n"
            "COPY --from=two /two /two\nCOPY late.txt /late.txt\nRUN cat /one /two /late.txt\n"
        )
    elif kind == "c":
        text = head + "".join(f"RUN echo step {i} > /step{i}\n" for i in range(30))
        text += "COPY late.txt /late.txt\n"
    else:
        rnd = random.Random(7)
        for d in range(200):
            sub = ctx / "small" / f"d{d:03d}"
            sub.mkdir(parents=True)
            for f in range(100):
                (sub / f"f{f:03d}.txt").write_bytes(rnd.randbytes(rnd.randint(50, 400)))
        big = ctx / "big"
        big.mkdir()
        for i in range(25):
            (big / f"blob{i:02d}.bin").write_bytes(rnd.randbytes(8 * 1024 * 1024))
        text = head + "RUN echo prepare > /prep\nCOPY . /ctx/\nRUN ls /ctx | wc -l\n"
    (ctx / "Dockerfile").write_text(text)
    return ctx, ctx / "late.txt"


class Registry:
    def __init__(self, root: Path) -> None:
        self.port = _port()
        self.host = f"127.0.0.1:{self.port}"
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
            "http": {"addr": self.host},
        }
        (root / "config.yml").write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise SystemExit("registry did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def pybuild_runner(work: Path, registry: str) -> Callable[[Path, bool], float]:
    def run(ctx: Path, fresh: bool) -> float:
        store = work / "pybuild-store"
        if fresh and store.exists():
            shutil.rmtree(store)
        env = dict(os.environ, PYBUILD_ROOT=str(store))
        # An installed pybuild has its bytecode cached; don't recompile it on every run.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return _run(
            [
                *PYBUILD,
                "build",
                "-q",
                "--build-arg",
                f"REGISTRY={registry}",
                "-t",
                "bench",
                str(ctx),
            ],
            env=env,
            cwd=ROOT,
        )

    return run


def buildah_runner(work: Path, registry: str) -> Callable[[Path, bool], float]:
    root, runroot = work / "buildah-root", work / "buildah-run"

    def wipe() -> None:
        subprocess.run(["umount", "-R", str(root / "overlay")], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)

    def run(ctx: Path, fresh: bool) -> float:
        if fresh:
            wipe()
        return _run(
            [
                "buildah", "--root", str(root), "--runroot", str(runroot),
                "--storage-driver", "overlay", "bud", "--layers", "--isolation", "chroot",
                "--network", "host", "--tls-verify=false", "--build-arg", f"REGISTRY={registry}",
                "-t", "bench", "-f", str(ctx / "Dockerfile"), str(ctx),
            ]
        )  # fmt: skip

    run.wipe = wipe  # type: ignore[attr-defined]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="a,b,c,d")
    parser.add_argument("--dir", default="/dev/shm")
    args = parser.parse_args()
    for tool in ("buildah", "docker-registry"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not installed (see /work/shared/PEERS.md)")
    work = Path(tempfile.mkdtemp(prefix="pybuild-bench-", dir=args.dir))
    (work / "registry").mkdir()
    registry = Registry(work / "registry")
    try:
        base = work / "seed"
        subprocess.run([str(ROOT / "scripts" / "make-busybox-rootfs"), str(base / "rootfs")],
                       check=True)  # fmt: skip
        env = dict(os.environ, PYBUILD_ROOT=str(base / "store"))
        _run([*PYBUILD, "import", str(base / "rootfs"), "busybox:test"], env=env, cwd=ROOT)
        _run([*PYBUILD, "push", "-q", "busybox:test", f"{registry.host}/library/busybox:test"],
             env=env, cwd=ROOT)  # fmt: skip
        tools = {
            "pybuild": pybuild_runner(work, registry.host),
            "buildah": buildah_runner(work, registry.host),
        }
        print(f"{'scenario':<22}{'mode':<12}{'pybuild':>10}{'buildah':>10}{'ratio':>8}")
        for key in args.scenarios.split(","):
            ctx, late = make_context(key, work)
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.runs):
                for name, run in tools.items():
                    late.write_text("late 0\n")
                    times.setdefault((name, "cold"), []).append(run(ctx, True))
                    times.setdefault((name, "cached"), []).append(run(ctx, False))
                    late.write_text(f"late {time.time()}\n")
                    times.setdefault((name, "one change"), []).append(run(ctx, False))
            for mode in ("cold", "cached", "one change"):
                p = statistics.median(times[("pybuild", mode)])
                b = statistics.median(times[("buildah", mode)])
                print(f"{SCENARIOS[key]:<22}{mode:<12}{p:>9.2f}s{b:>9.2f}s{p / b:>8.2f}")
            shutil.rmtree(ctx)
            sys.stdout.flush()
    finally:
        registry.stop()
        tools_b = buildah_runner(work, "")
        tools_b.wipe()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

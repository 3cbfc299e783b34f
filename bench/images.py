"""Build the deploy images here with podman and run the compose stack from them.

Builds Debian bookworm as the base (mmdebstrap), the control plane with and without the
engine (deploy/Dockerfile, EXTRAS) and the GPU worker (deploy/Dockerfile.gpu), then runs
docker-compose.yml's code server, daemon and webserver from the slim control plane's
filesystem against a real PostgreSQL (tests/postgres_server.py), materialises one demo
episode through the daemon with the model step in the worker image's filesystem (the
``subprocess`` backend with ``TWIML_WORKER_PYTHON``), and prints the build times, the image
sizes, ``import twiml_assets.definitions`` in each image (a run pod's start), the episode's
files in storage and its run's status read from PostgreSQL. See tests/image_stack.py for
how the images run without ``podman run``.

    bash bench/images.sh                 # everything: about 15 min, 45 GB of free disk
    bash bench/images.sh --no-engine-image   # skip the control plane with the engine
    bash bench/images.sh --keep-build-cache  # keep the build stages (about 20 GB more disk)
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import image_stack as images  # noqa: E402


def gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-engine-image", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="do not rebuild the images that exist already"
    )
    parser.add_argument(
        "--keep-build-cache",
        action="store_true",
        help="keep the build stages' images (faster rebuilds, about 20 GB more disk)",
    )
    args = parser.parse_args()

    from tests.conftest import SHORT_EPISODE_LINES
    from tests.dagster_processes import publish
    from tests.postgres_server import start_server
    from twiml_assets.demo.http_server import LocalHTTPServer
    from twiml_assets.demo.synth import synthesize_dialogue

    print(f"machine: {platform.machine()}, {cpu_model()}")
    work = Path(tempfile.mkdtemp(prefix="twiml-images-"))
    times = {"base (mmdebstrap + podman import)": images.build_base(work)}
    builds = [
        ("control plane", "deploy/Dockerfile", images.CONTROL_PLANE_IMAGE, None),
        ("worker (Dockerfile.gpu)", "deploy/Dockerfile.gpu", images.WORKER_IMAGE, None),
    ]
    if not args.no_engine_image:
        builds.append(("control plane + engine", "deploy/Dockerfile",
                       images.CONTROL_PLANE_ENGINE_IMAGE, "postgres,modal,k8s,engine"))  # fmt: skip
    for name, dockerfile, tag, extras in builds:
        if args.reuse and images.image_exists(tag):
            print(f"reusing {name}: {tag}", flush=True)
            times[name] = float("nan")
            continue
        print(f"building {name}: {tag} ...", flush=True)
        times[name] = images.build_image(dockerfile, tag, work / f"build-{tag.split('/')[-1]}.log",
                                         extras)  # fmt: skip
        if not args.keep_build_cache:  # an engine image's build stage is another ~10 GB
            images.prune_build_cache()
    print("\n| image | build (s) | size | import twiml_assets.definitions (s) |")
    print("|---|---|---|---|")
    print(f"| base | {times['base (mmdebstrap + podman import)']:.0f} | "
          f"{gb(images.image_size(images.BASE_IMAGE))} | - |")  # fmt: skip
    for name, _, tag, _ in builds:
        with images.container_root(tag) as root:
            seconds = images.import_seconds(images.ImageStack.of(tag, root, work / "probe"))
        print(f"| {name} | {times[name]:.0f} | {gb(images.image_size(tag))} | {seconds:.2f} |")

    postgres = start_server()
    clip = synthesize_dialogue(work / "episode.mp3", SHORT_EPISODE_LINES[0], seed=0)
    demos = [("slim control plane, model step in the worker image", images.CONTROL_PLANE_IMAGE,
              images.WORKER_IMAGE, "subprocess")]  # fmt: skip
    if not args.no_engine_image:
        demos.append(("control plane + engine, model step in the run (local)",
                      images.CONTROL_PLANE_ENGINE_IMAGE, None, "local"))  # fmt: skip
    ok = True
    try:
        for n, (title, control_plane_tag, worker_tag, compute) in enumerate(demos):
            print(f"\nthe demo episode through the daemon: {title}")
            with contextlib.ExitStack() as stack_of:
                feed = stack_of.enter_context(LocalHTTPServer())
                control_plane = stack_of.enter_context(images.container_root(control_plane_tag))
                worker = (
                    stack_of.enter_context(images.container_root(worker_tag))
                    if worker_tag
                    else None
                )
                (key,) = publish(feed, [clip.audio_path])
                stack = images.ImageStack.of(control_plane_tag, control_plane,
                                             work / f"stack-{n}", worker_tag, worker)  # fmt: skip
                run = images.run_demo(stack, postgres, feed.url("feed.xml"), key, compute)
            ok &= run.status == "SUCCESS"
            start = f"{run.worker_start_seconds:.1f} s" if run.worker_start_seconds else "?"
            print(f"run {run.run_id}: {run.status} (PostgreSQL `runs` table) in "
                  f"{run.seconds:.0f} s; run worker's start (RUN_STARTING to RUN_START): "
                  f"{start}; webserver answered: {run.webserver_ok}")  # fmt: skip
            for rel in run.outputs:
                print(f"  {rel}")
            if run.failure:
                print(run.failure[-3000:])
    finally:
        postgres.stop()
    print(f"work directory (logs): {work}")
    return 0 if ok else 1


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())

"""Each shipped image alone, run with the securityContext and volumes the manifests give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import sidecar
from tests.containers.engine import APP_IMAGES, IMAGES, REPO, Podman
from tests.podspec import Container, pod_template, translate

_DOCS = list(yaml.safe_load_all((REPO / "manifests" / "nginx.yaml").read_text()))
SPEC = pod_template(_DOCS, "Deployment", "web")
CONFIG: dict[str, str] = next(d for d in _DOCS if d and d["kind"] == "ConfigMap")["data"]

# What the image may write: its volumes only. /proc, /sys and /dev are the runtime's (every container has
# them, /dev/shm included), not the image's.
_WRITABLE = """
import os
found = []
for root, dirs, _ in os.walk("/"):
    if root in ("/proc", "/sys", "/dev"):
        dirs[:] = []
    elif os.access(root, os.W_OK):
        found.append(root)
        dirs[:] = []
print("\\n".join(sorted(found)))
"""


def _sidecar() -> Container:
    return translate(SPEC, pod_name="web-0").container("reload-sidecar")


def _run(podman: Podman, image: str, *args: str, options: tuple[str, ...] = (), volumes: tuple[str, ...] = ()) -> Any:
    """`podman run --rm` with the manifest sidecar's securityContext options (not its restart policy)."""
    opts = list(options)
    if "--restart" in opts:
        del opts[opts.index("--restart") : opts.index("--restart") + 2]
    mounts = [a for v in volumes for a in ("--volume", v)]
    return podman("run", "--rm", "--network", "none", *opts, *mounts, image, *args, check=False)


def _security_options() -> tuple[str, ...]:
    """The manifest sidecar's options without its env and restart policy: user, read-only root,
    no-new-privileges, dropped capabilities, memory limit."""
    options = _sidecar().options
    picked: list[str] = []
    for i, o in enumerate(options):
        if o.startswith("--read-only"):
            picked.append(o)
        elif o in ("--user", "--security-opt", "--cap-drop", "--memory"):
            picked += [o, options[i + 1]]
    return tuple(picked)


@pytest.mark.parametrize("variant", sorted(IMAGES))
def test_version_user_and_size(podman: Podman, variant: str) -> None:
    image = IMAGES[variant]
    done = _run(podman, image, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"reload-sidecar {sidecar.__version__}", done
    user = podman.out("image", "inspect", "--format", "{{.Config.User}}", image)
    assert user == ("101:101" if variant == "nginx" else "65532:65532")
    ids = _run(podman, image, options=("--entrypoint", "id"))
    assert ids.returncode == 0 and "uid=0" not in ids.stdout, ids
    print(f"{image}: {podman.size(image) / 1e6:.0f} MB")


@pytest.mark.parametrize("variant", sorted(IMAGES))
def test_no_writable_path_but_its_volumes(podman: Podman, variant: str, tmp_path: Path) -> None:
    """Read-only root as the manifest runs it: the sidecar's volumes are the only writable paths."""
    config = tmp_path / "config"
    config.mkdir(mode=0o755)
    options = (*_security_options(), "--entrypoint", "python3")
    tmpfs = ("--mount", "type=tmpfs,destination=/live,tmpfs-mode=0777", "--mount", "type=tmpfs,destination=/tmp")
    done = _run(podman, IMAGES[variant], "-c", _WRITABLE, options=(*options, *tmpfs), volumes=(f"{config}:/config:ro",))
    assert done.returncode == 0, done
    assert done.stdout.split() == ["/live", "/tmp"], done.stdout
    # And the root filesystem refuses a write even where the image's user owns the directory.
    home = _run(podman, IMAGES[variant], "-c", "open('/opt/x', 'w')", options=options)
    assert "Read-only file system" in home.stderr, home


def _nginx_config(tmp_path: Path, **changes: str) -> Path:
    from tests.kubelet import project

    config = tmp_path / "config"
    project(config, {**CONFIG, **changes})
    config.chmod(0o755)
    return config


def test_validate_runs_nginx_t_inside(podman: Podman, tmp_path: Path) -> None:
    """`validate DIR` with the manifest's checker: `nginx -t` of the image's own nginx, in a read-only root
    with the manifest's /tmp volume (nginx -t writes its pid file and temp paths there)."""
    env = [o for e in _sidecar().options if e.startswith("RELOAD_VALIDATE_COMMAND=") for o in ("--env", e)]
    options = (*_security_options(), *env, "--mount", "type=tmpfs,destination=/tmp,tmpfs-mode=1777")
    good = _run(
        podman,
        IMAGES["nginx"],
        "validate",
        "/config",
        options=options,
        volumes=(f"{_nginx_config(tmp_path)}:/config:ro",),
    )
    assert good.returncode == 0, good
    broken = _nginx_config(tmp_path / "b", **{"default.conf": "server { listen 8080; bogus_directive on; }\n"})
    bad = _run(podman, IMAGES["nginx"], "validate", "/config", options=options, volumes=(f"{broken}:/config:ro",))
    assert bad.returncode == 1 and "bogus_directive" in bad.stdout + bad.stderr, bad
    # Without a writable /tmp, `validate DIR` cannot stage the candidate (it has no target dir to do it in):
    # a clear error, not a traceback.
    no_tmp = _run(
        podman,
        IMAGES["nginx"],
        "validate",
        "/config",
        options=(*_security_options(), *env),
        volumes=(f"{_nginx_config(tmp_path / 'c')}:/config:ro",),
    )
    said = no_tmp.stdout + no_tmp.stderr
    assert no_tmp.returncode != 0 and "cannot stage the candidate for the checker" in said, no_tmp
    assert "Traceback" not in said, said


def test_once_promotes_or_refuses(podman: Podman, tmp_path: Path) -> None:
    """`once` (an initContainer's job): the good version lands in the target dir kubelet-style; a refused
    one leaves it empty and exits 1."""
    env = [
        o
        for e in _sidecar().options
        if e.startswith(("RELOAD_SOURCE_DIR=", "RELOAD_TARGET_DIR=", "RELOAD_VALIDATE_COMMAND="))
        for o in ("--env", e)
    ]
    for name, changes, code in [("good", {}, 0), ("bad", {"nginx.conf": "worker_processes two;\n"}, 1)]:
        live = tmp_path / name / "live"
        live.mkdir(parents=True)
        live.chmod(0o777)
        options = (*_security_options(), *env, "--mount", "type=tmpfs,destination=/tmp,tmpfs-mode=1777")
        config = _nginx_config(tmp_path / name, **changes)
        done = _run(podman, IMAGES["nginx"], "once", options=options, volumes=(f"{config}:/config:ro", f"{live}:/live"))
        assert done.returncode == code, done
        if code == 0:
            assert (live / "..data").is_symlink() and (live / "default.conf").read_text() == CONFIG["default.conf"]
        else:
            assert not (live / "..data").exists()


def test_nginx_checker_is_the_apps_nginx(podman: Podman) -> None:
    """The nginx variant is built FROM the app's image: `nginx -V` (version, modules) is the same binary."""

    def nginx_v(image: str) -> str:
        done = _run(podman, image, "-V", options=("--entrypoint", "nginx", "--user", "101"))
        assert done.returncode == 0, done
        return str(done.stderr)

    assert nginx_v(IMAGES["nginx"]) == nginx_v(APP_IMAGES["nginx"])
    image = translate(SPEC, pod_name="web-0").container("nginx").image
    assert podman.out("image", "inspect", "--format", "{{.Id}}", image) == podman.out(
        "image", "inspect", "--format", "{{.Id}}", APP_IMAGES["nginx"]
    )


def test_prometheus_variant_has_the_apps_promtool(podman: Podman) -> None:
    def version(image: str, binary: str) -> str:
        done = _run(podman, image, "--version", options=("--entrypoint", binary))
        assert done.returncode == 0, done
        return str(done.stdout + done.stderr).split("\n")[0].split(",")[1]

    assert version(IMAGES["prometheus"], "promtool") == version(APP_IMAGES["prometheus"], "/bin/promtool")


_UNCOMPILED = """
import importlib.util, os, sys, sysconfig
roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]
missing = []
for root in roots:
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("test", "tests", "idle_test", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(top, name)
                if not os.path.exists(importlib.util.cache_from_source(path)):
                    missing.append(path)
print(len(missing), *missing[:5])
"""


@pytest.mark.parametrize("variant", sorted(IMAGES))
def test_bytecode_is_in_the_image(podman: Podman, variant: str) -> None:
    """Start-up on a read-only root reads bytecode and never compiles: every module of the standard library
    and of the virtualenv has its .pyc, compiled at build time."""
    done = _run(podman, IMAGES[variant], "-c", _UNCOMPILED, options=(*_security_options(), "--entrypoint", "python3"))
    assert done.returncode == 0, done
    assert done.stdout.split()[0] == "0", done.stdout

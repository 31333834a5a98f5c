"""Start the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel bundles (Triton 2.51, python backend only)
on a model repository, on 127.0.0.1, and stop it by its PID: a real Triton server without a container, for tests,
CI, benchmarks and local use (docs/serving.md).

PyTriton's own Python API has no sequence batching, so the binary is run directly. What it needs, found here:

* a backend directory holding the python backend (``libtriton_python.so`` and its utilities, linked from the
  wheel) and the python-backend stub built for this interpreter's version (the wheel ships one per version);
* the stub links ``libpython3.X.so`` by name. Left to the system loader it may get the system's libpython, whose
  patch release differs from the interpreter that owns the environment (a pyenv or uv Python), and the stub then
  fails to import the standard library (seen: ``_thread.RLock ... _recursion_count``). ``LD_LIBRARY_PATH`` starts
  with this interpreter's own library directory (``sysconfig``'s ``LIBDIR``), so the stub embeds the very
  interpreter that runs this code;
* the stub finds its ``sys.prefix`` (and so the virtual environment's site-packages) from the first ``python3`` on
  ``PATH``: this interpreter's directory goes first. The stub runs Python isolated (``-I``: no ``PYTHONPATH``);
  ``PYTHONPATH`` gets the directory ``ssd_deploy`` is imported from and the model puts it on ``sys.path``
  itself, so that it imports the same ssd-deploy as the process that started the server;
* ``LD_LIBRARY_PATH`` also holds the wheel's ``nvidia_pytriton.libs`` (the stub's CUDA runtime).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


def pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")  # located, not imported: its import is slow and not needed
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the bundled Triton server comes with the nvidia-pytriton wheel: pip install nvidia-pytriton")
    return Path(list(spec.submodule_search_locations)[0])


def server_binary() -> Path:
    path = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not path.is_file():
        raise UserError(f"{path}: not found in the installed nvidia-pytriton")
    return path


def backend_directory(into: Path) -> Path:
    """A backend directory with the python backend and the stub of this interpreter's Python version."""
    dist = pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").iterdir())
        raise UserError(f"nvidia-pytriton has no python-backend stub for Python {version} (it has {', '.join(have)})")
    python = Path(into) / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in [*sorted((dist / "backends" / "python").glob("*.so")),
                dist / "backends" / "python" / "triton_python_backend_utils.py", stub]:
        (python / src.name).symlink_to(src)
    return Path(into)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    libs = [pytriton_dir().parent / "nvidia_pytriton.libs"]
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        libs.insert(0, Path(libdir))
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, libs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running tritonserver: ``url`` (gRPC, host:port), ``http_url``, ``log`` (its output), ``pid``."""
    process: subprocess.Popen
    grpc_port: int
    http_port: int
    log: Path
    workdir: tempfile.TemporaryDirectory = field(repr=False)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout_s: float = 20.0):
        """SIGTERM to this server's PID (Triton unloads the models and exits), SIGKILL if it does not."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.workdir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start(repository: Path, timeout_s: float = 120.0, log: Path | None = None, verbose: int = 0,
          exit_timeout_s: int = 5, attempts: int = 3) -> Server:
    """Starts the bundled server on ``repository`` bound to 127.0.0.1 (HTTP, gRPC; metrics off) and waits until
    every model is ready. On failure the server is stopped and the error quotes the end of its log.
    ``exit_timeout_s``: how long a stopping server waits for requests in flight. A port taken between choosing it
    and the server binding it is retried with other ports (``attempts``)."""
    for attempt in range(attempts):
        try:
            return _start(repository, timeout_s, log, verbose, exit_timeout_s)
        except _PortTaken:
            if attempt == attempts - 1:
                raise UserError("tritonserver: the free ports it was given were taken before it bound them, "
                                f"{attempts} times") from None


class _PortTaken(Exception):
    pass


def _start(repository: Path, timeout_s: float, log: Path | None, verbose: int, exit_timeout_s: int) -> Server:
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise UserError(f"{repository}: no model repository there")
    workdir = tempfile.TemporaryDirectory(prefix="ssd-deploy-triton-")
    backends = backend_directory(Path(workdir.name) / "backends")
    log = Path(log) if log is not None else Path(workdir.name) / "server.log"
    grpc_port, http_port = free_port(), free_port()
    cmd = [str(server_binary()), f"--model-repository={repository}", f"--backend-directory={backends}",
           "--http-address=127.0.0.1", f"--http-port={http_port}", "--grpc-address=127.0.0.1",
           f"--grpc-port={grpc_port}", "--allow-metrics=false", "--allow-sagemaker=false", "--allow-vertex-ai=false",
           f"--exit-timeout-secs={exit_timeout_s}", f"--log-verbose={verbose}",
           # the configs are complete; auto-completion would start (and import) every python model twice
           "--disable-auto-complete-config"]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environment(),
                                   cwd=workdir.name, start_new_session=True)
    server = Server(process, grpc_port, http_port, log, workdir)
    deadline = time.monotonic() + timeout_s
    while not server.ready():
        if process.poll() is not None or time.monotonic() > deadline:
            text = server.log_text()
            tail = "\n".join(text.splitlines()[-15:])
            what = f"exited with status {process.returncode}" if process.poll() is not None \
                else f"not ready after {timeout_s:g} s"
            server.stop()
            if "already in use" in text:
                raise _PortTaken()
            raise UserError(f"tritonserver on {repository} {what}; the end of its log:\n{tail}")
        time.sleep(0.2)
    return server


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None):
    """``python -m ssd_deploy.serving.server REPO``: serve REPO on 127.0.0.1 until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ssd_deploy.serving.server", description=main.__doc__)
    parser.add_argument("repository", type=Path)
    parser.add_argument("--verbose", type=int, default=0, help="Triton's --log-verbose level")
    args = parser.parse_args(argv)
    try:
        server = start(args.repository, verbose=args.verbose)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"tritonserver (pid {server.pid}) serving {args.repository}: gRPC {server.url}, HTTP {server.http_url}; "
          f"log {server.log}; Ctrl-C stops it", flush=True)
    # SIGTERM too: the server runs in its own session, and would outlive this process otherwise
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()

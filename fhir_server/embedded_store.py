"""The embedded default document store: FerretDB (SQLite backend) on loopback, started and stopped by the hub.

Used when ``MONGODB_URI`` is not set. The binary is built once by ``scripts/install-ferretdb.sh`` into
``.cache/bin`` of the checkout (``make run`` and ``make test`` do that). Telemetry is off
(``--telemetry=disable`` and ``DO_NOT_TRACK=1``); FerretDB's debug HTTP listener is off.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["EmbeddedStore", "EmbeddedStoreError", "die_with_parent", "find_ferretdb", "free_port"]

_REPO_BIN = Path(__file__).resolve().parent.parent / ".cache" / "bin" / "ferretdb"


_REBUILD_LOGGED = b"Rebuilding the _id index"  # FerretDB's log line, scripts/ferretdb-unquoted-id-index.patch


class EmbeddedStoreError(RuntimeError):
    """The embedded store cannot be started; the message says what to install or set."""


def find_ferretdb(explicit: Path | None = None) -> Path:
    if explicit is not None:
        if explicit.is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise EmbeddedStoreError(f"MEDUNION_FERRETDB_BIN={explicit} is not an executable file: fix it, unset it to "
                                 "use the checkout's build, or set MONGODB_URI to a MongoDB server.")
    for candidate in (_REPO_BIN, Path.cwd() / ".cache" / "bin" / "ferretdb"):
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("ferretdb")
    if found:
        return Path(found)
    hint = "install Go and run `make run` (it builds FerretDB once)" if shutil.which("go") is None else (
        "run `scripts/install-ferretdb.sh` (or `make run`)")
    raise EmbeddedStoreError(
        f"No FerretDB binary for the embedded store: {hint}, or set MONGODB_URI to a MongoDB server.")


def die_with_parent() -> None:
    """In the child: get SIGTERM when the hub dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedStore:
    """A FerretDB child process with its SQLite files under ``data_dir``."""

    def __init__(self, *, data_dir: Path, port: int, binary: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.binary = find_ferretdb(binary)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "ferretdb.log"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, *, timeout: float = 30.0) -> None:
        if _port_open(self.port):
            raise EmbeddedStoreError(
                f"Port 127.0.0.1:{self.port} is already in use: another hub or store is running there. "
                "Stop it or set MEDUNION_FERRETDB_PORT.")
        sqlite_dir = self.data_dir / "sqlite"
        sqlite_dir.mkdir(parents=True, exist_ok=True)
        # GOGC=400: FerretDB's heap is tens of MB, and collecting it 4x less often took its CPU per search from
        # 1,372 to 1,170 us (docs/benchmarks.md); an operator's own GOGC wins.
        env = {"GOGC": "400", **os.environ, "DO_NOT_TRACK": "1", "FERRETDB_TELEMETRY": "disable"}
        # mmap: SQLite reads pages from the shared OS page cache instead of one pread() per page per connection
        # (syscalls are dear on virtual machines); 2 GiB is SQLite's compile-time cap, the rest is read normally.
        # temp_store(2): statement journals in memory. FerretDB inserts a batch as one INSERT per document in a
        # transaction, and each INSERT after the first wrote a statement journal to a temporary file (pwrite
        # syscalls) for a rollback that never came: 15 % of FerretDB's CPU on creates. Durability is the WAL's.
        pragmas = "_pragma=mmap_size(2147418112)&_pragma=temp_store(2)"
        # --test-batch-size: FerretDB commits an insert_many in SQLite transactions of this many documents (100
        # by default). A transaction Bundle's ~2,100 index documents were 21 commits, each writing its pages to
        # the WAL and syncing it while the other writers wait their turn (ferretdb-writers-take-turns.patch); in
        # 1,000s, 3: transaction ingest +17-20 % (docs/benchmarks.md). Under that ingest a write held the lock 6 ms
        # on average, these large inserts included.
        args = [
            str(self.binary), "--handler=sqlite", f"--sqlite-url=file:{sqlite_dir}/?{pragmas}",
            "--test-batch-size=1000",
            f"--state-dir={self.data_dir}", f"--listen-addr=127.0.0.1:{self.port}", "--debug-addr=-",
            "--telemetry=disable", "--log-level=warn", "--log-format=text", "--no-log-uuid",
        ]
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,  # noqa: S603
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        rebuilding = False
        while True:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise EmbeddedStoreError(f"FerretDB exited at start (code {self.process.returncode}):\n{tail}")
            if _port_open(self.port):
                return
            if not rebuilding and self._logged_since(logged, _REBUILD_LOGGED):
                rebuilding = True  # once per store made before the patch, minutes for a large one: wait for it
                print("medunion: FerretDB is rebuilding the store's _id indexes (once, after an upgrade of the "
                      "embedded store; a large store takes minutes): waiting. Its log: "
                      f"{self.log_path}", file=sys.stderr, flush=True)
            if not rebuilding and time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        self.stop()
        raise EmbeddedStoreError(f"FerretDB did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def _logged_since(self, offset: int, text: bytes) -> bool:
        """Whether FerretDB's log has ``text`` after ``offset`` (its size when this start began)."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return text in log.read()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

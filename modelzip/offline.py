"""Keep converters and runtimes offline: no network connection, no package installer.

Some converters phone home or install packages when imported (MNN's ``MNN.tools`` runs
``pip install`` of a logging SDK and sends telemetry; OpenVINO and NNCF ship a telemetry
client). Inside ``offline()`` (in every thread of the process: telemetry is often sent from a
background thread) a Python audit hook (PEP 578) refuses, with PermissionError,
every Internet socket connection, every DNS lookup and every process that runs pip or an
installer, and records each attempt: a library that swallows the error is still seen, and
modelzip.deploy reports what was blocked. Audit hooks cannot be removed, so the hook is added
once and does nothing outside the block.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Words in a process's command line that make it an installer.
_INSTALLERS = ("pip", "ensurepip", "easy_install", "conda", "uv", "apt-get", "npm")
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn")

_installed = False
_lock = threading.Lock()
_active: list[list[str]] = []  # the attempts list of each open block, innermost last


def _hook(event: str, args: tuple) -> None:
    if not _active:
        return
    attempts = _active[-1]
    if attempts is None:
        return
    refused = _refused(event, args)
    if refused is not None:
        attempts.append(refused)
        raise PermissionError(f"modelzip keeps conversions offline: refused {refused}")


def _refused(event: str, args: tuple) -> str | None:
    """What ``event`` tries that must not happen offline, else None."""
    if event == "socket.connect":
        address = args[1] if len(args) > 1 else None
        if isinstance(address, tuple):  # AF_INET/AF_INET6; AF_UNIX (a path) stays local
            return f"a network connection to {address[0]}:{address[1] if len(address) > 1 else '?'}"
    elif event == "socket.getaddrinfo":
        return f"a DNS lookup of {args[0]!r}"
    elif event in _PROCESS_EVENTS:
        command = _command_words(args)
        if any(word in _INSTALLERS or word in ("pip3", "pip3.11") for word in command):
            return f"a package installer ({' '.join(command)[:120]})"
    return None


def _command_words(args: tuple) -> list[str]:
    """The command line of a process event: its argv (the second argument) where there is one,
    else the program or shell command; "/usr/bin/pip3" counts as "pip3"."""
    command = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else args[0] if args else ""
    if isinstance(command, (str, bytes)):
        words = (command.decode(errors="replace") if isinstance(command, bytes) else command).split()
    else:
        words = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in command]
    return [w.rsplit("/", 1)[-1] if w.rsplit("/", 1)[-1].startswith("pip") else w for w in words]


@contextmanager
def offline() -> Iterator[list[str]]:
    """Within the block, refuse network and installers in this process; yields the list of
    what was refused (filled as it happens)."""
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True
    attempts: list[str] = []
    _active.append(attempts)
    try:
        yield attempts
    finally:
        _active.remove(attempts)
        if _active:
            _active[-1].extend(attempts)

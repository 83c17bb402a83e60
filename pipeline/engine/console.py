"""Messages and progress bars. Bars only on a terminal and never in quiet mode, so CI logs stay short."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm import tqdm


HEARTBEAT_SECONDS = 30.0  # without bars (CI, `> log`), a long attack says how far it is this often

_ACTIVE: list["Console"] = []  # the running pipeline's console, for library code that has no ctx


@contextmanager
def progress(total: int, desc: str):
    """A bar on the active console's terminal, or a line every HEARTBEAT_SECONDS without one; nothing
    when no pipeline runs (library use) or in quiet mode."""
    con = _ACTIVE[-1] if _ACTIVE else None
    if con is None or con.quiet:
        yield _NoBar()
    elif con.bars:
        with con.bar(total, desc) as b:
            yield b
    else:
        yield _Heartbeat(con, total, desc)


class Console:
    def activate(self) -> None:
        """Make this the console `progress()` reports to (the runner does, for the run's duration)."""
        _ACTIVE[:] = [self]

    def __init__(self, quiet: bool = False, log_file=None):
        self.quiet = quiet
        self.bars = not quiet and sys.stderr.isatty()
        self.log_file = log_file  # a Path; every message is appended there too

    def info(self, msg: str) -> None:
        if not self.quiet:
            self._print(msg)
        self._log(msg)

    def always(self, msg: str) -> None:
        self._print(msg)
        self._log(msg)

    def log_only(self, msg: str) -> None:
        self._log(msg)

    def _print(self, msg: str) -> None:
        if self.bars:
            tqdm.write(msg, file=sys.stderr)  # above the live bars instead of through them
        else:
            print(msg, file=sys.stderr, flush=True)

    def _log(self, msg: str) -> None:
        if self.log_file is not None:
            try:
                with open(self.log_file, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
            except OSError:
                pass

    @contextmanager
    def bar(self, total: int, desc: str, initial: int = 0, leave: bool = False):
        if not self.bars:
            yield _NoBar()
            return
        with tqdm(total=total, initial=initial, desc=desc, leave=leave, dynamic_ncols=True, file=sys.stderr) as b:
            yield b


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass


class _Heartbeat(_NoBar):
    def __init__(self, console: Console, total: int, desc: str):
        self.console, self.total, self.desc = console, total, desc
        self.done, self.t0 = 0, time.time()
        self.last = self.t0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.time()
        if now - self.last >= HEARTBEAT_SECONDS and self.done < self.total:
            self.last = now
            left = (now - self.t0) / self.done * (self.total - self.done)
            self.console.info(f"  {self.desc}: {self.done}/{self.total}, about {left / 60:.1f} min left")

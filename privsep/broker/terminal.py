"""The sandbox's own terminal: a pseudo-terminal the broker relays to the user's.

Handing the user's terminal to the child would let it change the terminal
for good: set its line discipline to N_NULL (``TIOCSETD``), its termios,
its window size, and every change would outlive the run. So when any of
privsep's stdin, stdout and stderr is a terminal, the child gets a pty of
its own instead: each of its fds 0-2 that would have been a terminal is the
pty's slave side (the others stay as they are: a redirected stdout is still
that file), and the broker holds the master and copies bytes both ways.

- The user's terminal is put in raw mode while the child runs when privsep
  reads it (stdin is a terminal): the child's pty then does the line
  editing, the echo and the signals (^C, ^Z, ^\\ reach the pty as bytes, and
  its line discipline signals the sandbox's foreground process group). The
  saved termios are put back at the end whatever happens (``finish``,
  ``close``, used as a context manager), before privsep stops (see
  ``suspend``), and raw mode comes back when it continues.
- The window size is copied to the pty at the start, on every SIGWINCH and
  after every stop.
- The relay never blocks and never spins: both directions go through a
  bounded buffer, and the broker's event loop waits on exactly what can make
  progress (``interest``). A full buffer stops the reading side, so a child
  printing faster than the terminal shows blocks in its own write, and the
  user typing faster than the child reads fills only the pty.
- The user's terminal is reopened (``/proc/self/fd/N``): a file description
  of our own, made non-blocking without touching the one the user's shell
  shares with privsep's stdio. When that is not allowed (a terminal owned by
  someone else, e.g. a broker run as another user), privsep uses the shared
  description and clears ``O_NONBLOCK`` again whenever it gives the
  terminal back.
- End of input (the user's terminal hung up) is passed on as the pty's EOF
  character when the pty is in canonical mode; in raw mode the child just
  gets no more input. When the sandbox has ended, what it wrote is drained
  from the master and shown, then the terminal is restored.

Only the process that owns the terminal should make one (privsep run does):
raw mode and the signal handlers are process-wide.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import selectors
import stat
import termios
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from privsep import _signals
from privsep.errors import ConfinementError

_BUFFER = 65536  # per direction: past it, the reading side waits
_CHUNK = 16384
_DRAIN_IDLE = 5.0  # seconds the final flush waits for a terminal that takes nothing
_DRAIN_MAX = 1 << 20  # bytes the final drain reads at most (a slave held outside could write on)

_Handler = Callable[[int, FrameType | None], Any] | int | None


def _raw(mode: list[Any]) -> list[Any]:
    """cfmakeraw: no line editing, echo, signals or output processing; 8-bit bytes."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = mode
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def _window_size(src: int, dst: int) -> None:
    """Copy the window size; the kernel signals SIGWINCH to ``dst``'s foreground group if it changed."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(dst, termios.TIOCSWINSZ, fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8))


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


class _Modes:
    """The user's terminal as privsep found it: raw mode while the sandbox has it, and back.

    ``shared``: descriptions privsep shares with others (fds it could not reopen), with
    the file status flags they had; they are non-blocking only while privsep holds them.
    """

    def __init__(self) -> None:
        self.input: int | None = None  # the user's terminal that privsep reads: raw mode goes there
        self.shared: dict[int, int] = {}
        self._saved: list[Any] | None = None  # the input terminal's termios before raw mode
        self._raw = False

    def take(self) -> None:
        """Raw mode on the input terminal (saving its termios once); shared fds non-blocking."""
        for fd, flags in self.shared.items():
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        if self.input is None or self._raw:
            return
        try:
            if self._saved is None:
                self._saved = termios.tcgetattr(self.input)
            termios.tcsetattr(self.input, termios.TCSANOW, _raw(self._saved))
        except termios.error:
            return  # hung up: nothing to relay from, nothing to restore
        self._raw = True

    def give_back(self) -> None:
        """The user's termios as they were; shared descriptions blocking again, as we found them.

        ``TCSAFLUSH``: input still queued was typed for the child (or is a terminal's answer
        to what the child printed), never for the user's shell.
        """
        if self._raw and self.input is not None and self._saved is not None:
            self._raw = False
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.input, termios.TCSAFLUSH, self._saved)
        for fd, flags in self.shared.items():
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)


class Terminal:
    """A pty for one sandbox, and the relay between it and the user's terminal.

    Make it with :meth:`for_stdio` (None when no stdio fd is a terminal),
    enter it (raw mode, signal handlers), give it to ``Broker.start``,
    which spawns the child on :attr:`child_stdio`, drives the relay from its
    loop (:meth:`interest`, :meth:`pump`) and calls :meth:`finish` when the
    sandbox has ended. Leaving the ``with`` block restores the terminal
    whatever happened.
    """

    def __init__(self, stdio: Sequence[int], ttys: Sequence[bool]) -> None:
        self._modes = _Modes()
        self._fds: list[int] = []  # every fd of ours, closed by close()
        self._input: int | None = None  # the user's terminal, read for the child's input
        self._output: int | None = None  # the user's terminal, written with the child's output
        self._handlers: dict[int, _Handler] = {}
        self._finished = False
        self._to_child = bytearray()
        self._to_user = bytearray()
        self._user_eof = False  # the user's terminal gave end of input: stop reading it
        self._user_gone = False  # the user's terminal takes no more output: drop it
        self._child_gone = False  # no process holds the pty's slave side any more
        self._in_use = False
        try:
            self.master, slave = os.openpty()
        except OSError as exc:
            raise ConfinementError(
                "terminal",
                f"cannot make a pseudo-terminal for the child ({exc.strerror}); "
                "run privsep with stdin, stdout and stderr redirected away from the terminal",
            ) from None
        self._fds.append(self.master)
        self._slave: int | None = slave
        try:
            os.set_inheritable(self.master, False)
            os.set_inheritable(slave, False)
            os.set_blocking(self.master, False)
            if ttys[0]:
                self._input = self._modes.input = self._own(stdio[0])
            out = stdio[next(i for i in (1, 2, 0) if ttys[i])]  # the child's output goes there
            if self._input is not None and _same_terminal(out, stdio[0]):
                self._output = self._input
            else:
                self._output = self._own(out)
            user = self._input if self._input is not None else self._output
            # The child's pty starts as the user's terminal is: same settings, same size.
            with contextlib.suppress(termios.error):
                termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(user))
            _window_size(user, self.master)
        except BaseException:
            self.close()
            raise
        self.child_stdio: tuple[int, int, int] = (
            slave if ttys[0] else stdio[0],
            slave if ttys[1] else stdio[1],
            slave if ttys[2] else stdio[2],
        )
        self.child_fd: int = ttys.index(True)
        """The child's fd (0-2) that is the pty: the sandbox makes it its controlling terminal."""

    @classmethod
    def for_stdio(cls, stdio: Sequence[int] = (0, 1, 2)) -> Terminal | None:
        """A pty for the child if any of ``stdio`` is a terminal; None otherwise (nothing changes)."""
        ttys = [_is_terminal(fd) for fd in stdio]
        return cls(stdio, ttys) if any(ttys) else None

    def _own(self, fd: int) -> int:
        """A non-blocking fd on the user's terminal ``fd`` that privsep alone uses."""
        try:
            own = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            # Not ours to open (owned by another user): share the description, and give
            # O_NONBLOCK back whenever the terminal goes back to the user (_Modes.give_back).
            own = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            self._fds.append(own)
            self._modes.shared[own] = fcntl.fcntl(own, fcntl.F_GETFL)
            return own
        if not os.isatty(own):  # pragma: no cover - /proc/self/fd/N of a terminal is that terminal
            os.close(own)
            raise ConfinementError("terminal", f"fd {fd} did not reopen as a terminal")
        self._fds.append(own)
        return own

    # -- the user's terminal -------------------------------------------------

    def __enter__(self) -> Terminal:
        try:
            self._modes.take()
            if threading.current_thread() is threading.main_thread():
                self._handle(_signals.SIGWINCH, self._on_winch)
                self._handle(_signals.SIGCONT, self._on_winch)  # resized while stopped: look again
                if self._input is not None:
                    self._handle(_signals.SIGTSTP, self._on_tstp)
        except BaseException:
            # Raw already, and no ``with`` block will call __exit__: the terminal goes back here.
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _handle(self, sig: int, handler: Callable[[int, FrameType | None], None]) -> None:
        self._handlers[sig] = _signals.signal(sig, handler)

    def _on_winch(self, _signum: int, _frame: FrameType | None) -> None:
        self._copy_window_size()

    def _on_tstp(self, _signum: int, _frame: FrameType | None) -> None:
        self.suspend()  # someone stopped privsep: give the terminal back first

    def _copy_window_size(self) -> None:
        user = self._input if self._input is not None else self._output
        if user is not None and not self._finished:
            _window_size(user, self.master)

    def suspend(self) -> None:
        """Stop privsep as a shell's job stops (the user's shell gets its terminal back); on
        ``fg``, carry on where it was: raw mode again, the window size looked up again.

        The broker calls it when the sandbox's command stopped (^Z on its pty); the
        SIGTSTP handler when privsep itself is told to stop. In an orphaned process group
        the kernel discards the stop, and this returns at once.
        """
        self._modes.give_back()
        if threading.current_thread() is threading.main_thread():
            ours = _signals.signal(_signals.SIGTSTP, _signals.SIG_DFL)
            try:
                os.kill(os.getpid(), _signals.SIGTSTP)  # stops here until SIGCONT
            finally:
                _signals.signal(_signals.SIGTSTP, ours)
        if not self._finished:
            self._modes.take()
            self._copy_window_size()

    # -- the relay, driven by the broker's loop --------------------------------

    @property
    def in_use(self) -> bool:
        """A sandbox was spawned on it: a Terminal serves one sandbox."""
        return self._in_use

    def spawned(self) -> None:
        """The child holds the pty's slave side now: the broker's copy goes (so that the
        master reads EIO once every process of the sandbox has closed it)."""
        self._in_use = True
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

    def interest(self) -> dict[int, int]:
        """What the loop should wait for now, per fd (selectors events); empty when done."""
        want: dict[int, int] = {}

        def add(fd: int, events: int) -> None:
            want[fd] = want.get(fd, 0) | events

        if not self._child_gone:
            if len(self._to_user) < _BUFFER:
                add(self.master, selectors.EVENT_READ)
            if self._to_child:
                add(self.master, selectors.EVENT_WRITE)
            if self._input is not None and not self._user_eof and len(self._to_child) < _BUFFER:
                add(self._input, selectors.EVENT_READ)
        if self._to_user and self._output is not None and not self._user_gone:
            add(self._output, selectors.EVENT_WRITE)
        return want

    def pump(self) -> None:
        """Move what can move now, both ways, without blocking."""
        self._read_user()
        self._write_child()
        self._read_child()
        self._write_user()

    def _read_user(self) -> None:
        if self._input is None or self._user_eof or self._child_gone or len(self._to_child) >= _BUFFER:
            return
        try:
            data = os.read(self._input, min(_CHUNK, _BUFFER - len(self._to_child)))
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: hung up, or read from a background process group
        if data:
            self._to_child += data
            return
        # End of input (the terminal hung up): in canonical mode, the pty's EOF character
        # ends the child's read as the user's ^D would have; in raw mode there is no EOF.
        self._user_eof = True
        with contextlib.suppress(termios.error):
            mode = termios.tcgetattr(self.master)  # on a master: the slave's termios
            if mode[3] & termios.ICANON:
                eof = mode[6][termios.VEOF]
                self._to_child += eof if isinstance(eof, bytes) else bytes([eof])

    def _write_child(self) -> None:
        if not self._to_child or self._child_gone:
            return
        try:
            written = os.write(self.master, self._to_child)
        except BlockingIOError:
            return
        except OSError:
            self._lost_child()
            return
        del self._to_child[:written]

    def _read_child(self) -> int:
        """One read of the master: how many bytes came (0: nothing more there now)."""
        if self._child_gone or len(self._to_user) >= _BUFFER:
            return 0
        try:
            data = os.read(self.master, min(_CHUNK, _BUFFER - len(self._to_user)))
        except BlockingIOError:
            return 0
        except OSError:  # EIO: every process of the sandbox closed the slave side
            self._lost_child()
            return 0
        if not data:
            self._lost_child()
            return 0
        if not self._user_gone and self._output is not None:
            self._to_user += data
        return len(data)

    def _write_user(self) -> bool:
        """One write to the user's terminal; False when it takes nothing now."""
        if not self._to_user:
            return False
        if self._user_gone or self._output is None:
            self._to_user.clear()
            return False
        try:
            written = os.write(self._output, self._to_user)
        except BlockingIOError:
            return False
        except OSError:  # hung up: what the child prints has nowhere to go
            self._user_gone = True
            self._to_user.clear()
            return False
        del self._to_user[:written]
        return written > 0

    def _lost_child(self) -> None:
        """No process holds the slave side: nothing to read from or write to it again."""
        self._child_gone = True
        self._to_child.clear()

    # -- the end -------------------------------------------------------------

    def finish(self) -> None:
        """The sandbox has ended: show what it wrote last, then give the terminal back.

        Every process of the sandbox is gone, so the master reads what is left, then EIO.
        If a process outside still holds the slave side (a child can pass an fd on), it
        reads "nothing now" instead, and the drain stops there (or after ``_DRAIN_MAX``
        bytes). A terminal that takes nothing for ``_DRAIN_IDLE`` seconds gets nothing more.
        """
        if self._finished:
            return
        self._finished = True
        idle_since = time.monotonic()
        budget = _DRAIN_MAX
        while True:
            read = self._read_child() if budget > 0 else 0
            budget -= read
            moved = self._write_user() or read > 0
            if not self._to_user and not moved:
                break
            now = time.monotonic()
            if moved:
                idle_since = now
            elif now - idle_since > _DRAIN_IDLE:
                break
            elif self._to_user and self._output is not None:
                poller = select.poll()
                poller.register(self._output, select.POLLOUT)
                poller.poll(100)
        self._to_user.clear()
        self._to_child.clear()
        self._restore()

    def _restore(self) -> None:
        self._modes.give_back()
        for sig, handler in self._handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                _signals.signal(sig, handler)
        self._handlers.clear()

    def close(self) -> None:
        """Give the terminal back (if ``finish`` has not) and close every fd of ours."""
        self._finished = True
        self._restore()
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def _same_terminal(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return stat.S_ISCHR(sa.st_mode) and sa.st_rdev == sb.st_rdev


__all__ = ["Terminal"]

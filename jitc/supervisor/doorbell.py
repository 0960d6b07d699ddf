"""A pipe the supervisor's selector watches, rung by a thread that has news for the loop
(work.py's worker when a job is done, cluster/channel.py's reader when a message came)."""
from __future__ import annotations

import os
import threading


class Doorbell:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)     # a loop that never clears cannot block a ringer
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._r

    def ring(self) -> None:
        """From any thread; a no-op once closed, or while already readable and full."""
        with self._lock:
            if self._w is None:
                return
            try:
                os.write(self._w, b"x")
            except BlockingIOError:
                pass

    def clear(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._w is None:
                return
            os.close(self._w)
            self._w = None
        os.close(self._r)

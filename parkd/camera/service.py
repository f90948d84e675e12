"""The camera daemon's service (``twistd parkd camera``; its tree is built in ``parkd/tap.py``)."""

from __future__ import annotations

import os
import random
import string

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from parkd.config import ConfigError
from parkd.startup import fail_on_config_error
from parkd.trust import Identity, Trust, TrustError

PAYLOAD_ALPHABET = string.ascii_letters + string.digits
PAYLOAD_LENGTH = 64


class CameraService(service.Service):
    """Captures a frame every interval into the outbox and hands it to the client."""

    log = Logger()

    def __init__(self, settings, reactor, rng: random.Random | None = None):
        self.settings = settings
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.outbox = None
        self.client = None
        self.loop = None
        self._drop_logged = False

    @fail_on_config_error
    def startService(self) -> None:
        from parkd.camera.client import CameraClient
        from parkd.camera.outbox import Outbox

        s = self.settings
        path = os.path.join(s.state_dir, "outbox.db")
        trust = self._build_trust()
        try:
            self.outbox = Outbox(path, s.config.camera.outbox_limit)
        except Exception as e:
            raise ConfigError(f"--state-dir: cannot open {path!r}: {e}") from None
        self.client = CameraClient(
            s.camera_id,
            s.lot,
            self.outbox,
            s.cluster,
            self.reactor,
            ack_timeout=s.config.camera.ack_timeout,
            max_message_bytes=s.config.cluster.max_message_bytes,
            rng=self.rng,
            trust=trust,
            standby_spread=s.config.camera.standby_spread,
        )
        pending = self.outbox.pending()
        self.log.info(
            "camera {camera_id} started: lot {lot}, every {interval}s, incarnation {incarnation}, "
            "next seq {next_seq}, {pending} unacked",
            parkd_event="camera_started",
            camera_id=s.camera_id, lot=s.lot, interval=s.interval, incarnation=self.outbox.incarnation,
            next_seq=self.outbox.counter("next_seq"), pending=len(pending),
        )  # fmt: skip
        service.Service.startService(self)
        self.client.start()
        self.loop = LoopingCall(self.capture)
        self.loop.clock = self.reactor
        self.loop.start(s.interval, now=True)

    def reload_tls(self) -> None:
        """SIGHUP: the next connection uses the certificate files as they are now."""
        if self.client is not None and self.client.trust is not None:
            self.client.trust.reload()

    def _build_trust(self):
        """The camera's TLS (its own certificate; nodes must be ``node-*`` of its CA), or None."""
        s = self.settings
        if s.tls is None:
            self.log.warn("camera {camera_id} talks plaintext to the nodes (insecure = true)", camera_id=s.camera_id)
            return None
        try:
            return Trust(s.tls, expect=Identity("camera", s.camera_id), clock=self.reactor)
        except TrustError as e:
            raise ConfigError(f"camera TLS: {e}") from None

    def capture(self) -> None:
        payload = "".join(self.rng.choices(PAYLOAD_ALPHABET, k=PAYLOAD_LENGTH)).encode()
        frame, dropped = self.outbox.add(payload, self.reactor.seconds())
        self.log.debug("camera captured frame {seq}", seq=frame.seq)
        if dropped and not self._drop_logged:
            self._drop_logged = True
            self.log.warn(
                "camera {camera_id}: outbox full ({limit} frames); dropping the oldest unacked frames",
                camera_id=self.settings.camera_id, limit=self.outbox.limit,
            )
        self.client.frame_added()

    def stopService(self):
        service.Service.stopService(self)
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.client is not None:
            self.client.stop()
            if self.client.trust is not None:
                self.client.trust.refusals.stop()
        if self.outbox is not None:
            self.log.info(
                "camera {camera_id} stopped: {acked} acked this run, {dropped} dropped in all, outbox closed",
                camera_id=self.settings.camera_id, acked=self.client.acked, dropped=self.outbox.counter("dropped"),
            )  # fmt: skip
            self.outbox.close()

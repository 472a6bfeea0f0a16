#!/usr/bin/env python3
"""An SMTP server for the integration tests: aiosmtpd on 127.0.0.1 that keeps what it accepts.

    python3 smtp_sink.py --port P --dir D [--auth USER:PASSWORD]
        [--refuse 'ADDR=550 5.1.1 No such user' ...]
        [--tempfail 'ADDR=451 4.3.0 Try later:N' ...]

Each accepted message becomes D/NNNNNN.json (numbered by arrival, written to a temporary name
first and renamed, so a reader never sees half a file) holding `mail_from`, `rcpt_tos` and
`data_base64`: the message exactly as received after DATA (dot-unstuffed, CRLF line ends),
base64-encoded so that 8-bit bytes survive JSON. Each refused RCPT becomes D/refused/NNNNNN.json
with `rcpt` and `reply`.

--auth makes AUTH (PLAIN or LOGIN, without TLS) required: MAIL FROM before it gets 530.
--refuse answers RCPT TO of ADDR with the given reply, always; --tempfail answers it with the
given reply the first N times, then accepts it. Addresses compare case-insensitively.

Prints READY on stdout once it accepts connections, then runs until SIGTERM or SIGINT.
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def write_atomically(path, payload):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def split_reply(arg, option):
    addr, sep, reply = arg.partition("=")
    if not sep or not addr or len(reply) < 3 or not reply[:3].isdigit():
        sys.exit(f"{option} wants ADDR=CODE TEXT, got {arg!r}")
    return addr.strip().lower(), reply


class Sink:
    def __init__(self, directory, refuse, tempfail):
        self.directory = directory
        self.refused_dir = os.path.join(directory, "refused")
        os.makedirs(self.refused_dir, exist_ok=True)
        self.refuse = refuse
        # addr -> [reply, how many more times to refuse]
        self.tempfail = tempfail
        self.accepted = 0
        self.refusals = 0

    def record_refusal(self, address, reply):
        self.refusals += 1
        path = os.path.join(self.refused_dir, f"{self.refusals:06d}.json")
        write_atomically(path, {"rcpt": address, "reply": reply})
        return reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        key = address.strip().lower()
        if key in self.refuse:
            return self.record_refusal(address, self.refuse[key])
        pending = self.tempfail.get(key)
        if pending is not None and pending[1] > 0:
            pending[1] -= 1
            return self.record_refusal(address, pending[0])
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.accepted += 1
        raw = envelope.original_content or b""
        path = os.path.join(self.directory, f"{self.accepted:06d}.json")
        write_atomically(
            path,
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "data_base64": base64.b64encode(raw).decode("ascii"),
            },
        )
        return "250 2.0.0 OK"


def authenticator_for(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        if (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        ):
            return AuthResult(success=True)
        # handled=False lets aiosmtpd answer 535; anything else leaves the client waiting.
        return AuthResult(success=False, handled=False)

    return authenticate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--auth", metavar="USER:PASSWORD")
    parser.add_argument("--refuse", action="append", default=[], metavar="ADDR=REPLY")
    parser.add_argument("--tempfail", action="append", default=[], metavar="ADDR=REPLY:N")
    args = parser.parse_args()

    refuse = dict(split_reply(a, "--refuse") for a in args.refuse)
    tempfail = {}
    for arg in args.tempfail:
        head, sep, times = arg.rpartition(":")
        if not sep or not times.isdigit():
            sys.exit(f"--tempfail wants ADDR=CODE TEXT:N, got {arg!r}")
        addr, reply = split_reply(head, "--tempfail")
        tempfail[addr] = [reply, int(times)]

    kwargs = {}
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user:
            sys.exit(f"--auth wants USER:PASSWORD, got {args.auth!r}")
        # Plain-text AUTH is the point here: loopback only, test credentials.
        warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
        kwargs.update(
            authenticator=authenticator_for(user, password),
            auth_require_tls=False,
            auth_required=True,
        )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    controller = Controller(
        Sink(args.dir, refuse, tempfail),
        hostname="127.0.0.1",
        port=args.port,
        ready_timeout=30.0,
        **kwargs,
    )
    controller.start()
    print("READY", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

"""``parkctl pki``: make and revoke the cluster's certificates (CONTRACT §9).

    parkctl pki init DIR [--days N]
    parkctl pki issue DIR node ID [--host H ...] [--days N]
    parkctl pki issue DIR camera ID[-ID] [--days N]
    parkctl pki issue DIR operator NAME [--days N]
    parkctl pki revoke DIR IDENTITY|CERT.pem

parkctl's parser gets these commands from :func:`add_pki_commands` and runs
them with :func:`run_pki`, which returns parkctl's exit status (0 done, 1
refused, 2 usage) after at most one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import time

from parkd.trust import pki
from parkd.trust.identity import IdentityError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def add_pki_commands(subparsers) -> None:
    """Add ``pki`` and its sub-commands to parkctl's sub-parsers."""
    text = "make the cluster's CA and certificates, revoke certificates"
    top = subparsers.add_parser(
        "pki", help=text, description=text + ". Keys are EC P-256, written mode 0600; no file is overwritten.",
    )  # fmt: skip
    sub = top.add_subparsers(dest="pki_command", metavar="PKI-COMMAND")
    sub.required = True

    init = sub.add_parser("init", help="make DIR/ca.pem, DIR/ca.key and an empty DIR/crl.pem",
                          description="Make a new CA in DIR (created if missing).")  # fmt: skip
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--days", type=_days, default=pki.DEFAULT_CA_DAYS,
                      help=f"validity of the CA (default {pki.DEFAULT_CA_DAYS})")  # fmt: skip

    issue = sub.add_parser(
        "issue", help="make DIR/<identity>.pem and .key for a node, cameras or an operator",
        description="Make a key and a certificate signed by DIR's CA: `node ID` (SANs: the --host values, "
        "default 127.0.0.1 and localhost), `camera ID` or `camera FIRST-LAST` (one pair per camera), "
        "`operator NAME`.",
    )  # fmt: skip
    issue.add_argument("dir", metavar="DIR")
    issue.add_argument("kind", choices=("node", "camera", "operator"), metavar="KIND",
                       help="node, camera or operator")  # fmt: skip
    issue.add_argument("what", metavar="ID|FIRST-LAST|NAME")
    issue.add_argument("--host", action="append", type=_host, metavar="H",
                       help="a host name or address the node is reached at (repeat; nodes only)")  # fmt: skip
    issue.add_argument("--days", type=_days, default=pki.DEFAULT_DAYS,
                       help=f"validity (default {pki.DEFAULT_DAYS})")  # fmt: skip

    revoke = sub.add_parser(
        "revoke", help="add a certificate to DIR/crl.pem",
        description="Add the certificate of IDENTITY (e.g. camera-7; or a certificate file) to DIR/crl.pem. "
        "Nodes read the CRL again on SIGHUP.",
    )  # fmt: skip
    revoke.add_argument("dir", metavar="DIR")
    revoke.add_argument("identity", metavar="IDENTITY")


def _days(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid number of days {text!r} (a whole number, at least 1)")
    return int(text)


def _host(text: str) -> str:
    try:
        pki.host_san(text)
    except IdentityError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def run_pki(args, out, err) -> int:
    """Run one ``parkctl pki`` command; parkctl's exit status."""
    try:
        if args.pki_command == "init":
            paths = pki.init(args.dir, args.days)
            print(f"wrote {', '.join(paths)}", file=out)
        elif args.pki_command == "issue":
            _issue(args, out, err)
        else:
            if pki.revoke(args.dir, args.identity):
                print(f"revoked {args.identity} in {os.path.join(args.dir, pki.CRL)}; send SIGHUP to the nodes",
                      file=out)  # fmt: skip
            else:
                print(f"{args.identity} was already revoked", file=out)
    except IdentityError as e:
        print(f"parkctl: {e}", file=err)
        return EXIT_USAGE
    except pki.PKIError as e:
        print(f"parkctl: {e}", file=err)
        return EXIT_REFUSED
    return EXIT_OK


def _issue(args, out, err) -> None:
    if args.host and args.kind != "node":
        raise IdentityError("--host is for node certificates only")
    who = pki.identities(args.kind, args.what)
    progress = _Progress(err, args.kind) if len(who) > 1 and _isatty(err) else None
    started = time.monotonic()
    issued = pki.issue(args.dir, who, hosts=args.host, days=args.days, progress=progress)
    if progress is not None:
        progress.done()
    if len(issued) == 1:
        print(f"wrote {issued[0].cert}, {issued[0].key}", file=out)
    else:
        seconds = time.monotonic() - started
        print(f"issued {len(issued)} {args.kind} certificates ({issued[0].identity} .. {issued[-1].identity}) "
              f"in {args.dir} in {seconds:.1f} s", file=out)  # fmt: skip


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """"issued 2000/10000 camera certificates" on one terminal line, rewritten as it goes."""

    def __init__(self, err, kind: str):
        self._err = err
        self._kind = kind

    def __call__(self, done: int, total: int) -> None:
        print(f"\rissued {done}/{total} {self._kind} certificates", end="", file=self._err, flush=True)

    def done(self) -> None:
        print(file=self._err)

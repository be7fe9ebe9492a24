"""`broker` commands for the archive CLI: make the broker's key pair, reveal a pseudonym.

The main CLI calls `register(subparsers)`; each subcommand's handler takes the
argparse namespace and returns an exit code. The revealed identifiers go to standard
output for the broker only; nothing is logged except the audit line the vault writes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


PRIVATE_NAME = "broker_private.pem"
PUBLIC_NAME = "broker_public.pem"


def vault_path(data_dir: Path) -> Path:
    """Where the archive keeps its link vault inside its data directory."""
    return Path(data_dir) / "broker" / "links.sqlite"


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new X25519 key pair; the private key file is created 0600 and never overwritten."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    if private_path.exists() or public_path.exists():
        print(f"refusing to overwrite existing keys in {out}", file=sys.stderr)
        return 1
    from deid.vault import generate_keypair  # cryptography loads only for broker commands

    private_pem, public_pem = generate_keypair()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    print(f"private key: {private_path} (keep it with the broker, off the archive host)")
    print(f"public key:  {public_path} (set broker_public_key in the [deid] policy)")
    return 0


def cmd_reveal(args: argparse.Namespace) -> int:
    """Print the originals behind a pseudonym as JSON (the vault audits the reveal)."""
    from cryptography.exceptions import InvalidTag

    from deid.vault import LinkVault, load_private_key

    data_dir, key_path = Path(args.data_dir), Path(args.private_key)
    if not data_dir.is_dir():
        return _refuse(f"no archive at {data_dir}: the directory does not exist")
    if not key_path.is_file():
        hint = f" (keygen writes {PRIVATE_NAME})" if key_path.name != PRIVATE_NAME else ""
        return _refuse(f"private key not found: {key_path}{hint}")
    try:
        private_key = load_private_key(key_path)
    except (ValueError, TypeError):  # not PEM, not X25519, or protected by a password
        return _refuse(f"{key_path} is not an unencrypted X25519 private key in PEM (made by broker keygen)")
    vault = LinkVault(vault_path(data_dir), audit_log=args.audit_log)
    try:
        originals = vault.reveal(args.pseudonym, private_key, who=args.who)
    except KeyError:
        _audit_reveal(args, found=False)
        return _refuse("no link recorded for this pseudonym")
    except InvalidTag:
        return _refuse(f"the link cannot be opened with {key_path}: not the key its policy's public key belongs to")
    _audit_reveal(args, found=True)
    json.dump(originals, sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _audit_reveal(args: argparse.Namespace, found: bool) -> None:
    """The reveal in the archive's audit trail too (a Security Alert: use of a restricted function)."""
    from archive.audit import AuditTrail, LocalUser
    from archive.config import AuditSettings

    trail = AuditTrail(AuditSettings(), Path(args.data_dir).resolve())
    who = LocalUser(args.who) if args.who else LocalUser.current()
    trail.record("SecurityAlert", principal=who, outcome=0 if found else 4,
                 detail={"type": "Use of Restricted Function",  # an unknown argument may be typed PHI: not kept
                         "description": f"broker reveal of pseudonym {args.pseudonym[:64]}: link opened" if found
                         else "broker reveal: no link recorded for the pseudonym given"})
    trail.close()


def _refuse(message: str) -> int:
    print(f"slidearchive broker reveal: {message}", file=sys.stderr)
    return 2


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `broker keygen` and `broker reveal` to the main CLI's subparsers."""
    broker = subparsers.add_parser("broker", help="honest broker: keys and re-identification")
    sub = broker.add_subparsers(dest="broker_command", required=True)

    keygen = sub.add_parser("keygen", help="write a new broker key pair (private key 0600)")
    keygen.add_argument("--out", required=True, help="directory for the PEM files")
    keygen.set_defaults(func=cmd_keygen)

    reveal = sub.add_parser("reveal", help="show the original identifiers behind a pseudonym")
    reveal.add_argument("pseudonym")
    reveal.add_argument("--private-key", required=True, help="broker private key PEM")
    reveal.add_argument("--data-dir", required=True, help="the archive's data directory")
    reveal.add_argument("--audit-log", default=None,
                        help="audit log file (default: <data-dir>/broker/audit.log)")
    reveal.add_argument("--who", default=None, help="name to record in the audit log (default: login name)")
    reveal.set_defaults(func=cmd_reveal)
